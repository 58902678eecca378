//! The capacity-aware deferral planner: when and where each waiting pod
//! should start, so that deferred work fills the cheapest forecast hours
//! without piling onto the same ones.
//!
//! Pure: no Kubernetes types, no clock, no I/O. The leader's deferral
//! controller and the simulator's deferral policy call the same [`plan`] on
//! every poll with the newest forecast, and act on its answer (release now,
//! or keep holding).
//!
//! Time is counted in slots of the forecast's step from now (slot 0 is now).
//! Per zone and slot a [`Ledger`] keeps the vCPUs deferred work may still
//! take: the CPU that non-deferred work is expected to leave free, times
//! `1 − headroom`, less deferred work already running or booked. Waiting pods
//! are booked earliest deadline first, each at the cheapest window (zone and
//! start) that still has room, never within the last `margin` of its window;
//! a pod is held only when the forecast gain beats `k·σ` of the forecast
//! error, and released at once when its slack is below margin plus the
//! expected wait from release to start. Nothing here can hold a pod past its
//! latest start: slot 0 is always a release.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

mod ledger;
pub use ledger::{Ledger, RigidLoad, ZoneCapacity};

/// The planner's knobs, also what a tuner may move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannerParams {
    /// Share of the free CPU that deferred work never books, kept for
    /// non-deferred arrivals the load profile did not foresee (0 ≤ h < 1).
    pub headroom: f64,
    /// The last part of every pod's window that is never booked: a safety
    /// margin against forecast error and late starts.
    pub margin: Duration,
    /// A pod is held only when the forecast gain exceeds `k_sigma` × σ of the
    /// forecast error at the planned start's horizon.
    pub k_sigma: f64,
}

impl Default for PlannerParams {
    /// Reasoned, not fitted to a year: a fifth of the free CPU kept for
    /// surprises; two hours of margin, about twice the one-hour scheduling
    /// grain of the hourly traces and forecasts; one σ, so a hold is a bet the
    /// forecast wins about five times in six.
    fn default() -> Self {
        Self {
            headroom: 0.2,
            margin: Duration::from_secs(2 * 3600),
            k_sigma: 1.0,
        }
    }
}

impl PlannerParams {
    /// The flag's name and the reason, for configuration errors.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.headroom.is_finite() && (0.0..1.0).contains(&self.headroom)) {
            return Err((
                "deferral-headroom",
                format!("{} must be at least 0 and below 1", self.headroom),
            ));
        }
        if !(self.k_sigma.is_finite() && self.k_sigma >= 0.0) {
            return Err((
                "deferral-k-sigma",
                format!("{} must be a number of at least 0", self.k_sigma),
            ));
        }
        Ok(())
    }

    /// The margin in whole slots of `step` (rounded up: never less margin than asked).
    pub fn margin_slots(&self, step: Duration) -> usize {
        slots(self.margin, step)
    }
}

/// `duration` in whole slots of `step`, rounded up.
pub fn slots(duration: Duration, step: Duration) -> usize {
    let step = step.as_secs_f64().max(1e-9);
    (duration.as_secs_f64() / step - 1e-9).ceil().max(0.0) as usize
}

/// Monday 00:00 UTC is 0, Sunday 23:00 UTC is 167.
pub fn hour_of_week(at: Timestamp) -> usize {
    let zoned = at.to_zoned(TimeZone::UTC);
    zoned.weekday().to_monday_zero_offset() as usize * 24 + zoned.hour() as usize
}

// ---- The plan -------------------------------------------------------------

/// A zone's forecast as seen now.
#[derive(Debug, Clone, Copy)]
pub struct ZoneForecast<'a> {
    /// Intensity per slot from now (slot 0 = now), g/kWh; its length is the horizon.
    pub grams_per_kwh: &'a [f64],
    /// σ of the forecast error per slot of horizon, g/kWh (the last value
    /// holds beyond its end).
    pub sigma: &'a [f64],
}

impl ZoneForecast<'_> {
    fn sigma_at(&self, horizon: usize) -> f64 {
        self.sigma
            .get(horizon)
            .or(self.sigma.last())
            .copied()
            .unwrap_or(0.0)
    }
}

/// A pod waiting for its start.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub vcpus: f64,
    /// Run length in slots (at least 1).
    pub duration: usize,
    /// Slots from now to its latest start; 0 when it has come or passed.
    pub latest_start: usize,
    /// Zones it may run in (indices into the forecasts and the ledger).
    pub zones: Vec<usize>,
}

/// Why a pod goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Now is the cheapest start that has room.
    Greenest,
    /// A later start is cheaper, but by no more than the forecast's error.
    GainWithinError,
    /// Its slack is below the margin plus the expected wait (or its latest start has come).
    Deadline,
    /// No window before the margin has room: waiting would only risk the deadline.
    NoRoom,
}

impl ReleaseReason {
    /// A bounded label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Greenest => "greenest_now",
            Self::GainWithinError => "gain_within_error",
            Self::Deadline => "deadline",
            Self::NoRoom => "no_room",
        }
    }
}

/// The plan for one pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Remove the gate now. `zone`: where it was booked (the cheapest zone
    /// with room now), `None` when no zone had room.
    Release {
        zone: Option<usize>,
        reason: ReleaseReason,
        /// Mean forecast intensity over the run if started now, where known.
        now_mean: Option<f64>,
    },
    /// Keep holding: booked at `start` slots from now in `zone`.
    Hold {
        zone: usize,
        start: usize,
        /// Mean forecast intensity over the run starting now (cheapest zone) and as booked.
        now_mean: f64,
        planned_mean: f64,
    },
}

/// The cheapest window of one pod: (zone, start, mean intensity).
type Window = (usize, usize, f64);

/// Plans every waiting pod against the ledger, earliest deadline first; the
/// answer is in `waiting`'s order. `expected_wait` is how long a released pod
/// is expected to wait for its start, in slots. Callers release the pods whose
/// answer is [`Step::Release`], in [`release_order`].
pub fn plan(
    params: &PlannerParams,
    step: Duration,
    expected_wait: f64,
    forecasts: &[ZoneForecast],
    ledger: &mut Ledger,
    waiting: &[Waiting],
) -> Vec<Step> {
    let margin = params.margin_slots(step);
    let wait = expected_wait.max(0.0).ceil() as usize;
    let mut out = vec![None; waiting.len()];
    for index in release_order(waiting) {
        let pod = &waiting[index];
        let duration = pod.duration.max(1);
        let mean = |zone: usize, start: usize| -> Option<f64> {
            let series = forecasts.get(zone)?.grams_per_kwh;
            let end = (start + duration).min(series.len());
            (start < end).then(|| series[start..end].iter().sum::<f64>() / (end - start) as f64)
        };
        // Starting now: the cheapest zone with room, else the cheapest zone.
        let mut now_fits: Option<(usize, f64)> = None;
        let mut now_any: Option<f64> = None;
        for &zone in &pod.zones {
            let Some(m) = mean(zone, 0) else { continue };
            now_any = Some(now_any.map_or(m, |a: f64| a.min(m)));
            let fits = zone < ledger.room.len() && ledger.fits(zone, 0, duration, pod.vcpus)[0];
            if fits && now_fits.is_none_or(|(_, best)| m < best) {
                now_fits = Some((zone, m));
            }
        }
        let release = |ledger: &mut Ledger, reason| {
            if let Some((zone, _)) = now_fits {
                ledger.book(zone, 0, duration, pod.vcpus);
            }
            Step::Release {
                zone: now_fits.map(|(z, _)| z),
                reason,
                now_mean: now_fits.map(|(_, m)| m).or(now_any),
            }
        };
        if pod.latest_start < margin + wait || pod.latest_start == 0 {
            out[index] = Some(release(ledger, ReleaseReason::Deadline));
            continue;
        }
        let last = pod.latest_start - margin;
        let Some((zone, start, planned)) = cheapest_window(forecasts, ledger, pod, last, &mean)
        else {
            out[index] = Some(release(ledger, ReleaseReason::NoRoom));
            continue;
        };
        let now_mean = now_fits.map(|(_, m)| m).or(now_any).unwrap_or(planned);
        let gain = now_mean - planned;
        let noise = params.k_sigma * forecasts[zone].sigma_at(start);
        if start == 0 {
            out[index] = Some(release(ledger, ReleaseReason::Greenest));
        } else if gain <= noise && now_fits.is_some() {
            out[index] = Some(release(ledger, ReleaseReason::GainWithinError));
        } else {
            ledger.book(zone, start, duration, pod.vcpus);
            out[index] = Some(Step::Hold {
                zone,
                start,
                now_mean,
                planned_mean: planned,
            });
        }
    }
    out.into_iter()
        .map(|s| s.expect("every pod planned"))
        .collect()
}

/// Earliest latest start first; ties keep the callers' order (their arrival).
pub fn release_order(waiting: &[Waiting]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&i| (waiting[i].latest_start, i));
    order
}

/// The window with the lowest mean forecast (earliest, then first zone, on
/// ties) whose start is at most `last`, that lies within the forecast (a start
/// now may run past its end) and has room.
fn cheapest_window(
    forecasts: &[ZoneForecast],
    ledger: &Ledger,
    pod: &Waiting,
    last: usize,
    mean: &impl Fn(usize, usize) -> Option<f64>,
) -> Option<Window> {
    let duration = pod.duration.max(1);
    let mut best: Option<Window> = None;
    for &zone in &pod.zones {
        let Some(forecast) = forecasts.get(zone) else {
            continue;
        };
        if zone >= ledger.room.len() {
            continue;
        }
        let horizon = forecast.grams_per_kwh.len().min(ledger.slots());
        let last = last.min(horizon.saturating_sub(duration));
        let fits = ledger.fits(zone, last, duration, pod.vcpus);
        for (start, fits) in fits.into_iter().enumerate() {
            if !fits {
                continue;
            }
            let Some(m) = mean(zone, start) else { continue };
            let better = best.is_none_or(|(_, s, b)| m < b - 1e-9 || (m <= b + 1e-9 && start < s));
            if better {
                best = Some((zone, start, m));
            }
        }
    }
    best
}

/// Expected wait from release to start, a running mean over recent releases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExpectedWait {
    mean: f64,
    seen: u32,
}

impl ExpectedWait {
    /// Releases the running mean remembers.
    const MEMORY: u32 = 50;

    pub fn observe(&mut self, waited: f64) {
        if !waited.is_finite() {
            return;
        }
        self.seen = (self.seen + 1).min(Self::MEMORY);
        self.mean += (waited.max(0.0) - self.mean) / f64::from(self.seen);
    }

    pub fn get(&self) -> f64 {
        self.mean
    }
}

#[cfg(test)]
mod tests;
