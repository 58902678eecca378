//! Deferral: when should a pod that may wait for greener power start?
//!
//! A pod opts in with the scheduling gate [`GATE`] and the annotation
//! [`LATEST_START`] or [`MAX_DELAY`] (optionally [`DURATION`] and [`ZONE`]). The leader holds it
//! while the forecast shows a cheaper start before its latest start, and
//! releases it (removes only our gate) when now is the cheapest start, at the
//! latest start, or at once when it cannot plan (no fresh forecast, invalid
//! annotation): never later, and availability wins.
//!
//! The choice itself is [`cheapest_start`], the very function the simulator's
//! forecast-aware deferral policy and its oracle call
//! (`simulator::plan` re-exports it). The live side only turns a CarbonScore's
//! current value and forecast points into the uniform series that function
//! expects ([`decide`]); [`controller`] is the leader's loop around it.

pub mod controller;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::carbon::GridZone;
use crate::crd::CarbonScoreStatus;

/// The scheduling gate that holds a pod for carbon-kube.
pub const GATE: &str = "carbon-kube.io/defer";
/// RFC 3339 time by which the pod must have been released.
pub const LATEST_START: &str = "carbon-kube.io/latest-start";
/// Longest wait from the pod's creation (`6h`): a latest start for pod templates
/// (Jobs, CronJobs) that cannot name a time. With both, the earlier wins.
pub const MAX_DELAY: &str = "carbon-kube.io/max-delay";
/// How long the pod runs (`90m`, `2h`, `1h30m`); the window the forecast is averaged over.
pub const DURATION: &str = "carbon-kube.io/duration";
/// Grid zone whose forecast to plan on (else the pod's node selector, else the cluster's).
pub const ZONE: &str = "carbon-kube.io/zone";
/// What a pod without [`DURATION`] is assumed to run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// Longest accepted [`DURATION`]: beyond a week the forecast says nothing useful.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Resolution of the live plan: a release lands within a step of the planned start.
pub const STEP: Duration = Duration::from_secs(60);

// ---- The policy shared with the simulator --------------------------------

/// Running totals of a series, so any window's sum is two lookups.
#[derive(Debug, Clone)]
pub struct Prefix(Vec<f64>);

impl Prefix {
    pub fn new(values: &[f64]) -> Self {
        let mut sums = Vec::with_capacity(values.len() + 1);
        sums.push(0.0);
        let mut total = 0.0;
        for v in values {
            total += v;
            sums.push(total);
        }
        Self(sums)
    }

    pub fn len(&self) -> usize {
        self.0.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn window(&self, start: usize, len: usize) -> f64 {
        self.0[start + len] - self.0[start]
    }
}

/// The start in `earliest..=latest` with the lowest total over `duration`
/// (earliest on ties), kept inside the series; and that total.
///
/// The one deferral policy: the simulator plans with it on (noisy) traces,
/// the leader on CarbonScore forecasts.
pub fn cheapest_start(
    prefix: &Prefix,
    earliest: usize,
    latest: usize,
    duration: usize,
) -> (usize, f64) {
    let last = latest
        .min(prefix.len().saturating_sub(duration))
        .max(earliest);
    let mut best = (earliest, f64::INFINITY);
    for start in earliest..=last {
        let total = prefix.window(start, duration.min(prefix.len() - start));
        if total < best.1 {
            best = (start, total);
        }
    }
    best
}

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

/// `45s`, `90m`, `2h`, `1h30m`, `1d`; more than zero and at most a week.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HOW: &str = "is not a duration like 90m, 2h or 1h30m";
    let text = text.trim();
    let mut seconds = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(HOW.into()),
        };
        let value: u64 = number.parse().map_err(|_| HOW.to_string())?;
        seconds = value
            .checked_mul(unit)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(|| HOW.to_string())?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(HOW.into());
    }
    let duration = Duration::from_secs(seconds);
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    if duration > MAX_DURATION {
        return Err("is longer than a week".into());
    }
    Ok(duration)
}

// ---- What the forecast says --------------------------------------------------

/// One zone's intensity from now on: the measured value until the first
/// forecast point after it, then each point until the next, up to the end of
/// the last point's interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSeries {
    pub current: f64,
    pub observed_at: Timestamp,
    /// Ascending, all after `observed_at`.
    pub points: Vec<(Timestamp, f64)>,
}

impl ZoneSeries {
    pub fn from_status(status: &CarbonScoreStatus) -> Option<Self> {
        let observed_at = status.observed_at.as_ref()?.0;
        let mut points: Vec<(Timestamp, f64)> = status
            .forecast
            .iter()
            .filter(|p| p.at.0 > observed_at && p.grams_per_kwh.is_finite())
            .map(|p| (p.at.0, p.grams_per_kwh))
            .collect();
        points.sort_by_key(|p| p.0);
        Some(Self {
            current: status.intensity_grams_per_kwh,
            observed_at,
            points,
        })
    }

    /// The end of the forecast: the last point plus the spacing before it (an hour for a lone point).
    pub fn horizon(&self) -> Timestamp {
        match self.points.as_slice() {
            [] => self.observed_at,
            [.., (before, _), (last, _)] => *last + last.duration_since(*before),
            [(last, _)] => *last + SignedDuration::from_hours(1),
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

/// What a pod's plan is made on: one zone, or several weighted by their node counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Human-readable, for events: `zone DE` or `the cluster (DE, FR)`.
    pub scope: String,
    parts: Vec<(f64, ZoneSeries)>,
}

impl Forecast {
    pub fn zone(zone: &GridZone, series: ZoneSeries) -> Self {
        Self {
            scope: format!("zone {zone}"),
            parts: vec![(1.0, series)],
        }
    }

    fn horizon(&self) -> Timestamp {
        self.parts
            .iter()
            .map(|(_, s)| s.horizon())
            .min()
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn value_at(&self, at: Timestamp) -> Option<f64> {
        let mut total = 0.0;
        let mut weights = 0.0;
        for (weight, series) in &self.parts {
            total += weight * series.value_at(at)?;
            weights += weight;
        }
        (weights > 0.0).then(|| total / weights)
    }
}

/// The forecast to plan on: the zone asked for, or, without one, the
/// node-weighted mean of every zone with nodes and a fresh forecast (the
/// intensity a pod sees on average wherever the scheduler puts it). The error
/// says why there is none, for the pod's event.
pub fn forecast_for(
    zone: Option<&GridZone>,
    scores: &[(GridZone, CarbonScoreStatus)],
    now: Timestamp,
    max_age: Duration,
) -> Result<Forecast, String> {
    let usable = |zone: &GridZone, status: &CarbonScoreStatus| -> Result<ZoneSeries, String> {
        let series = ZoneSeries::from_status(status)
            .ok_or_else(|| format!("zone {zone} has no carbon data yet"))?;
        let age = now.duration_since(series.observed_at);
        if age > SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX) {
            return Err(format!(
                "the carbon data of zone {zone} is {} min old (more than {} min)",
                age.as_secs() / 60,
                max_age.as_secs() / 60
            ));
        }
        if series.points.is_empty() || series.horizon() <= now {
            return Err(format!(
                "zone {zone} has no forecast (source {})",
                status.source
            ));
        }
        Ok(series)
    };
    match zone {
        Some(zone) => {
            let (_, status) = scores
                .iter()
                .find(|(z, _)| z == zone)
                .ok_or_else(|| format!("no CarbonScore for zone {zone}"))?;
            Ok(Forecast::zone(zone, usable(zone, status)?))
        }
        None => {
            let mut parts = Vec::new();
            let mut names = Vec::new();
            let mut why = Vec::new();
            for (zone, status) in scores.iter().filter(|(_, s)| s.nodes > 0) {
                match usable(zone, status) {
                    Ok(series) => {
                        parts.push((f64::from(status.nodes), series));
                        names.push(zone.to_string());
                    }
                    Err(e) => why.push(e),
                }
            }
            if parts.is_empty() {
                why.insert(0, "no zone with nodes has a fresh forecast".into());
                return Err(why.join("; "));
            }
            Ok(Forecast {
                scope: format!("the cluster ({})", names.join(", ")),
                parts,
            })
        }
    }
}

// ---- The decision ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Wait: a later start is cheaper.
    Hold(Plan),
    /// Remove the gate now.
    Release(Release),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// When the pod is expected to be released.
    pub start_at: Timestamp,
    /// Mean forecast intensity over the pod's duration if it started now, and at `start_at`.
    pub now_mean: f64,
    pub best_mean: f64,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Now is the cheapest start within the window. `now_mean` as in [`Plan`].
    Greenest { now_mean: f64, scope: String },
    /// The latest start has come (or passed).
    LatestStart { now_mean: Option<f64> },
    /// No fresh forecast to plan on: availability wins.
    NoForecast(String),
    /// The annotations cannot be read.
    Invalid(String),
}

impl Release {
    /// A bounded label value for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Release::Greenest { .. } => "greenest_now",
            Release::LatestStart { .. } => "latest_start",
            Release::NoForecast(_) => "no_forecast",
            Release::Invalid(_) => "invalid",
        }
    }

    /// Mean intensity over the pod's run from now, where known.
    pub fn now_mean(&self) -> Option<f64> {
        match self {
            Release::Greenest { now_mean, .. } => Some(*now_mean),
            Release::LatestStart { now_mean } => *now_mean,
            _ => None,
        }
    }
}

/// Whether to release a pod now. The forecast is sampled every [`STEP`] on a
/// grid that ends exactly at the latest start, so the last candidate start is
/// the latest start itself; [`cheapest_start`] then picks the start, and the
/// pod is released when that is the slot we are in.
pub fn decide(now: Timestamp, request: &Request, forecast: Result<&Forecast, &str>) -> Decision {
    let step = STEP.as_secs() as i64;
    let to_latest = request.latest_start.as_second() - now.as_second();
    let now_mean = |forecast: &Forecast| {
        let slots = request.duration.as_secs().div_ceil(STEP.as_secs()).max(1) as i64;
        let values: Vec<f64> = (0..slots)
            .map_while(|k| forecast.value_at(now + SignedDuration::from_secs(k * step)))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    if request.latest_start <= now {
        return Decision::Release(Release::LatestStart {
            now_mean: forecast.ok().and_then(now_mean),
        });
    }
    let forecast = match forecast {
        Ok(forecast) => forecast,
        Err(why) => return Decision::Release(Release::NoForecast(why.to_string())),
    };
    // Slot j starts at latest − (J − j)·step: slot 0 holds now, slot J is the latest start.
    let latest = (to_latest.max(0) as u64).div_ceil(STEP.as_secs()) as usize;
    let duration = request.duration.as_secs().div_ceil(STEP.as_secs()).max(1) as usize;
    let horizon = forecast.horizon();
    let mut values = Vec::with_capacity((latest + duration).min(1 << 16));
    for j in 0..latest + duration {
        let start =
            request.latest_start - SignedDuration::from_secs((latest as i64 - j as i64) * step);
        if start >= horizon {
            break;
        }
        match forecast.value_at(start.max(now)) {
            Some(value) => values.push(value),
            None => break,
        }
    }
    if values.is_empty() {
        return Decision::Release(Release::NoForecast(format!(
            "the forecast of {} ends before now",
            forecast.scope
        )));
    }
    let prefix = Prefix::new(&values);
    let (start, total) = cheapest_start(&prefix, 0, latest, duration);
    let slots = duration.min(prefix.len()) as f64;
    let now_mean = prefix.window(0, duration.min(prefix.len())) / slots;
    if start == 0 {
        return Decision::Release(Release::Greenest {
            now_mean,
            scope: forecast.scope.clone(),
        });
    }
    let start_at = request.latest_start - SignedDuration::from_secs((latest - start) as i64 * step);
    Decision::Hold(Plan {
        start_at,
        now_mean,
        best_mean: total / duration.min(prefix.len() - start) as f64,
        scope: forecast.scope.clone(),
    })
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

/// CPU a pod requests, in vCPUs (containers' requests, else limits); at least
/// one millicore so that a pod that requests nothing is not estimated at zero.
pub fn requested_vcpus(pod: &k8s_openapi::api::core::v1::Pod) -> f64 {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    let total: f64 = containers
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let resources = c.resources.as_ref()?;
            let cpu = resources
                .requests
                .as_ref()
                .and_then(|r| r.get("cpu"))
                .or_else(|| resources.limits.as_ref().and_then(|l| l.get("cpu")))?;
            parse_cpu(&cpu.0)
        })
        .sum();
    if total > 0.0 { total } else { 1.0 }
}

/// `500m` → 0.5, `2` → 2.0, `1.5` → 1.5.
pub fn parse_cpu(text: &str) -> Option<f64> {
    let text = text.trim();
    let value = match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => text.parse::<f64>().ok()?,
    };
    (value.is_finite() && value >= 0.0).then_some(value)
}

#[cfg(test)]
mod tests;
