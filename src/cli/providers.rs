//! The carbon-intensity providers' flags: which to try, their credentials
//! (as files, never values), endpoints and the chain's limits.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::duration::parse_period as period;
use crate::quantity::parse_bytes;

#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Providers to try, in order (electricity-maps, watttime, uk-carbon-intensity, noaa, static).
    /// A provider without its credentials is skipped.
    #[arg(
        long,
        env = "CARBON_KUBE_PROVIDERS",
        value_delimiter = ',',
        default_value = "electricity-maps,watttime,uk-carbon-intensity,noaa,static"
    )]
    pub providers: Vec<String>,

    /// Electricity Maps API base URL.
    #[arg(
        long,
        env = "ELECTRICITY_MAPS_URL",
        default_value = "https://api.electricitymap.org/v3"
    )]
    pub electricity_maps_url: String,

    /// File holding the Electricity Maps API token (a mounted Secret).
    #[arg(long, env = "ELECTRICITY_MAPS_TOKEN_FILE")]
    pub electricity_maps_token_file: Option<PathBuf>,

    /// Electricity Maps API token (prefer the file).
    #[arg(
        long,
        env = "ELECTRICITY_MAPS_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub electricity_maps_token: Option<String>,

    /// WattTime API base URL.
    #[arg(long, env = "WATTTIME_URL", default_value = "https://api.watttime.org")]
    pub watttime_url: String,

    /// WattTime user name.
    #[arg(long, env = "WATTTIME_USERNAME")]
    pub watttime_username: Option<String>,

    /// File holding the WattTime password (a mounted Secret).
    #[arg(long, env = "WATTTIME_PASSWORD_FILE")]
    pub watttime_password_file: Option<PathBuf>,

    /// WattTime password (prefer the file).
    #[arg(long, env = "WATTTIME_PASSWORD", hide_env_values = true, hide = true)]
    pub watttime_password: Option<String>,

    /// Extra WattTime regions per zone, e.g. `US-CAL-CISO=CAISO_NORTH`.
    #[arg(long, env = "WATTTIME_REGIONS", value_delimiter = ',')]
    pub watttime_regions: Vec<String>,

    /// UK Carbon Intensity API base URL.
    #[arg(
        long,
        env = "UK_CARBON_INTENSITY_URL",
        default_value = "https://api.carbonintensity.org.uk"
    )]
    pub uk_carbon_intensity_url: String,

    /// UK regional ids per zone, e.g. `GB-SCOTLAND=1`; zone GB is national.
    #[arg(long, env = "UK_CARBON_INTENSITY_REGIONS", value_delimiter = ',')]
    pub uk_regions: Vec<String>,

    /// NOAA weather API base URL (US zones, estimate only).
    #[arg(long, env = "NOAA_URL", default_value = "https://api.weather.gov")]
    pub noaa_url: String,

    /// Timeout of one provider request.
    #[arg(long, env = "CARBON_KUBE_PROVIDER_TIMEOUT", value_parser = period, default_value = "10s")]
    pub provider_timeout: Duration,

    /// Largest provider response accepted (bytes, or a size like 512Ki).
    #[arg(long, env = "CARBON_KUBE_MAX_RESPONSE_BYTES", value_parser = parse_bytes, default_value = "1048576")]
    pub max_response_bytes: usize,

    /// Consecutive failures that open a provider's circuit breaker.
    #[arg(long, env = "CARBON_KUBE_BREAKER_FAILURES", default_value_t = 3)]
    pub breaker_failures: u32,

    /// How long an open circuit breaker skips its provider.
    #[arg(long, env = "CARBON_KUBE_BREAKER_COOLDOWN", value_parser = period, default_value = "5m")]
    pub breaker_cooldown: Duration,
}
