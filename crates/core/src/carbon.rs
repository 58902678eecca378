//! The vocabulary shared by every module: grid zones and intensity readings.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Highest intensity we accept as real. The dirtiest grids (lignite, oil) stay
/// below about 1,200 g/kWh and marginal (MOER) signals below about 1,000 g/kWh,
/// so anything above this is a unit mix-up or garbage, not a dirty hour.
pub const MAX_PLAUSIBLE_GRAMS_PER_KWH: f64 = 2_500.0;

/// An electricity grid zone, named with Electricity Maps zone ids (`DE`, `US-CAL-CISO`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GridZone(String);

impl GridZone {
    /// Zone ids are used as Kubernetes object names, so they must be label-safe
    /// once lower-cased: ASCII letters, digits and `-`, 1 to 63 characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let id = raw.trim();
        if id.is_empty() || id.len() > 63 {
            return Err(format!("grid zone {raw:?} must be 1 to 63 characters"));
        }
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || id.starts_with('-')
            || id.ends_with('-')
        {
            return Err(format!(
                "grid zone {raw:?} may contain only letters, digits and inner '-'"
            ));
        }
        Ok(Self(id.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of the cluster-scoped CarbonScore object for this zone.
    pub fn object_name(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for GridZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One forecast value: the intensity expected at `at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    pub at: Timestamp,
    pub grams_per_kwh: f64,
}

/// What a reading rests on. Decisions use this, never a provider's name.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum SourceKind {
    /// The grid's state as a live API reports it.
    Measured,
    /// Modelled rather than measured: a provider's estimate or forecast slot,
    /// a marginal signal, a weather-based guess. Objects written before this
    /// field existed read as this.
    #[default]
    Estimated,
    /// A yearly average from a static table: shown, never acted on.
    Static,
}

impl SourceKind {
    /// A live provider's reading, by its own "modelled, not measured" flag.
    pub fn live(estimated: bool) -> Self {
        if estimated {
            Self::Estimated
        } else {
            Self::Measured
        }
    }

    pub fn is_estimated(self) -> bool {
        self != Self::Measured
    }
}

/// What an intensity figure prices: the grid's average generation mix, or the
/// marginal plant that one more kWh would start. Emissions reported under the
/// GHG Protocol's location-based method use the average; a marginal figure
/// answers "what would this load change" and must not be summed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    Average,
    Marginal,
}

impl Signal {
    /// The signal a provider publishes, by the name in a reading's `source`:
    /// WattTime's MOER is marginal; Electricity Maps, the UK API, the NOAA
    /// estimate and the static table are averages.
    pub fn of_source(source: &str) -> Self {
        if source == "watttime" {
            Self::Marginal
        } else {
            Self::Average
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Average => "average",
            Self::Marginal => "marginal",
        }
    }
}

/// A zone's last published state as the cluster shares it (a CarbonScore's
/// status, without the Kubernetes wrapping): what planners read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub grams_per_kwh: f64,
    /// Provider name, for messages.
    pub source: String,
    /// `None` until the first reading.
    pub observed_at: Option<Timestamp>,
    pub forecast: Vec<ForecastPoint>,
}

/// A validated carbon-intensity observation for one zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub zone: GridZone,
    pub grams_per_kwh: f64,
    /// Provider name, e.g. `electricity-maps`.
    pub source: String,
    /// When the grid was in this state (not when we fetched it).
    pub observed_at: Timestamp,
    /// What the value rests on; policy acts on measured and estimated
    /// readings, never on a static yearly average.
    pub kind: SourceKind,
    /// Future points, ascending by time; may be empty.
    pub forecast: Vec<ForecastPoint>,
}

/// Rejects values no grid can have. Providers call this on every number they parse.
pub fn check_intensity(grams_per_kwh: f64) -> Result<f64, String> {
    if !grams_per_kwh.is_finite() {
        return Err(format!("intensity {grams_per_kwh} is not a finite number"));
    }
    if grams_per_kwh < 0.0 {
        return Err(format!("intensity {grams_per_kwh} g/kWh is negative"));
    }
    if grams_per_kwh > MAX_PLAUSIBLE_GRAMS_PER_KWH {
        return Err(format!(
            "intensity {grams_per_kwh} g/kWh is above the plausible maximum {MAX_PLAUSIBLE_GRAMS_PER_KWH}"
        ));
    }
    Ok(grams_per_kwh)
}

impl Reading {
    /// Validates the current value and every forecast point, and sorts the forecast.
    pub fn validated(mut self) -> Result<Self, String> {
        check_intensity(self.grams_per_kwh)?;
        for point in &self.forecast {
            check_intensity(point.grams_per_kwh)
                .map_err(|e| format!("forecast at {}: {e}", point.at))?;
        }
        self.forecast.sort_by_key(|p| p.at);
        Ok(self)
    }

    /// Lowest forecast value and when it occurs, if there is a forecast.
    pub fn forecast_min(&self) -> Option<&ForecastPoint> {
        self.forecast
            .iter()
            .min_by(|a, b| a.grams_per_kwh.total_cmp(&b.grams_per_kwh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_are_normalised_and_checked() {
        assert_eq!(
            GridZone::parse(" us-cal-ciso ").unwrap().as_str(),
            "US-CAL-CISO"
        );
        assert_eq!(GridZone::parse("DE").unwrap().object_name(), "de");
        assert!(GridZone::parse("").is_err());
        assert!(GridZone::parse("DE/FR").is_err());
        assert!(GridZone::parse("-DE").is_err());
        assert!(GridZone::parse(&"A".repeat(64)).is_err());
    }

    #[test]
    fn implausible_intensities_are_rejected() {
        assert!(check_intensity(f64::NAN).is_err());
        assert!(check_intensity(f64::INFINITY).is_err());
        assert!(check_intensity(-1.0).is_err());
        assert!(check_intensity(2_600.0).is_err());
        assert_eq!(check_intensity(0.0), Ok(0.0));
        assert_eq!(check_intensity(812.5), Ok(812.5));
    }

    #[test]
    fn validation_sorts_forecast_and_checks_every_point() {
        let t0: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2024-01-01T01:00:00Z".parse().unwrap();
        let reading = Reading {
            zone: GridZone::parse("DE").unwrap(),
            grams_per_kwh: 300.0,
            source: "test".into(),
            observed_at: t0,
            kind: SourceKind::Measured,
            forecast: vec![
                ForecastPoint {
                    at: t1,
                    grams_per_kwh: 200.0,
                },
                ForecastPoint {
                    at: t0,
                    grams_per_kwh: 250.0,
                },
            ],
        };
        let ok = reading.clone().validated().unwrap();
        assert_eq!(ok.forecast[0].at, t0);
        assert_eq!(ok.forecast_min().unwrap().grams_per_kwh, 200.0);

        let mut bad = reading;
        bad.forecast[0].grams_per_kwh = f64::NAN;
        assert!(bad.validated().unwrap_err().contains("forecast"));
    }

    #[test]
    fn only_watttime_publishes_a_marginal_signal() {
        assert_eq!(Signal::of_source("watttime"), Signal::Marginal);
        for average in [
            "electricity-maps",
            "uk-carbon-intensity",
            "noaa-estimate",
            "static",
        ] {
            assert_eq!(Signal::of_source(average), Signal::Average, "{average}");
        }
        assert_eq!(Signal::Marginal.as_str(), "marginal");
    }
}
