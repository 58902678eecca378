//! WattTime v3. Its signal is the *marginal* operating emissions rate (MOER):
//! the emissions of the plant that answers one more MWh of load, not the
//! grid's average mix. It is the right signal for "should this load run now",
//! but it is not comparable with Electricity Maps' average numbers, so
//! readings carry source `watttime` and thresholds should be tuned per source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::http::{Auth, HttpClient, Secret, endpoint};
use super::{Provider, ProviderError};
use crate::carbon::{ForecastPoint, GridZone, Reading, SourceKind, check_intensity};

pub const NAME: &str = "watttime";
pub const DEFAULT_URL: &str = "https://api.watttime.org";

/// Tokens last about 30 minutes; renewing early avoids a 401 round trip.
const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(25 * 60);

/// 1 lb = 453.592 g and 1 MWh = 1000 kWh, so 1 lb/MWh = 0.453592 g/kWh.
pub const G_PER_KWH_PER_LB_PER_MWH: f64 = 0.453592;

/// Zone → WattTime region, for the US balancing authorities our cloud-region
/// table uses. Where WattTime splits a balancing authority, the sub-region
/// holding the big data-centre sites is chosen (Northern Virginia for PJM,
/// Dallas for ERCOT, Bay Area for CAISO). Region ids are the v3 `co2_moer`
/// regions listed in WattTime/watttime-python-client
/// (`data/us_region_meta_data.csv`, and the region → time-zone table in its
/// evaluation code for PJM_DC); config overrides any entry. Grant County PUD
/// (`US-NW-GCPD`) has no WattTime region of its own there, so it needs config.
const BUILTIN_REGIONS: &[(&str, &str)] = &[
    ("US-CAL-CISO", "CAISO_NORTH"),
    ("US-CAL-LDWP", "LDWP"),
    ("US-MIDA-PJM", "PJM_DC"),
    ("US-TEX-ERCO", "ERCOT_NORTHCENTRAL"),
    ("US-NY-NYIS", "NYISO_NYC"),
    ("US-MIDW-MISO", "MISO_INDIANAPOLIS"),
    ("US-NE-ISNE", "ISONE_NEMA"),
    ("US-CENT-SWPP", "SPP_OKCTY"),
    ("US-SE-SOCO", "SOCO"),
    ("US-TEN-TVA", "TVA"),
    ("US-CAR-DUK", "DUK"),
    ("US-CAR-SC", "SC"),
    ("US-CAR-SCEG", "SCEG"),
    ("US-FLA-FPL", "FPL"),
    ("US-NW-BPAT", "BPA"),
    ("US-NW-PACW", "PACW"),
    ("US-NW-PACE", "PACE"),
    ("US-NW-NEVP", "NEVP"),
    ("US-NW-PSCO", "PSCO"),
    ("US-NW-WACM", "WACM"),
    ("US-SW-AZPS", "AZPS"),
    ("US-SW-SRP", "SRP"),
];

/// The built-in WattTime region for `zone`, if any.
pub fn builtin_region(zone: &GridZone) -> Option<&'static str> {
    BUILTIN_REGIONS
        .iter()
        .find(|(id, _)| *id == zone.as_str())
        .map(|(_, region)| *region)
}

pub struct WattTime {
    base: String,
    username: Option<String>,
    password: Option<Secret>,
    regions: BTreeMap<GridZone, String>,
    http: HttpClient,
    /// Held across the login request so concurrent zone fetches share one
    /// login (the login endpoint allows only 100 calls per 5 minutes).
    token: Mutex<Option<Token>>,
}

struct Token {
    value: Secret,
    obtained: Instant,
}

impl WattTime {
    pub fn new(
        base: &str,
        username: Option<String>,
        password: Option<Secret>,
        regions: BTreeMap<GridZone, String>,
        http: HttpClient,
    ) -> Self {
        Self {
            base: base.to_string(),
            username,
            password,
            regions,
            http,
            token: Mutex::new(None),
        }
    }

    /// Configured region first, then the built-in table.
    pub fn region_for(&self, zone: &GridZone) -> Option<&str> {
        self.regions
            .get(zone)
            .map(String::as_str)
            .or_else(|| builtin_region(zone))
    }

    /// A current token. `rejected` is a token the API just refused: it is
    /// replaced, unless another task already replaced it.
    async fn token(
        &self,
        username: &str,
        password: &Secret,
        rejected: Option<&Secret>,
    ) -> Result<Secret, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            let refused = rejected.is_some_and(|r| r.expose() == token.value.expose());
            if !refused && token.obtained.elapsed() < TOKEN_REFRESH_AFTER {
                return Ok(token.value.clone());
            }
        }
        *cached = None;
        let url = endpoint(&self.base, "login", &[])?;
        let login: Login = self
            .http
            .get_json(url, Auth::Basic { username, password })
            .await?;
        if login.token.is_empty() {
            return Err(ProviderError::Malformed(
                "login returned an empty token".into(),
            ));
        }
        let value = Secret::new(login.token);
        *cached = Some(Token {
            value: value.clone(),
            obtained: Instant::now(),
        });
        Ok(value)
    }
}

#[async_trait]
impl Provider for WattTime {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let (Some(username), Some(password)) = (self.username.as_deref(), self.password.as_ref())
        else {
            return Err(ProviderError::NotConfigured(
                "no WattTime username and password",
            ));
        };
        let region = self
            .region_for(zone)
            .ok_or_else(|| ProviderError::UnsupportedZone(zone.clone()))?;
        let url = endpoint(
            &self.base,
            "v3/forecast",
            &[
                ("region", region),
                ("signal_type", "co2_moer"),
                ("horizon_hours", "24"),
            ],
        )?;
        let token = self.token(username, password, None).await?;
        let body = match self.http.get_json(url.clone(), Auth::Bearer(&token)).await {
            // 401 means the token lapsed early; 403 means the plan lacks this
            // region, which a new token will not change.
            Err(ProviderError::Unauthorized(401)) => {
                let fresh = self.token(username, password, Some(&token)).await?;
                self.http.get_json(url, Auth::Bearer(&fresh)).await?
            }
            other => other?,
        };
        parse_forecast(zone, region, body)
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// The v3 data envelope shared by `/v3/forecast`, `/v3/historical` and
/// `/v3/signal-index`.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    data: Vec<DataPoint>,
    meta: Meta,
}

#[derive(Debug, Deserialize)]
struct DataPoint {
    point_time: Timestamp,
    value: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    units: String,
    signal_type: Option<String>,
    region: Option<String>,
}

/// Multiplier from the envelope's `meta.units` to g/kWh. Percentiles
/// (`/v3/signal-index`) have no physical unit and are refused.
pub fn grams_per_kwh_factor(units: &str) -> Result<f64, ProviderError> {
    match units {
        "lbs_co2_per_mwh" => Ok(G_PER_KWH_PER_LB_PER_MWH),
        "kg_co2_per_mwh" | "g_co2_per_kwh" => Ok(1.0),
        other => Err(ProviderError::Malformed(format!(
            "unsupported units {other:?}; need lbs_co2_per_mwh"
        ))),
    }
}

/// The first point is "now" and becomes the reading; every point, that one
/// included, is the forecast. A MOER is a model output even for "now", so
/// readings are marked estimated.
pub fn parse_forecast(
    zone: &GridZone,
    region: &str,
    envelope: Envelope,
) -> Result<Reading, ProviderError> {
    let factor = grams_per_kwh_factor(&envelope.meta.units)?;
    if let Some(signal) = envelope
        .meta
        .signal_type
        .as_deref()
        .filter(|s| *s != "co2_moer")
    {
        return Err(ProviderError::Malformed(format!(
            "asked for co2_moer, got {signal}"
        )));
    }
    if let Some(answered) = envelope.meta.region.as_deref().filter(|r| *r != region) {
        return Err(ProviderError::Malformed(format!(
            "asked for region {region}, got {answered}"
        )));
    }
    let forecast = envelope
        .data
        .iter()
        .map(|point| {
            let value = point.value.ok_or_else(|| {
                ProviderError::Malformed(format!("value at {} is null", point.point_time))
            })?;
            let grams_per_kwh = check_intensity(value * factor).map_err(ProviderError::Invalid)?;
            Ok(ForecastPoint {
                at: point.point_time,
                grams_per_kwh,
            })
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    let now = forecast
        .first()
        .ok_or_else(|| ProviderError::Malformed(format!("no data points for region {region}")))?;
    Reading {
        zone: zone.clone(),
        grams_per_kwh: now.grams_per_kwh,
        source: NAME.to_string(),
        observed_at: now.at,
        kind: SourceKind::Estimated,
        forecast: forecast.clone(),
    }
    .validated()
    .map_err(ProviderError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str) -> GridZone {
        GridZone::parse(id).unwrap()
    }

    const DOCUMENTED: &str = r#"{"data":[
        {"point_time":"2022-07-15T00:00:00+00:00","value":1048.41},
        {"point_time":"2022-07-15T00:05:00+00:00","value":1000.0}],
        "meta":{"data_point_period_seconds":300,"region":"CAISO_NORTH","warnings":[],
        "signal_type":"co2_moer","model":{"date":"2023-03-01"},"units":"lbs_co2_per_mwh",
        "generated_at_period_seconds":300,"generated_at":"2022-07-15T00:00:00+00:00"}}"#;

    #[test]
    fn documented_forecast_converts_pounds_to_grams() {
        let reading = parse_forecast(
            &zone("US-CAL-CISO"),
            "CAISO_NORTH",
            serde_json::from_str(DOCUMENTED).unwrap(),
        )
        .unwrap();
        // 1048.41 lb/MWh × 453.592 g/lb ÷ 1000 kWh/MWh = 475.5504 g/kWh.
        assert!(
            (reading.grams_per_kwh - 475.5504).abs() < 1e-3,
            "{}",
            reading.grams_per_kwh
        );
        assert_eq!(reading.observed_at, "2022-07-15T00:00:00Z".parse().unwrap());
        assert_eq!(reading.forecast.len(), 2);
        assert!((reading.forecast[1].grams_per_kwh - 453.592).abs() < 1e-9);
        assert!(reading.kind.is_estimated());
        assert_eq!(reading.source, "watttime");
    }

    #[test]
    fn conversion_factor_is_exact() {
        assert_eq!(grams_per_kwh_factor("lbs_co2_per_mwh").unwrap(), 0.453592);
        assert!((1000.0 * G_PER_KWH_PER_LB_PER_MWH - 453.592).abs() < 1e-9);
    }

    #[test]
    fn percentiles_and_unknown_units_are_refused() {
        let index = DOCUMENTED.replace("lbs_co2_per_mwh", "percentile");
        let err = parse_forecast(
            &zone("US-CAL-CISO"),
            "CAISO_NORTH",
            serde_json::from_str(&index).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.outcome(), "malformed");
        assert!(err.to_string().contains("percentile"), "{err}");
    }

    #[test]
    fn wrong_region_signal_empty_null_and_negative_are_rejected() {
        let cases = [
            (
                DOCUMENTED.replace("\"region\":\"CAISO_NORTH\"", "\"region\":\"PJM_DC\""),
                "malformed",
            ),
            (
                DOCUMENTED.replace(
                    "\"signal_type\":\"co2_moer\"",
                    "\"signal_type\":\"health_damage\"",
                ),
                "malformed",
            ),
            (DOCUMENTED.replace("1048.41", "null"), "malformed"),
            (DOCUMENTED.replace("1048.41", "-10"), "invalid"),
            (DOCUMENTED.replace("1048.41", "99999"), "invalid"),
            (
                r#"{"data":[],"meta":{"units":"lbs_co2_per_mwh","region":"CAISO_NORTH"}}"#
                    .to_string(),
                "malformed",
            ),
        ];
        for (body, outcome) in cases {
            let err = parse_forecast(
                &zone("US-CAL-CISO"),
                "CAISO_NORTH",
                serde_json::from_str(&body).unwrap(),
            )
            .unwrap_err();
            assert_eq!(err.outcome(), outcome, "{err}");
        }
    }

    #[test]
    fn regions_come_from_config_then_the_builtin_table() {
        let http = HttpClient::new(Duration::from_secs(1), 1024);
        let mut regions = BTreeMap::new();
        regions.insert(zone("US-MIDA-PJM"), "PJM_ROANOKE".to_string());
        regions.insert(zone("XX-TEST"), "TEST_REGION".to_string());
        let wt = WattTime::new(DEFAULT_URL, None, None, regions, http);
        assert_eq!(wt.region_for(&zone("US-MIDA-PJM")), Some("PJM_ROANOKE"));
        assert_eq!(wt.region_for(&zone("XX-TEST")), Some("TEST_REGION"));
        assert_eq!(wt.region_for(&zone("US-CAL-CISO")), Some("CAISO_NORTH"));
        assert_eq!(wt.region_for(&zone("DE")), None);
    }

    #[test]
    fn builtin_table_has_valid_unique_zones() {
        let mut seen = std::collections::BTreeSet::new();
        for (id, region) in BUILTIN_REGIONS {
            assert!(GridZone::parse(id).is_ok(), "{id}");
            assert!(seen.insert(*id), "duplicate {id}");
            assert!(
                !region.is_empty() && region.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            );
        }
    }
}
