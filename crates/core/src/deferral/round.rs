//! One planning round of the leader, pure: the cluster as the controller saw
//! it (zones with their forecast and free CPU, the gated pods) in, a
//! decision per pod out, made by the shared [`planner`].
//!
//! Slots run from now in steps of the forecast's spacing, at most
//! [`MAX_STEP`], so a release lands within a slot of its planned start and
//! never after the latest start (a pod whose latest start is less than a
//! slot away is released).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{MAX_STEP, Request, ZoneSeries};
use crate::carbon::GridZone;
use crate::planner::{
    self, Ledger, PlannerParams, ReleaseReason, RigidLoad, Step, Waiting, ZoneCapacity,
    ZoneForecast, hour_of_week,
};

/// Longest plan: a week's latest start plus a week's run.
const MAX_PLAN: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundSettings {
    pub planner: PlannerParams,
    /// σ of the forecast error as a fraction of the zone's forecast mean.
    pub forecast_error: f64,
}

/// One zone as the leader sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneState {
    pub zone: GridZone,
    /// Allocatable CPU of its schedulable nodes, vCPUs.
    pub allocatable: f64,
    /// CPU requested by the pods bound to its nodes, vCPUs.
    pub requested: f64,
    /// Deferred pods running there: when they are expected to end, and their vCPUs.
    pub deferred: Vec<(Timestamp, f64)>,
    /// The forecast, or why there is none to plan on.
    pub forecast: Result<ZoneSeries, String>,
}

/// A gated pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub request: Request,
    pub vcpus: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep the gate: booked at `start_at` in `zone`.
    Hold {
        start_at: Timestamp,
        zone: GridZone,
        /// Mean forecast intensity over the run, starting now and as booked.
        now_mean: f64,
        planned_mean: f64,
    },
    /// Remove the gate now, as planned (`zone`: where it was booked, if anywhere).
    Release {
        reason: ReleaseReason,
        zone: Option<GridZone>,
        now_mean: Option<f64>,
    },
    /// Remove the gate now: no usable forecast for any zone it may run in.
    NoForecast(String),
}

/// What one zone's ledger holds after the round.
#[derive(Debug, Clone, PartialEq)]
pub struct Booked {
    pub zone: GridZone,
    /// Most vCPUs booked by held or just released pods in any slot.
    pub peak_vcpus: f64,
    /// vCPUs deferred work may still take now.
    pub room_now_vcpus: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// One per ask, in the asks' order.
    pub decisions: Vec<Decision>,
    /// The asks to release, earliest deadline first.
    pub release_order: Vec<usize>,
    pub step: Duration,
    pub booked: Vec<Booked>,
}

/// The planning slot: the finest forecast spacing among the zones, at most [`MAX_STEP`].
fn step_of(zones: &[ZoneState]) -> Duration {
    zones
        .iter()
        .filter_map(|z| z.forecast.as_ref().ok())
        .map(|s| Duration::try_from(s.spacing()).unwrap_or(MAX_STEP))
        .chain(std::iter::once(MAX_STEP))
        .min()
        .unwrap_or(MAX_STEP)
        .max(Duration::from_secs(1))
}

/// Whole slots from `now` to `at`, rounded down (0 when `at` has passed).
fn slots_until(now: Timestamp, at: Timestamp, step: Duration) -> usize {
    let seconds = at.duration_since(now).as_secs_f64().max(0.0);
    (seconds / step.as_secs_f64()).floor() as usize
}

/// Plans every gated pod. `rigid` learns the zones' non-deferred load (by
/// zone index, in `zones`' order) from this round; `expected_wait` is how
/// long released pods have recently waited to be bound.
pub fn plan_round(
    settings: &RoundSettings,
    now: Timestamp,
    zones: &[ZoneState],
    asks: &[Ask],
    rigid: &mut RigidLoad,
    expected_wait: Duration,
) -> Round {
    let step = step_of(zones);
    let at = |k: usize| now + SignedDuration::from_secs_f64(k as f64 * step.as_secs_f64());
    // Zones each pod may run in, or why it cannot be planned.
    let allowed: Vec<Result<Vec<usize>, String>> = asks
        .iter()
        .map(|ask| match &ask.request.zone {
            Some(zone) => {
                let index = zones
                    .iter()
                    .position(|z| &z.zone == zone)
                    .ok_or_else(|| format!("no CarbonScore for zone {zone}"))?;
                zones[index].forecast.as_ref().map_err(String::clone)?;
                Ok(vec![index])
            }
            None => {
                let with_nodes: Vec<usize> = (0..zones.len())
                    .filter(|&i| zones[i].allocatable > 0.0)
                    .collect();
                let usable: Vec<usize> = with_nodes
                    .iter()
                    .copied()
                    .filter(|&i| zones[i].forecast.is_ok())
                    .collect();
                if usable.is_empty() {
                    let mut why = vec!["no zone with nodes has a usable forecast".to_string()];
                    why.extend(
                        with_nodes
                            .iter()
                            .filter_map(|&i| zones[i].forecast.as_ref().err().cloned()),
                    );
                    return Err(why.join("; "));
                }
                Ok(usable)
            }
        })
        .collect();
    let max_slots = planner::slots(MAX_PLAN, step);
    let waiting: Vec<(usize, Waiting)> = asks
        .iter()
        .zip(&allowed)
        .enumerate()
        .filter_map(|(i, (ask, zones))| {
            let zones = zones.as_ref().ok()?.clone();
            Some((
                i,
                Waiting {
                    vcpus: ask.vcpus,
                    duration: planner::slots(ask.request.duration, step).max(1),
                    latest_start: slots_until(now, ask.request.latest_start, step),
                    zones,
                },
            ))
        })
        .collect();
    let horizon = waiting
        .iter()
        .map(|(_, w)| w.latest_start + w.duration)
        .max()
        .unwrap_or(1)
        .clamp(1, max_slots);
    // What the zones offer, and what they are forecast to cost.
    let hour_now = hour_of_week(now);
    let into_hour = (now.as_second().rem_euclid(3600)) as f64;
    let capacity: Vec<ZoneCapacity> = zones
        .iter()
        .enumerate()
        .map(|(z, state)| {
            let deferred_running: Vec<f64> = (0..horizon)
                .map(|k| {
                    let t = at(k);
                    state
                        .deferred
                        .iter()
                        .filter(|(end, _)| k == 0 || *end > t)
                        .map(|(_, v)| v)
                        .sum()
                })
                .collect();
            let rigid_now = (state.requested - deferred_running[0]).max(0.0);
            rigid.observe(z, hour_now, rigid_now);
            let rigid_load = (0..horizon)
                .map(|k| match k {
                    0 => rigid_now,
                    _ => {
                        let hours = ((into_hour + k as f64 * step.as_secs_f64()) / 3600.0) as usize;
                        rigid
                            .expected(z, (hour_now + hours) % 168)
                            .unwrap_or(rigid_now)
                    }
                })
                .collect();
            ZoneCapacity {
                allocatable: state.allocatable,
                rigid: rigid_load,
                deferred_running,
            }
        })
        .collect();
    let values: Vec<Vec<f64>> = zones
        .iter()
        .map(|state| match &state.forecast {
            Ok(series) => (0..horizon).map_while(|k| series.value_at(at(k))).collect(),
            Err(_) => Vec::new(),
        })
        .collect();
    let sigma: Vec<[f64; 1]> = values
        .iter()
        .map(|v| [settings.forecast_error * v.iter().sum::<f64>() / v.len().max(1) as f64])
        .collect();
    let forecasts: Vec<ZoneForecast> = values
        .iter()
        .zip(&sigma)
        .map(|(v, s)| ZoneForecast {
            grams_per_kwh: v,
            sigma: s,
        })
        .collect();
    let mut ledger = Ledger::new(&settings.planner, &capacity, horizon);
    let pods: Vec<Waiting> = waiting.iter().map(|(_, w)| w.clone()).collect();
    let wait_slots = expected_wait.as_secs_f64() / step.as_secs_f64();
    let steps = planner::plan(
        &settings.planner,
        step,
        wait_slots,
        &forecasts,
        &mut ledger,
        &pods,
    );
    let mut decisions: Vec<Decision> = allowed
        .iter()
        .map(|a| Decision::NoForecast(a.as_ref().err().cloned().unwrap_or_default()))
        .collect();
    for ((i, _), step) in waiting.iter().zip(&steps) {
        decisions[*i] = match *step {
            Step::Hold {
                zone,
                start,
                now_mean,
                planned_mean,
            } => Decision::Hold {
                start_at: at(start),
                zone: zones[zone].zone.clone(),
                now_mean,
                planned_mean,
            },
            Step::Release {
                zone,
                reason,
                now_mean,
            } => Decision::Release {
                reason,
                zone: zone.map(|z| zones[z].zone.clone()),
                now_mean,
            },
        };
    }
    // Unplannable pods go first (availability wins), then the plan's releases by deadline.
    let mut release_order: Vec<usize> = (0..asks.len())
        .filter(|&i| matches!(decisions[i], Decision::NoForecast(_)))
        .collect();
    release_order.extend(
        planner::release_order(&pods)
            .into_iter()
            .map(|j| waiting[j].0)
            .filter(|&i| matches!(decisions[i], Decision::Release { .. })),
    );
    let booked = zones
        .iter()
        .enumerate()
        .map(|(z, state)| Booked {
            zone: state.zone.clone(),
            peak_vcpus: ledger.booked(z).iter().copied().fold(0.0, f64::max),
            room_now_vcpus: ledger.room(z).first().copied().unwrap_or(0.0).max(0.0),
        })
        .collect();
    Round {
        decisions,
        release_order,
        step,
        booked,
    }
}

#[cfg(test)]
mod tests;
