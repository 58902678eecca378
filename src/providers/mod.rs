//! Carbon-intensity providers: one trait, several implementations, and a chain
//! that tries them in order.

pub mod chain;
pub mod cluster;
pub mod electricity_maps;
pub mod http;
pub mod noaa;
pub mod static_table;
pub mod uk;
pub mod watttime;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::carbon::{GridZone, Reading};

pub use chain::{Attempt, Chain, ChainError, ChainSettings, Fetch};
pub use http::{HttpClient, Secret, SecretError};

/// Why one provider could not give a reading. Messages never contain API keys.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("does not cover zone {0}")]
    UnsupportedZone(GridZone),
    #[error("not configured: {0}")]
    NotConfigured(&'static str),
    #[error("credentials rejected (HTTP {0})")]
    Unauthorized(u16),
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("implausible value: {0}")]
    Invalid(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("circuit open after repeated failures")]
    CircuitOpen,
}

impl ProviderError {
    /// Bounded label for the `outcome` of provider request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::UnsupportedZone(_) => "unsupported_zone",
            Self::NotConfigured(_) => "not_configured",
            Self::Unauthorized(_) => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::Status(code) if *code >= 500 => "server_error",
            Self::Status(_) => "client_error",
            Self::Timeout(_) => "timeout",
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::Invalid(_) => "invalid",
            Self::Transport(_) => "transport",
            Self::CircuitOpen => "circuit_open",
        }
    }

    /// Errors that say nothing about the provider's health (so they do not
    /// trip the circuit breaker and are not counted as errors).
    pub fn is_skip(&self) -> bool {
        matches!(self, Self::UnsupportedZone(_) | Self::NotConfigured(_))
    }
}

/// A source of carbon intensity for some grid zones.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Stable name used in metrics, CarbonScore `source` and logs.
    fn name(&self) -> &'static str;

    /// Current intensity for `zone`, with forecast points when the API has them.
    /// Implementations validate values with [`crate::carbon::check_intensity`].
    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError>;
}

/// The providers an operator can list in the chain order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    ElectricityMaps,
    WattTime,
    UkCarbonIntensity,
    Noaa,
    Static,
}

impl ProviderKind {
    /// Every kind, in the default order: measured average signals first, the
    /// marginal signal next, then estimates, the static table last.
    pub const ALL: [ProviderKind; 5] = [
        Self::ElectricityMaps,
        Self::UkCarbonIntensity,
        Self::WattTime,
        Self::Noaa,
        Self::Static,
    ];

    /// Name in the config's provider order. Matches [`Provider::name`]
    /// except for NOAA, whose readings say `noaa-estimate` so nobody mistakes
    /// them for measurements.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ElectricityMaps => "electricity-maps",
            Self::WattTime => "watttime",
            Self::UkCarbonIntensity => "uk-carbon-intensity",
            Self::Noaa => "noaa",
            Self::Static => "static",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let wanted = raw.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wanted)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown provider {raw:?}; known: {}", known.join(", "))
            })
    }
}

/// Everything the provider chain needs, filled from flags and Secrets by the
/// config module. Debug output is safe to log: secrets print as `[redacted]`.
#[derive(Debug)]
pub struct ProvidersConfig {
    pub order: Vec<ProviderKind>,
    pub electricity_maps_url: String,
    pub electricity_maps_token: Option<Secret>,
    pub watttime_url: String,
    pub watttime_username: Option<String>,
    pub watttime_password: Option<Secret>,
    /// Overrides and additions to the built-in zone → WattTime region table.
    pub watttime_regions: BTreeMap<GridZone, String>,
    pub uk_url: String,
    /// Zones answered by a UK Carbon Intensity region (1–17) instead of the
    /// national figure, which `GB` gets without configuration.
    pub uk_regions: BTreeMap<GridZone, u32>,
    pub noaa_url: String,
    /// Bound on each HTTP request; one provider attempt may make a few.
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub cache_ttl: Duration,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            order: ProviderKind::ALL.to_vec(),
            electricity_maps_url: electricity_maps::DEFAULT_URL.to_string(),
            electricity_maps_token: None,
            watttime_url: watttime::DEFAULT_URL.to_string(),
            watttime_username: None,
            watttime_password: None,
            watttime_regions: BTreeMap::new(),
            uk_url: uk::DEFAULT_URL.to_string(),
            uk_regions: BTreeMap::new(),
            noaa_url: noaa::DEFAULT_URL.to_string(),
            timeout: Duration::from_secs(10),
            // NOAA grid data (a week of ~30 hourly series) is the largest
            // legitimate body, a few hundred KiB.
            max_response_bytes: 4 * 1024 * 1024,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(300),
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// Sequential HTTP requests one provider attempt may need (WattTime: login,
/// data, re-login after a 401, data again), so the attempt budget covers them.
const REQUESTS_PER_ATTEMPT: u32 = 4;

/// Builds the chain in the configured order, after `shared` (another
/// cluster's CarbonScores, [`cluster::SharedScores`]) when there is one.
/// Providers missing credentials stay in the chain and answer
/// `NotConfigured`, which the chain skips, so the default order can list
/// every provider.
pub fn build_chain(cfg: &ProvidersConfig, shared: Option<Arc<dyn Provider>>) -> Chain {
    let http = HttpClient::new(cfg.timeout, cfg.max_response_bytes);
    let mut seen = Vec::new();
    let mut providers: Vec<Arc<dyn Provider>> = shared.into_iter().collect();
    for kind in &cfg.order {
        if seen.contains(kind) {
            continue;
        }
        seen.push(*kind);
        providers.push(match kind {
            ProviderKind::ElectricityMaps => Arc::new(electricity_maps::ElectricityMaps::new(
                &cfg.electricity_maps_url,
                cfg.electricity_maps_token.clone(),
                http.clone(),
            )),
            ProviderKind::WattTime => Arc::new(watttime::WattTime::new(
                &cfg.watttime_url,
                cfg.watttime_username.clone(),
                cfg.watttime_password.clone(),
                cfg.watttime_regions.clone(),
                http.clone(),
            )),
            ProviderKind::UkCarbonIntensity => Arc::new(uk::UkCarbonIntensity::new(
                &cfg.uk_url,
                cfg.uk_regions.clone(),
                http.clone(),
            )),
            ProviderKind::Noaa => Arc::new(noaa::Noaa::new(&cfg.noaa_url, http.clone())),
            ProviderKind::Static => Arc::new(static_table::StaticTable::new()),
        });
    }
    Chain::new(
        providers,
        ChainSettings {
            attempt_timeout: cfg.timeout.saturating_mul(REQUESTS_PER_ATTEMPT),
            breaker_failures: cfg.breaker_failures,
            breaker_cooldown: cfg.breaker_cooldown,
            cache_ttl: cfg.cache_ttl,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_kinds_round_trip_through_their_names() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.to_string().parse::<ProviderKind>(), Ok(kind));
        }
        assert_eq!(
            " WattTime ".parse::<ProviderKind>(),
            Ok(ProviderKind::WattTime)
        );
        assert_eq!(
            "uk-carbon-intensity".parse(),
            Ok(ProviderKind::UkCarbonIntensity)
        );
        let err = "emaps".parse::<ProviderKind>().unwrap_err();
        assert!(err.contains("electricity-maps"), "{err}");
    }

    #[test]
    fn the_signal_type_follows_the_provider_that_answered() {
        use crate::carbon::Signal;
        for kind in ProviderKind::ALL {
            let expected = if kind == ProviderKind::WattTime {
                Signal::Marginal
            } else {
                Signal::Average
            };
            assert_eq!(Signal::of_source(kind.as_str()), expected, "{kind}");
        }
        assert_eq!(Signal::of_source(noaa::NAME), Signal::Average);
    }

    #[test]
    fn default_chain_lists_every_provider_once() {
        let chain = build_chain(
            &ProvidersConfig {
                order: vec![
                    ProviderKind::Static,
                    ProviderKind::Static,
                    ProviderKind::Noaa,
                ],
                ..ProvidersConfig::default()
            },
            None,
        );
        assert_eq!(chain.provider_names(), vec!["static", "noaa-estimate"]);
        let all = build_chain(&ProvidersConfig::default(), None);
        assert_eq!(
            all.provider_names(),
            vec![
                "electricity-maps",
                "uk-carbon-intensity",
                "watttime",
                "noaa-estimate",
                "static"
            ]
        );
    }

    #[test]
    fn config_debug_hides_secrets() {
        let cfg = ProvidersConfig {
            electricity_maps_token: Some(Secret::new("em-key-0123".into())),
            watttime_password: Some(Secret::new("wt-pass-4567".into())),
            ..ProvidersConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("em-key-0123") && !shown.contains("wt-pass-4567"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"));
    }
}
