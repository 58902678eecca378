//! Electricity Maps v3: average (life-cycle) intensity per zone. Our zone ids
//! are Electricity Maps ids, so no mapping is needed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Deserialize;

use super::http::{Auth, HttpClient, Secret, endpoint};
use super::{Provider, ProviderError};
use crate::carbon::{ForecastPoint, GridZone, Reading, SourceKind, check_intensity};

pub const NAME: &str = "electricity-maps";
pub const DEFAULT_URL: &str = "https://api.electricitymap.org/v3";

/// The forecast endpoint is paid; a free-tier key gets 401/403 there every
/// time. After a refusal we stop spending quota on it for this long.
const FORECAST_PAUSE_AFTER_REFUSAL: Duration = Duration::from_secs(6 * 3600);

pub struct ElectricityMaps {
    base: String,
    token: Option<Secret>,
    http: HttpClient,
    forecast_refused_at: Mutex<Option<Instant>>,
}

impl ElectricityMaps {
    pub fn new(base: &str, token: Option<Secret>, http: HttpClient) -> Self {
        Self {
            base: base.to_string(),
            token,
            http,
            forecast_refused_at: Mutex::new(None),
        }
    }

    /// Best effort: any failure means "no forecast", never a failed reading.
    async fn forecast(&self, zone: &GridZone, token: &Secret) -> Vec<ForecastPoint> {
        let paused = self
            .forecast_refused_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some_and(|at| at.elapsed() < FORECAST_PAUSE_AFTER_REFUSAL);
        if paused {
            return Vec::new();
        }
        let url = match endpoint(
            &self.base,
            "carbon-intensity/forecast",
            &[("zone", zone.as_str())],
        ) {
            Ok(url) => url,
            Err(_) => return Vec::new(),
        };
        let auth = Auth::Header {
            name: "auth-token",
            value: token,
        };
        match self.http.get_json::<ForecastBody>(url, auth).await {
            Ok(body) => parse_forecast(body).unwrap_or_else(|e| {
                tracing::warn!(provider = NAME, %zone, "ignoring forecast: {e}");
                Vec::new()
            }),
            Err(ProviderError::Unauthorized(code)) => {
                tracing::info!(
                    provider = NAME,
                    %zone,
                    "forecast refused (HTTP {code}; it needs a paid plan); not asking again for {}h",
                    FORECAST_PAUSE_AFTER_REFUSAL.as_secs() / 3600
                );
                *self
                    .forecast_refused_at
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(provider = NAME, %zone, "no forecast: {e}");
                Vec::new()
            }
        }
    }
}

#[async_trait]
impl Provider for ElectricityMaps {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let token = self.token.as_ref().ok_or(ProviderError::NotConfigured(
            "no Electricity Maps API token",
        ))?;
        let url = endpoint(
            &self.base,
            "carbon-intensity/latest",
            &[("zone", zone.as_str())],
        )?;
        let auth = Auth::Header {
            name: "auth-token",
            value: token,
        };
        let (latest, forecast) = futures::join!(
            self.http.get_json::<Latest>(url, auth),
            self.forecast(zone, token)
        );
        let mut reading = parse_latest(zone, latest?)?;
        reading.forecast = forecast;
        reading.validated().map_err(ProviderError::Invalid)
    }
}

/// `GET /carbon-intensity/latest`; also the element type of `/history`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Latest {
    zone: Option<String>,
    /// Null when Electricity Maps has no value for the hour.
    carbon_intensity: Option<f64>,
    datetime: Timestamp,
    is_estimated: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ForecastBody {
    forecast: Vec<ForecastEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForecastEntry {
    datetime: Timestamp,
    carbon_intensity: Option<f64>,
}

pub fn parse_latest(zone: &GridZone, latest: Latest) -> Result<Reading, ProviderError> {
    if let Some(answered) = latest
        .zone
        .as_deref()
        .filter(|answered| !answered.eq_ignore_ascii_case(zone.as_str()))
    {
        return Err(ProviderError::Malformed(format!(
            "asked for zone {zone}, got zone {answered}"
        )));
    }
    let value = latest.carbon_intensity.ok_or_else(|| {
        ProviderError::Malformed(format!("carbonIntensity is null for zone {zone}"))
    })?;
    Ok(Reading {
        zone: zone.clone(),
        grams_per_kwh: check_intensity(value).map_err(ProviderError::Invalid)?,
        source: NAME.to_string(),
        observed_at: latest.datetime,
        kind: SourceKind::live(latest.is_estimated.unwrap_or(false)),
        forecast: Vec::new(),
    })
}

/// Hours without a value are skipped; one implausible value discards the
/// whole forecast, because the rest of that document is suspect too.
pub fn parse_forecast(body: ForecastBody) -> Result<Vec<ForecastPoint>, String> {
    body.forecast
        .into_iter()
        .filter_map(|entry| entry.carbon_intensity.map(|value| (entry.datetime, value)))
        .map(|(at, value)| {
            check_intensity(value)
                .map(|grams_per_kwh| ForecastPoint { at, grams_per_kwh })
                .map_err(|e| format!("forecast at {at}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str) -> GridZone {
        GridZone::parse(id).unwrap()
    }

    #[test]
    fn documented_latest_payload_parses() {
        let body = r#"{"zone":"FR","carbonIntensity":103,"datetime":"2023-01-23T17:00:00.000Z",
            "updatedAt":"2023-01-23T16:53:20.794Z","createdAt":"2023-01-20T17:00:00.000Z",
            "emissionFactorType":"lifecycle","isEstimated":true,"estimationMethod":"TIME_SLICER_AVERAGE"}"#;
        let reading = parse_latest(&zone("FR"), serde_json::from_str(body).unwrap()).unwrap();
        assert_eq!(reading.grams_per_kwh, 103.0);
        assert_eq!(reading.observed_at, "2023-01-23T17:00:00Z".parse().unwrap());
        assert!(reading.kind.is_estimated());
        assert_eq!(reading.source, "electricity-maps");
    }

    #[test]
    fn measured_values_are_not_estimated() {
        let body = r#"{"zone":"DE","carbonIntensity":412.5,"datetime":"2024-05-01T10:00:00.000Z",
            "isEstimated":false,"estimationMethod":null}"#;
        let reading = parse_latest(&zone("DE"), serde_json::from_str(body).unwrap()).unwrap();
        assert!(!reading.kind.is_estimated());
        assert_eq!(reading.grams_per_kwh, 412.5);
    }

    #[test]
    fn null_negative_and_mismatched_values_are_rejected() {
        let null = r#"{"zone":"NL","carbonIntensity":null,"datetime":"2023-01-23T17:00:00.000Z"}"#;
        let err = parse_latest(&zone("NL"), serde_json::from_str(null).unwrap()).unwrap_err();
        assert_eq!(err.outcome(), "malformed");
        assert!(err.to_string().contains("null"), "{err}");

        let negative =
            r#"{"zone":"NL","carbonIntensity":-4,"datetime":"2023-01-23T17:00:00.000Z"}"#;
        let err = parse_latest(&zone("NL"), serde_json::from_str(negative).unwrap()).unwrap_err();
        assert_eq!(err.outcome(), "invalid");

        let other = r#"{"zone":"BE","carbonIntensity":100,"datetime":"2023-01-23T17:00:00.000Z"}"#;
        let err = parse_latest(&zone("NL"), serde_json::from_str(other).unwrap()).unwrap_err();
        assert_eq!(err.outcome(), "malformed");
    }

    #[test]
    fn documented_forecast_payload_parses_and_skips_gaps() {
        let body = r#"{"zone":"NL","forecast":[
            {"datetime":"2023-01-23T18:00:00.000Z","carbonIntensity":999},
            {"datetime":"2023-01-23T19:00:00.000Z","carbonIntensity":null},
            {"datetime":"2023-01-23T20:00:00.000Z","carbonIntensity":250.5}],
            "updatedAt":"2023-01-23T17:00:00.000Z"}"#;
        let points = parse_forecast(serde_json::from_str(body).unwrap()).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].grams_per_kwh, 999.0);
        assert_eq!(points[1].at, "2023-01-23T20:00:00Z".parse().unwrap());

        let bad = r#"{"zone":"NL","forecast":[{"datetime":"2023-01-23T18:00:00.000Z","carbonIntensity":-1}]}"#;
        assert!(parse_forecast(serde_json::from_str(bad).unwrap()).is_err());
    }
}
