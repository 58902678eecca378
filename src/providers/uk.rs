//! UK Carbon Intensity API (National Energy System Operator): no key needed.
//! `GB` gets the national figure; zones mapped to a region id in config get
//! that region's (forecast-only) figure.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use super::http::{Auth, HttpClient, endpoint};
use super::{Provider, ProviderError};
use crate::carbon::{ForecastPoint, GridZone, Reading, SourceKind};

pub const NAME: &str = "uk-carbon-intensity";
pub const DEFAULT_URL: &str = "https://api.carbonintensity.org.uk";

/// The zone answered with the national figure without any configuration.
pub const NATIONAL_ZONE: &str = "GB";

/// The API's region ids: 1 North Scotland … 14 South East England, then the
/// aggregates 15 England, 16 Scotland, 17 Wales.
pub const REGION_IDS: std::ops::RangeInclusive<u32> = 1..=17;

const SLOT: SignedDuration = SignedDuration::from_mins(30);

pub struct UkCarbonIntensity {
    base: String,
    regions: BTreeMap<GridZone, u32>,
    http: HttpClient,
}

impl UkCarbonIntensity {
    pub fn new(base: &str, regions: BTreeMap<GridZone, u32>, http: HttpClient) -> Self {
        Self {
            base: base.to_string(),
            regions,
            http,
        }
    }
}

#[async_trait]
impl Provider for UkCarbonIntensity {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let now = Timestamp::now();
        // Start one slot back so the slot containing `now` is in the answer
        // whether the API treats `from` as inclusive or not.
        let from = format_time(slot_start(now).checked_sub(SLOT).unwrap_or(now));
        if let Some(id) = self.regions.get(zone) {
            let path = format!("regional/intensity/{from}/fw48h/regionid/{id}");
            let body: RegionalBody = self
                .http
                .get_json(endpoint(&self.base, &path, &[])?, Auth::None)
                .await?;
            return parse_regional(zone, *id, body, now);
        }
        if zone.as_str() != NATIONAL_ZONE {
            return Err(ProviderError::UnsupportedZone(zone.clone()));
        }
        let path = format!("intensity/{from}/fw48h");
        let body: NationalBody = self
            .http
            .get_json(endpoint(&self.base, &path, &[])?, Auth::None)
            .await?;
        parse_national(zone, body, now)
    }
}

/// The reading at `now` from a national answer.
pub fn parse_national(
    zone: &GridZone,
    body: NationalBody,
    now: Timestamp,
) -> Result<Reading, ProviderError> {
    reading(zone, &body.data, now)
}

/// The reading at `now` from a regional answer for region `id`.
pub fn parse_regional(
    zone: &GridZone,
    id: u32,
    body: RegionalBody,
    now: Timestamp,
) -> Result<Reading, ProviderError> {
    reading(zone, &body.slots(id)?, now)
}

/// Start of the half-hour slot containing `at`.
pub fn slot_start(at: Timestamp) -> Timestamp {
    let slot = SLOT.as_secs();
    let seconds = at.as_second().div_euclid(slot) * slot;
    Timestamp::from_second(seconds).unwrap_or(at)
}

/// The API's own time format, minutes without seconds: `2018-01-20T12:00Z`.
pub fn format_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%MZ").to_string()
}

/// `/intensity`, `/intensity/{from}/fw24h` and `/fw48h`.
#[derive(Debug, Deserialize)]
pub struct NationalBody {
    data: Vec<Slot>,
}

/// Regional endpoints answer `data` as an array of regions
/// (`/regional/regionid/{id}`) or, quirkily, as one region object
/// (`/regional/intensity/{from}/fw48h/regionid/{id}`).
#[derive(Debug, Deserialize)]
pub struct RegionalBody {
    data: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Region),
    Many(Vec<Region>),
}

#[derive(Debug, Deserialize)]
struct Region {
    regionid: Option<u32>,
    data: Vec<Slot>,
}

/// One half-hour. jiff parses the seconds-less times as they are.
#[derive(Debug, Deserialize)]
struct Slot {
    from: Timestamp,
    to: Timestamp,
    intensity: Intensity,
}

#[derive(Debug, Deserialize)]
struct Intensity {
    forecast: Option<f64>,
    /// Present for past slots of the national series only.
    actual: Option<f64>,
}

impl RegionalBody {
    fn slots(self, id: u32) -> Result<Vec<Slot>, ProviderError> {
        let regions = match self.data {
            OneOrMany::One(region) => vec![region],
            OneOrMany::Many(regions) => regions,
        };
        let only_one = regions.len() == 1;
        regions
            .into_iter()
            .find(|r| r.regionid == Some(id) || (only_one && r.regionid.is_none()))
            .map(|r| r.data)
            .ok_or_else(|| ProviderError::Malformed(format!("no data for region {id}")))
    }
}

/// The slot containing `now` is the reading (its actual when known, else its
/// forecast, which makes the reading estimated); later slots are the forecast.
fn reading(zone: &GridZone, slots: &[Slot], now: Timestamp) -> Result<Reading, ProviderError> {
    let current = slots
        .iter()
        .find(|s| s.from <= now && now < s.to)
        .ok_or_else(|| ProviderError::Malformed(format!("no half-hour slot covers {now}")))?;
    let (grams_per_kwh, estimated) = match (current.intensity.actual, current.intensity.forecast) {
        (Some(actual), _) => (actual, false),
        (None, Some(forecast)) => (forecast, true),
        (None, None) => {
            return Err(ProviderError::Malformed(format!(
                "slot from {} has neither actual nor forecast",
                current.from
            )));
        }
    };
    let forecast = slots
        .iter()
        .filter(|s| s.from > current.from)
        .filter_map(|s| {
            let at = s.from;
            s.intensity.forecast.map(|g| ForecastPoint {
                at,
                grams_per_kwh: g,
            })
        })
        .collect();
    Reading {
        zone: zone.clone(),
        grams_per_kwh,
        source: NAME.to_string(),
        observed_at: current.from,
        kind: SourceKind::live(estimated),
        forecast,
    }
    .validated()
    .map_err(ProviderError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::at as ts;

    fn gb() -> GridZone {
        GridZone::parse("GB").unwrap()
    }

    #[test]
    fn slots_and_time_format_use_minutes_without_seconds() {
        assert_eq!(
            slot_start(ts("2018-01-20T12:29:59Z")),
            ts("2018-01-20T12:00:00Z")
        );
        assert_eq!(
            slot_start(ts("2018-01-20T12:30:00Z")),
            ts("2018-01-20T12:30:00Z")
        );
        assert_eq!(format_time(ts("2018-01-20T12:30:00Z")), "2018-01-20T12:30Z");
    }

    #[test]
    fn documented_national_payload_uses_actual() {
        let body = r#"{"data":[{"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z",
            "intensity":{"forecast":266,"actual":263,"index":"moderate"}}]}"#;
        let body: NationalBody = serde_json::from_str(body).unwrap();
        let reading = reading(&gb(), &body.data, ts("2018-01-20T12:10:00Z")).unwrap();
        assert_eq!(reading.grams_per_kwh, 263.0);
        assert!(!reading.kind.is_estimated());
        assert_eq!(reading.observed_at, ts("2018-01-20T12:00:00Z"));
        assert!(reading.forecast.is_empty());
    }

    #[test]
    fn forecast_only_slots_are_estimated_and_later_slots_are_the_forecast() {
        let body = r#"{"data":[
            {"from":"2018-01-20T11:30Z","to":"2018-01-20T12:00Z","intensity":{"forecast":250,"actual":251,"index":"moderate"}},
            {"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z","intensity":{"forecast":266,"actual":null,"index":"moderate"}},
            {"from":"2018-01-20T12:30Z","to":"2018-01-20T13:00Z","intensity":{"forecast":240,"actual":null,"index":"moderate"}},
            {"from":"2018-01-20T13:00Z","to":"2018-01-20T13:30Z","intensity":{"forecast":null,"actual":null,"index":"moderate"}}]}"#;
        let body: NationalBody = serde_json::from_str(body).unwrap();
        let reading = reading(&gb(), &body.data, ts("2018-01-20T12:15:00Z")).unwrap();
        assert_eq!(reading.grams_per_kwh, 266.0);
        assert!(reading.kind.is_estimated());
        assert_eq!(reading.forecast.len(), 1);
        assert_eq!(reading.forecast[0].at, ts("2018-01-20T12:30:00Z"));

        let gap = super::reading(&gb(), &body.data, ts("2018-01-20T14:00:00Z")).unwrap_err();
        assert_eq!(gap.outcome(), "malformed");
    }

    #[test]
    fn regional_data_may_be_an_object_or_an_array() {
        let object = r#"{"data":{"regionid":9,"dnoregion":"WPD East Midlands","shortname":"East Midlands",
            "postcode":"DE1","data":[{"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z",
            "intensity":{"forecast":312,"index":"very high"},"generationmix":[{"fuel":"gas","perc":76.4}]}]}}"#;
        let array = r#"{"data":[{"regionid":9,"dnoregion":"WPD East Midlands","shortname":"East Midlands",
            "data":[{"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z",
            "intensity":{"forecast":312,"index":"very high"},"generationmix":[{"fuel":"gas","perc":76.4}]}]}]}"#;
        let zone = GridZone::parse("GB-EMIDS").unwrap();
        for body in [object, array] {
            let body: RegionalBody = serde_json::from_str(body).unwrap();
            let reading =
                reading(&zone, &body.slots(9).unwrap(), ts("2018-01-20T12:00:00Z")).unwrap();
            assert_eq!(reading.grams_per_kwh, 312.0);
            assert!(
                reading.kind.is_estimated(),
                "regional figures are forecasts"
            );
        }
        let wrong: RegionalBody = serde_json::from_str(array).unwrap();
        assert_eq!(wrong.slots(3).unwrap_err().outcome(), "malformed");
    }

    #[test]
    fn implausible_values_are_invalid() {
        let body = r#"{"data":[{"from":"2018-01-20T12:00Z","to":"2018-01-20T12:30Z",
            "intensity":{"forecast":-3,"actual":null,"index":"low"}}]}"#;
        let body: NationalBody = serde_json::from_str(body).unwrap();
        let err = reading(&gb(), &body.data, ts("2018-01-20T12:00:00Z")).unwrap_err();
        assert_eq!(err.outcome(), "invalid");
    }
}
