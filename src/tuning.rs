//! The leader's use of the threshold tuner: one learner per zone, stepped once
//! per poll, its state kept in the zone's CarbonScore so that a new leader
//! continues where the last one stopped. The learner itself (`tuner.rs`) is
//! the one the simulator evaluates.
//!
//! Off by default (`--tuner`): in the simulator it does not beat a static
//! threshold chosen in hindsight (see the README).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::warn;

use crate::budget::ZoneLoad;
use crate::carbon::GridZone;
use crate::node::TAINT_KEY;
use crate::resources::pod_cpu_request;
use crate::tuner::{Observation, Tuner, TunerParams, TunerState};

/// Pods the scheduler could not place because of the carbon taint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pending {
    pub held_by_taint: usize,
    pub held_vcpus: f64,
    pub pending_total: usize,
}

/// One zone's step.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    pub threshold_grams_per_kwh: f64,
    /// Serialised [`TunerState`], stored in the CarbonScore status.
    pub state: String,
    pub reward: Option<f64>,
    pub action: Option<&'static str>,
}

/// Steps the tuner of every zone that has a live reading.
///
/// The leader does not see node power, so a zone's emissions are estimated as
/// nodes × intensity × interval (a node-kW proxy): the tuner divides its cost
/// by a running scale, so only relative changes matter.
pub fn step_zones(
    params: &TunerParams,
    loads: &[ZoneLoad],
    saved: &BTreeMap<GridZone, String>,
    pending: Pending,
    interval: Duration,
) -> BTreeMap<GridZone, Tuned> {
    let hours = interval.as_secs_f64() / 3600.0;
    let (weighted, nodes) = loads
        .iter()
        .filter_map(|l| {
            l.grams_per_kwh
                .map(|g| (g * l.nodes as f64, l.nodes as f64))
        })
        .fold((0.0, 0.0), |(g, n), (lg, ln)| (g + lg, n + ln));
    if nodes == 0.0 {
        return BTreeMap::new();
    }
    let cluster_grams_per_kwh = weighted / nodes;
    let pending_share = pending.held_by_taint as f64 / pending.pending_total.max(1) as f64;
    let mut out = BTreeMap::new();
    for load in loads {
        let Some(grams_per_kwh) = load.grams_per_kwh else {
            continue;
        };
        let mut tuner = saved
            .get(&load.zone)
            .and_then(|json| serde_json::from_str::<TunerState>(json).ok())
            .and_then(|state| Tuner::from_state(params.clone(), state).ok())
            .unwrap_or_else(|| Tuner::new(params.clone()));
        let threshold = tuner.step(&Observation {
            grams_per_kwh,
            cluster_grams_per_kwh,
            emitted_grams: load.nodes as f64 * grams_per_kwh * hours,
            delayed_vcpu_hours: pending.held_vcpus * hours,
            pending_share,
        });
        let Ok(state) = serde_json::to_string(tuner.state()) else {
            continue;
        };
        out.insert(
            load.zone.clone(),
            Tuned {
                threshold_grams_per_kwh: threshold,
                state,
                reward: tuner.state().last_reward,
                action: tuner.last_action(),
            },
        );
    }
    out
}

/// Counts pending pods whose scheduling failed on the carbon taint. Needs
/// `pods list`; without it the tuner sees no delay (and says so once per poll).
pub async fn pending(client: &Client) -> Pending {
    let pods: Api<Pod> = Api::all(client.clone());
    let listed = match pods
        .list(&ListParams::default().fields("status.phase=Pending"))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "cannot list pending pods; the tuner sees no delay");
            return Pending::default();
        }
    };
    let mut out = Pending {
        pending_total: listed.len(),
        ..Pending::default()
    };
    for pod in &listed {
        let held = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.message.as_deref().is_some_and(|m| m.contains(TAINT_KEY))
                })
            });
        if held {
            out.held_by_taint += 1;
            out.held_vcpus += pod_cpu_request(pod);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(zone: &str, nodes: usize, grams_per_kwh: Option<f64>) -> ZoneLoad {
        ZoneLoad::for_tests(zone, nodes, grams_per_kwh)
    }

    #[test]
    fn zones_without_live_data_are_not_stepped() {
        let loads = [load("DE", 2, Some(450.0)), load("FR", 2, None)];
        let tuned = step_zones(
            &TunerParams::default(),
            &loads,
            &BTreeMap::new(),
            Pending::default(),
            Duration::from_secs(300),
        );
        assert_eq!(tuned.len(), 1);
        let de = &tuned[&GridZone::parse("DE").unwrap()];
        assert!(de.state.contains("\"steps\":1"));
        assert!(de.action.is_some());
    }

    #[test]
    fn a_saved_state_is_continued_not_restarted() {
        let loads = [load("DE", 2, Some(450.0)), load("FR", 2, Some(60.0))];
        let params = TunerParams::default();
        let interval = Duration::from_secs(300);
        let first = step_zones(
            &params,
            &loads,
            &BTreeMap::new(),
            Pending::default(),
            interval,
        );
        let saved: BTreeMap<GridZone, String> = first
            .iter()
            .map(|(z, t)| (z.clone(), t.state.clone()))
            .collect();
        let second = step_zones(&params, &loads, &saved, Pending::default(), interval);
        let state: TunerState =
            serde_json::from_str(&second[&GridZone::parse("DE").unwrap()].state).unwrap();
        assert_eq!(state.steps, 2);

        // The same two steps in one learner give the same state: nothing lost in the round trip.
        let mut direct = Tuner::new(params.clone());
        let observation = Observation {
            grams_per_kwh: 450.0,
            cluster_grams_per_kwh: 255.0,
            emitted_grams: 2.0 * 450.0 * (300.0 / 3600.0),
            delayed_vcpu_hours: 0.0,
            pending_share: 0.0,
        };
        direct.step(&observation);
        direct.step(&observation);
        assert_eq!(direct.state(), &state);
    }

    #[test]
    fn a_corrupt_saved_state_starts_afresh() {
        let loads = [load("DE", 1, Some(450.0))];
        let saved = BTreeMap::from([(GridZone::parse("DE").unwrap(), "{not json".to_string())]);
        let tuned = step_zones(
            &TunerParams::default(),
            &loads,
            &saved,
            Pending::default(),
            Duration::from_secs(300),
        );
        assert!(
            tuned[&GridZone::parse("DE").unwrap()]
                .state
                .contains("\"steps\":1")
        );
    }
}
