//! A weather-based *estimate* for US zones from NOAA's api.weather.gov.
//!
//! This is a heuristic, not a measurement. It takes the zone's yearly average
//! intensity (the static table) and scales it by a renewables proxy computed
//! from the forecast at one representative point per balancing authority:
//!
//! - wind: surface wind between 2 and 9 m/s maps linearly to 0..1 (below, wind
//!   farms barely turn; above, they are near rated output at hub height);
//! - solar: clear sky (1 − sky cover) times the sine of the sun's elevation,
//!   so night and overcast both give 0;
//! - proxy = ½ wind + ½ solar, in 0..1;
//! - intensity = average × (1.2 − 0.6 × proxy), which is clamped by
//!   construction to the band 0.6×–1.2× the yearly average and equals the
//!   average at proxy ⅓ (a breezy, partly cloudy day).
//!
//! One point cannot see a whole balancing authority's weather, and the proxy
//! ignores load, imports and the zone's actual mix. Readings are therefore
//! always `estimated` with source `noaa-estimate`; put real APIs first.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};
use reqwest::Url;
use serde::Deserialize;

use super::http::{Auth, HttpClient, endpoint, same_origin};
use super::{Provider, ProviderError, static_table};
use crate::carbon::{ForecastPoint, GridZone, Reading, SourceKind, check_intensity};

pub const NAME: &str = "noaa-estimate";
pub const DEFAULT_URL: &str = "https://api.weather.gov";

/// Lower and upper bound of the estimate, as multiples of the yearly average.
pub const MIN_FACTOR: f64 = 0.6;
pub const MAX_FACTOR: f64 = 1.2;

const WIND_LOW_M_S: f64 = 2.0;
const WIND_HIGH_M_S: f64 = 9.0;
const FORECAST_HOURS: i64 = 24;

/// One representative point per US balancing authority: a place inside the
/// authority's footprint near its wind or solar fleet or its data centres.
const POINTS: &[(&str, f64, f64)] = &[
    ("US-CAL-CISO", 36.7378, -119.7871), // Fresno, Central Valley solar
    ("US-CAL-LDWP", 34.0522, -118.2437), // Los Angeles
    ("US-MIDA-PJM", 40.2732, -76.8867),  // Harrisburg, PA
    ("US-TEX-ERCO", 32.4487, -99.7331),  // Abilene, West Texas wind
    ("US-NY-NYIS", 42.6526, -73.7562),   // Albany, NY
    ("US-MIDW-MISO", 41.5868, -93.6250), // Des Moines, Iowa wind
    ("US-NE-ISNE", 42.2626, -71.8023),   // Worcester, MA
    ("US-CENT-SWPP", 37.6872, -97.3301), // Wichita, Kansas wind
    ("US-SE-SOCO", 33.7490, -84.3880),   // Atlanta, GA
    ("US-TEN-TVA", 36.1627, -86.7816),   // Nashville, TN
    ("US-CAR-DUK", 35.2271, -80.8431),   // Charlotte, NC
    ("US-CAR-SC", 33.1960, -80.0131),    // Moncks Corner, SC
    ("US-CAR-SCEG", 34.0007, -81.0348),  // Columbia, SC
    ("US-FLA-FPL", 26.1224, -80.1373),   // Fort Lauderdale, FL
    ("US-NW-BPAT", 45.5946, -121.1787),  // The Dalles, Columbia Gorge
    ("US-NW-PACW", 44.0582, -121.3153),  // Bend, OR
    ("US-NW-PACE", 40.7608, -111.8910),  // Salt Lake City, UT
    ("US-NW-NEVP", 36.1699, -115.1398),  // Las Vegas, NV
    ("US-NW-PSCO", 39.7392, -104.9903),  // Denver, CO
    ("US-NW-WACM", 41.1400, -104.8202),  // Cheyenne, WY wind
    ("US-NW-GCPD", 47.2343, -119.8526),  // Quincy, WA
    ("US-SW-AZPS", 33.4484, -112.0740),  // Phoenix, AZ
    ("US-SW-SRP", 33.4152, -111.8315),   // Mesa, AZ
];

/// The representative (latitude, longitude) for `zone`, if it is covered.
pub fn zone_point(zone: &GridZone) -> Option<(f64, f64)> {
    POINTS
        .iter()
        .find(|(id, _, _)| *id == zone.as_str())
        .map(|(_, lat, lon)| (*lat, *lon))
}

pub struct Noaa {
    base: String,
    http: HttpClient,
    /// `/points` answers rarely change, so each zone resolves its grid once.
    grid_urls: Mutex<HashMap<GridZone, Url>>,
}

impl Noaa {
    pub fn new(base: &str, http: HttpClient) -> Self {
        Self {
            base: base.to_string(),
            http,
            grid_urls: Mutex::new(HashMap::new()),
        }
    }

    fn cached_grid_urls(&self) -> std::sync::MutexGuard<'_, HashMap<GridZone, Url>> {
        self.grid_urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn grid_url(
        &self,
        zone: &GridZone,
        (lat, lon): (f64, f64),
    ) -> Result<Url, ProviderError> {
        if let Some(url) = self.cached_grid_urls().get(zone) {
            return Ok(url.clone());
        }
        let points = endpoint(&self.base, &format!("points/{lat:.4},{lon:.4}"), &[])?;
        let body: PointsBody = self.http.get_json(points, Auth::None).await?;
        let url = grid_link(&self.base, body).map_err(|e| match e {
            ProviderError::Malformed(m) => {
                ProviderError::Malformed(format!("{m} (point {lat:.4},{lon:.4})"))
            }
            other => other,
        })?;
        self.cached_grid_urls().insert(zone.clone(), url.clone());
        Ok(url)
    }
}

/// The grid-data link of a `/points` answer, which must stay on `base`'s origin.
pub fn grid_link(base: &str, body: PointsBody) -> Result<Url, ProviderError> {
    let link = body
        .properties
        .forecast_grid_data
        .ok_or_else(|| ProviderError::Malformed("no forecastGridData".into()))?;
    let url = Url::parse(&link)
        .map_err(|e| ProviderError::Malformed(format!("forecastGridData {link:?}: {e}")))?;
    let base = Url::parse(base)
        .map_err(|e| ProviderError::Transport(format!("invalid URL {base:?}: {e}")))?;
    // The link comes from a response; never let it send us elsewhere.
    if !same_origin(&base, &url) {
        return Err(ProviderError::Malformed(format!(
            "forecastGridData points outside {}",
            base.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

#[async_trait]
impl Provider for Noaa {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let unsupported = || ProviderError::UnsupportedZone(zone.clone());
        let point = zone_point(zone).ok_or_else(unsupported)?;
        let average = static_table::yearly_average(zone).ok_or_else(unsupported)?;
        let url = self.grid_url(zone, point).await?;
        let grid = match self.http.get_json::<GridBody>(url, Auth::None).await {
            Ok(grid) => grid,
            Err(e) => {
                // Forecast offices re-grid now and then; resolve afresh next time.
                self.cached_grid_urls().remove(zone);
                return Err(e);
            }
        };
        estimate(zone, average, point, &grid, Timestamp::now())
    }
}

#[derive(Debug, Deserialize)]
pub struct PointsBody {
    properties: PointsProperties,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PointsProperties {
    forecast_grid_data: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct GridBody {
    properties: GridProperties,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GridProperties {
    sky_cover: Layer,
    wind_speed: Layer,
}

#[derive(Debug, Deserialize)]
struct Layer {
    uom: Option<String>,
    values: Vec<LayerValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayerValue {
    valid_time: String,
    value: Option<f64>,
}

/// A layer as (start, end, value) intervals, in our units.
struct Series(Vec<(Timestamp, Timestamp, f64)>);

impl Series {
    fn at(&self, t: Timestamp) -> Option<f64> {
        self.0
            .iter()
            .find(|(start, end, _)| *start <= t && t < *end)
            .map(|(_, _, value)| *value)
    }
}

/// `2024-01-01T00:00:00+00:00/PT1H` → (start, end).
pub fn parse_valid_time(raw: &str) -> Result<(Timestamp, Timestamp), String> {
    let (start, duration) = raw
        .split_once('/')
        .ok_or_else(|| format!("validTime {raw:?} is not start/duration"))?;
    let start: Timestamp = start
        .parse()
        .map_err(|e| format!("validTime {raw:?}: {e}"))?;
    let length = duration
        .parse::<Span>()
        .and_then(|span| span.to_duration(SpanRelativeTo::days_are_24_hours()))
        .map_err(|e| format!("validTime {raw:?}: {e}"))?;
    if length <= SignedDuration::ZERO {
        return Err(format!("validTime {raw:?} has no length"));
    }
    let end = start
        .checked_add(length)
        .map_err(|e| format!("validTime {raw:?}: {e}"))?;
    Ok((start, end))
}

fn series(
    name: &str,
    layer: &Layer,
    to_ours: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Series, ProviderError> {
    let mut intervals = Vec::with_capacity(layer.values.len());
    for entry in &layer.values {
        let (start, end) = parse_valid_time(&entry.valid_time).map_err(ProviderError::Malformed)?;
        let Some(value) = entry.value else { continue };
        let value = value * to_ours;
        if !value.is_finite() || !range.contains(&value) {
            return Err(ProviderError::Invalid(format!(
                "{name} {value} at {start} is outside {range:?}"
            )));
        }
        intervals.push((start, end, value));
    }
    Ok(Series(intervals))
}

fn wind_to_m_s(uom: Option<&str>) -> Result<f64, ProviderError> {
    match uom {
        Some("wmoUnit:km_h-1") => Ok(1.0 / 3.6),
        Some("wmoUnit:m_s-1") => Ok(1.0),
        Some("wmoUnit:kt") => Ok(0.514_444),
        other => Err(ProviderError::Malformed(format!(
            "windSpeed unit {other:?}"
        ))),
    }
}

/// Sine of the sun's elevation at `at`, 0 when it is below the horizon. The
/// low-precision formula (declination from day of year, no equation of time)
/// is off by a few degrees, which is noise next to the proxy itself.
pub fn sun_height(lat: f64, lon: f64, at: Timestamp) -> f64 {
    let utc = at.to_zoned(TimeZone::UTC);
    let day = f64::from(utc.day_of_year());
    let hours = f64::from(utc.hour()) + f64::from(utc.minute()) / 60.0;
    let declination = 23.44_f64.to_radians() * (360.0 / 365.0 * (day - 81.0)).to_radians().sin();
    let hour_angle = (15.0 * (hours + lon / 15.0 - 12.0)).to_radians();
    let lat = lat.to_radians();
    (lat.sin() * declination.sin() + lat.cos() * declination.cos() * hour_angle.cos()).max(0.0)
}

/// Share of renewable output the weather allows, 0 (calm night) to 1.
pub fn renewables_proxy(sky_cover_percent: f64, wind_m_s: f64, sun_height: f64) -> f64 {
    let wind = ((wind_m_s - WIND_LOW_M_S) / (WIND_HIGH_M_S - WIND_LOW_M_S)).clamp(0.0, 1.0);
    let solar = (1.0 - sky_cover_percent / 100.0).clamp(0.0, 1.0) * sun_height.clamp(0.0, 1.0);
    (0.5 * wind + 0.5 * solar).clamp(0.0, 1.0)
}

/// Multiple of the yearly average for a proxy value; within the band.
pub fn intensity_factor(proxy: f64) -> f64 {
    (MAX_FACTOR - (MAX_FACTOR - MIN_FACTOR) * proxy).clamp(MIN_FACTOR, MAX_FACTOR)
}

/// The estimate for `now` and for each of the next 24 whole hours.
pub fn estimate(
    zone: &GridZone,
    yearly_average: f64,
    (lat, lon): (f64, f64),
    grid: &GridBody,
    now: Timestamp,
) -> Result<Reading, ProviderError> {
    let average = check_intensity(yearly_average).map_err(ProviderError::Invalid)?;
    let props = &grid.properties;
    let sky_uom = props.sky_cover.uom.as_deref();
    if sky_uom != Some("wmoUnit:percent") {
        return Err(ProviderError::Malformed(format!(
            "skyCover unit {sky_uom:?}"
        )));
    }
    let sky = series("skyCover", &props.sky_cover, 1.0, 0.0..=100.0)?;
    let wind_factor = wind_to_m_s(props.wind_speed.uom.as_deref())?;
    let wind = series("windSpeed", &props.wind_speed, wind_factor, 0.0..=150.0)?;
    let at = |t: Timestamp| -> Option<f64> {
        let proxy = renewables_proxy(sky.at(t)?, wind.at(t)?, sun_height(lat, lon, t));
        Some(average * intensity_factor(proxy))
    };
    let grams_per_kwh = at(now)
        .ok_or_else(|| ProviderError::Malformed(format!("weather data does not cover {now}")))?;
    let hour = now.as_second().div_euclid(3600) * 3600;
    let forecast = (1..=FORECAST_HOURS)
        .filter_map(|k| Timestamp::from_second(hour + k * 3600).ok())
        .filter_map(|t| {
            at(t).map(|grams_per_kwh| ForecastPoint {
                at: t,
                grams_per_kwh,
            })
        })
        .collect();
    Reading {
        zone: zone.clone(),
        grams_per_kwh,
        source: NAME.to_string(),
        observed_at: now,
        kind: SourceKind::Estimated,
        forecast,
    }
    .validated()
    .map_err(ProviderError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::at as ts;

    fn grid(sky: &str, wind: &str) -> GridBody {
        let body = format!(
            r#"{{"properties":{{"updateTime":"2024-01-01T00:00:00+00:00",
            "skyCover":{{"uom":"wmoUnit:percent","values":[{sky}]}},
            "windSpeed":{{"uom":"wmoUnit:km_h-1","values":[{wind}]}}}}}}"#
        );
        serde_json::from_str(&body).unwrap()
    }

    #[test]
    fn valid_times_carry_durations() {
        assert_eq!(
            parse_valid_time("2024-01-01T00:00:00+00:00/PT1H").unwrap(),
            (ts("2024-01-01T00:00:00Z"), ts("2024-01-01T01:00:00Z"))
        );
        assert_eq!(
            parse_valid_time("2024-01-01T06:00:00+00:00/P1DT6H")
                .unwrap()
                .1,
            ts("2024-01-02T12:00:00Z")
        );
        assert!(parse_valid_time("2024-01-01T00:00:00+00:00").is_err());
        assert!(parse_valid_time("2024-01-01T00:00:00+00:00/PT0H").is_err());
        assert!(parse_valid_time("yesterday/PT1H").is_err());
    }

    #[test]
    fn the_sun_is_up_at_noon_and_down_at_midnight() {
        // Fresno: solar noon is about 20:00 UTC.
        let noon = sun_height(36.7, -119.8, ts("2024-06-21T20:00:00Z"));
        assert!(noon > 0.95, "{noon}");
        assert_eq!(sun_height(36.7, -119.8, ts("2024-06-21T08:00:00Z")), 0.0);
        let winter = sun_height(36.7, -119.8, ts("2024-12-21T20:00:00Z"));
        assert!(winter > 0.4 && winter < 0.6, "{winter}");
    }

    #[test]
    fn proxy_and_factor_stay_in_the_documented_band() {
        assert_eq!(
            intensity_factor(renewables_proxy(100.0, 0.0, 0.0)),
            MAX_FACTOR
        );
        assert_eq!(
            intensity_factor(renewables_proxy(0.0, 20.0, 1.0)),
            MIN_FACTOR
        );
        assert!((intensity_factor(1.0 / 3.0) - 1.0).abs() < 1e-12);
        // Windier and clearer is never dirtier.
        let calm = renewables_proxy(50.0, 3.0, 0.5);
        assert!(renewables_proxy(50.0, 6.0, 0.5) > calm);
        assert!(renewables_proxy(10.0, 3.0, 0.5) > calm);
        for sky in [0.0, 50.0, 100.0] {
            for wind in [0.0, 5.0, 40.0] {
                let f = intensity_factor(renewables_proxy(sky, wind, 0.7));
                assert!((MIN_FACTOR..=MAX_FACTOR).contains(&f));
            }
        }
    }

    #[test]
    fn estimate_scales_the_yearly_average() {
        let zone = GridZone::parse("US-CAL-CISO").unwrap();
        // Calm, overcast night: the upper end of the band.
        let night = grid(
            r#"{"validTime":"2024-06-21T06:00:00+00:00/PT3H","value":100}"#,
            r#"{"validTime":"2024-06-21T06:00:00+00:00/PT3H","value":0}"#,
        );
        let reading = estimate(
            &zone,
            250.0,
            (36.7, -119.8),
            &night,
            ts("2024-06-21T07:30:00Z"),
        )
        .unwrap();
        assert!((reading.grams_per_kwh - 300.0).abs() < 1e-9);
        assert!(reading.kind.is_estimated());
        assert_eq!(reading.source, "noaa-estimate");
        // The data covers 06:00–09:00, so only 08:00 is a forecast hour.
        assert_eq!(reading.forecast.len(), 1);
        assert_eq!(reading.forecast[0].at, ts("2024-06-21T08:00:00Z"));

        // Windy, clear noon: close to the lower end.
        let noon = grid(
            r#"{"validTime":"2024-06-21T20:00:00+00:00/PT1H","value":0}"#,
            r#"{"validTime":"2024-06-21T20:00:00+00:00/PT1H","value":50}"#,
        );
        let reading = estimate(
            &zone,
            250.0,
            (36.7, -119.8),
            &noon,
            ts("2024-06-21T20:10:00Z"),
        )
        .unwrap();
        assert!(reading.grams_per_kwh < 155.0, "{}", reading.grams_per_kwh);
    }

    #[test]
    fn bad_weather_data_is_rejected() {
        let zone = GridZone::parse("US-CAL-CISO").unwrap();
        let now = ts("2024-06-21T07:30:00Z");
        let ok_sky = r#"{"validTime":"2024-06-21T07:00:00+00:00/PT1H","value":40}"#;
        let ok_wind = r#"{"validTime":"2024-06-21T07:00:00+00:00/PT1H","value":10}"#;
        let negative = r#"{"validTime":"2024-06-21T07:00:00+00:00/PT1H","value":-5}"#;
        let stale = r#"{"validTime":"2024-06-20T07:00:00+00:00/PT1H","value":40}"#;
        let cases = [
            (grid(negative, ok_wind), "invalid"),
            (grid(ok_sky, negative), "invalid"),
            (grid(stale, ok_wind), "malformed"),
        ];
        for (body, outcome) in cases {
            let err = estimate(&zone, 250.0, (36.7, -119.8), &body, now).unwrap_err();
            assert_eq!(err.outcome(), outcome, "{err}");
        }
        let knots: GridBody = serde_json::from_str(
            &serde_json::to_string(&serde_json::json!({"properties": {
                "skyCover": {"uom": "wmoUnit:percent", "values": []},
                "windSpeed": {"uom": "wmoUnit:furlongs", "values": []}}}))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            estimate(&zone, 250.0, (0.0, 0.0), &knots, now)
                .unwrap_err()
                .outcome(),
            "malformed"
        );
    }

    #[test]
    fn documented_points_payload_parses() {
        let body = r#"{"@context":[],"id":"https://api.weather.gov/points/36.7378,-119.7871",
            "type":"Feature","properties":{"gridId":"HNX","gridX":53,"gridY":100,
            "forecast":"https://api.weather.gov/gridpoints/HNX/53,100/forecast",
            "forecastGridData":"https://api.weather.gov/gridpoints/HNX/53,100"}}"#;
        let points: PointsBody = serde_json::from_str(body).unwrap();
        assert_eq!(
            points.properties.forecast_grid_data.as_deref(),
            Some("https://api.weather.gov/gridpoints/HNX/53,100")
        );
    }

    #[test]
    fn point_table_has_valid_us_zones() {
        for (id, lat, lon) in POINTS {
            assert!(GridZone::parse(id).is_ok() && id.starts_with("US-"), "{id}");
            assert!(
                (24.0..50.0).contains(lat) && (-125.0..-66.0).contains(lon),
                "{id}"
            );
        }
        assert!(zone_point(&GridZone::parse("DE").unwrap()).is_none());
    }
}
