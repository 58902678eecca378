//! Deferral: when should a pod that may wait for greener power start?
//!
//! A pod opts in with the scheduling gate [`GATE`] and the annotation
//! [`LATEST_START`] or [`MAX_DELAY`] (optionally [`DURATION`] and [`ZONE`]). The
//! leader holds it and releases it (removes only our gate) when the deferral
//! planner says so, never after its latest start, and at once when it cannot
//! plan (no usable forecast, invalid annotation): availability wins.
//!
//! The plan itself is [`crate::planner`], the very code the simulator's
//! deferral policy runs. [`round`] turns the cluster's state (zone snapshots,
//! free CPU per zone, the gated pods) into the planner's slots and its answers
//! back into times; the agent's deferral controller is the leader's loop around it.

pub mod round;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::carbon::{GridZone, Snapshot};
use crate::duration;

/// The scheduling gate that holds a pod for carbon-kube.
pub const GATE: &str = "carbon-kube.io/defer";
/// RFC 3339 time by which the pod must have been released.
pub const LATEST_START: &str = "carbon-kube.io/latest-start";
/// Longest wait from the pod's creation (`6h`): a latest start for pod templates
/// (Jobs, CronJobs) that cannot name a time. With both, the earlier wins.
pub const MAX_DELAY: &str = "carbon-kube.io/max-delay";
/// How long the pod runs (`90m`, `2h`, `1h30m`); the window the forecast is averaged over.
pub const DURATION: &str = "carbon-kube.io/duration";
/// Grid zone the pod must run in (else the pod's node selector's, else any zone with nodes).
pub const ZONE: &str = "carbon-kube.io/zone";
/// What a pod without [`DURATION`] is assumed to run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Longest accepted [`DURATION`]: beyond a week the forecast says nothing useful.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Finest planning slot: a release lands within a slot of its planned start.
pub const MAX_STEP: Duration = Duration::from_secs(60);
/// A measurement time further ahead of the leader's clock than this is not trusted.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(5 * 60);

// ---- What a pod asks for ---------------------------------------------------

/// A pod's deferral request, from its annotations (and node selector).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub latest_start: Timestamp,
    pub duration: Duration,
    /// `None`: plan on the node-weighted forecast of every zone.
    pub zone: Option<GridZone>,
}

/// Reads the request; the error says what is wrong, for the pod's event.
/// `selector_zone` is the zone the pod's node selector pins it to, if any;
/// `created` the pod's creation time, which [`MAX_DELAY`] counts from.
pub fn parse_request(
    annotations: &BTreeMap<String, String>,
    selector_zone: Option<GridZone>,
    created: Timestamp,
) -> Result<Request, String> {
    let by_time = match annotations.get(LATEST_START) {
        None => None,
        Some(latest) => Some(latest.trim().parse::<Timestamp>().map_err(|_| {
            format!("annotation {LATEST_START}={latest:?} is not an RFC 3339 time (e.g. 2025-06-01T18:00:00Z)")
        })?),
    };
    let by_delay = match annotations.get(MAX_DELAY) {
        None => None,
        Some(text) => {
            let delay = parse_duration(text)
                .map_err(|why| format!("annotation {MAX_DELAY}={text:?} {why}"))?;
            Some(created + SignedDuration::from_secs(delay.as_secs() as i64))
        }
    };
    let latest_start = match (by_time, by_delay) {
        (Some(a), Some(b)) => a.min(b),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => {
            return Err(format!(
                "neither annotation {LATEST_START} (an RFC 3339 time, e.g. 2025-06-01T18:00:00Z) \
                 nor {MAX_DELAY} (a wait from creation, e.g. 6h) is set"
            ));
        }
    };
    let duration = match annotations.get(DURATION) {
        None => DEFAULT_DURATION,
        Some(text) => {
            parse_duration(text).map_err(|why| format!("annotation {DURATION}={text:?} {why}"))?
        }
    };
    let zone =
        match annotations.get(ZONE) {
            Some(text) => Some(GridZone::parse(text).map_err(|why| {
                format!("annotation {ZONE}={text:?} is not a grid zone id ({why})")
            })?),
            None => selector_zone,
        };
    Ok(Request {
        latest_start,
        duration,
        zone,
    })
}

/// `45s`, `90m`, `2h`, `1h30m`, `1d`; whole numbers with units, more than zero
/// and at most a week.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const ANNOTATION_DURATIONS: duration::Rules = duration::Rules {
        loose_numbers: false,
        zero_allowed: false,
        max: (MAX_DURATION, "a week"),
        examples: "90m, 2h or 1h30m",
    };
    duration::parse(text, &ANNOTATION_DURATIONS)
}

// ---- What the forecast says --------------------------------------------------

/// One zone's intensity from now on: the measured value until the first
/// forecast point after it, then each point until the next, up to the end of
/// the last point's interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSeries {
    pub current: f64,
    pub observed_at: Timestamp,
    /// Ascending, all after `observed_at`, evenly spaced (no gaps).
    pub points: Vec<(Timestamp, f64)>,
}

impl ZoneSeries {
    /// The series a zone's last published state gives at `now`, or why it cannot be
    /// planned on (for the pods' events): no data, data older than `max_age`
    /// or measured in the future, no forecast, a forecast point that is not a
    /// finite non-negative number, or a gap in the forecast.
    pub fn from_snapshot(
        zone: &GridZone,
        status: &Snapshot,
        now: Timestamp,
        max_age: Duration,
    ) -> Result<Self, String> {
        let observed_at = status
            .observed_at
            .ok_or_else(|| format!("zone {zone} has no carbon data yet"))?;
        let age = now.duration_since(observed_at);
        if age > SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX) {
            return Err(format!(
                "the carbon data of zone {zone} is {} min old (more than {} min)",
                age.as_secs() / 60,
                max_age.as_secs() / 60
            ));
        }
        if -age > SignedDuration::try_from(MAX_CLOCK_AHEAD).unwrap_or(SignedDuration::MAX) {
            return Err(format!(
                "the carbon data of zone {zone} was observed at {observed_at}, {} min after now: \
                 a stale or skewed clock",
                (-age).as_secs() / 60
            ));
        }
        let current = status.grams_per_kwh;
        if !(current.is_finite() && current >= 0.0) {
            return Err(format!(
                "zone {zone}'s intensity {current} is not a valid number"
            ));
        }
        if let Some(bad) = status
            .forecast
            .iter()
            .find(|p| !(p.grams_per_kwh.is_finite() && p.grams_per_kwh >= 0.0))
        {
            return Err(format!(
                "the forecast of zone {zone} has an invalid point ({} at {})",
                bad.grams_per_kwh, bad.at
            ));
        }
        let mut points: Vec<(Timestamp, f64)> = status
            .forecast
            .iter()
            .filter(|p| p.at > observed_at)
            .map(|p| (p.at, p.grams_per_kwh))
            .collect();
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        if points.is_empty() {
            return Err(format!(
                "zone {zone} has no forecast (source {})",
                status.source
            ));
        }
        // Evenly spaced, as every provider publishes them; a missing point is a
        // gap the plan must not bridge by stretching its neighbour.
        let series = Self {
            current,
            observed_at,
            points,
        };
        let spacing = series.spacing();
        // From now (or the measurement, if later) the measured value holds until the first point.
        let gap = std::iter::once(observed_at.max(now))
            .chain(
                series
                    .points
                    .iter()
                    .map(|p| p.0)
                    .filter(|at| *at > now.max(observed_at)),
            )
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| (w[0], w[1]))
            .find(|(a, b)| b.duration_since(*a) > spacing + spacing / 2);
        if let Some((from, to)) = gap {
            return Err(format!(
                "the forecast of zone {zone} has a gap from {from} to {to}"
            ));
        }
        if series.horizon() <= now {
            return Err(format!("the forecast of zone {zone} ends before now"));
        }
        Ok(series)
    }

    /// The spacing of the forecast points (an hour for a lone point).
    pub fn spacing(&self) -> SignedDuration {
        self.points
            .windows(2)
            .map(|w| w[1].0.duration_since(w[0].0))
            .min()
            .unwrap_or(SignedDuration::from_hours(1))
    }

    /// The end of the forecast: the last point plus the spacing.
    pub fn horizon(&self) -> Timestamp {
        match self.points.last() {
            None => self.observed_at,
            Some((last, _)) => *last + self.spacing(),
        }
    }

    /// The intensity expected at `at`, `None` beyond the horizon.
    pub fn value_at(&self, at: Timestamp) -> Option<f64> {
        if at >= self.horizon() {
            return None;
        }
        let index = self.points.partition_point(|p| p.0 <= at);
        Some(match index {
            0 => self.current,
            i => self.points[i - 1].1,
        })
    }
}

/// Estimated grams of CO2 of `vcpus` busy vCPUs for `duration` at a mean
/// intensity, with the same marginal power model as the simulator
/// (`emission_score` of the power model, busy vCPUs only).
pub fn estimated_grams(
    coefficients: &crate::power::PowerCoefficients,
    vcpus: f64,
    duration: Duration,
    mean_grams_per_kwh: f64,
) -> f64 {
    vcpus
        * crate::power::emission_score(coefficients, 1.0, mean_grams_per_kwh)
        * duration.as_secs_f64()
        / 3600.0
}

#[cfg(test)]
mod tests;
