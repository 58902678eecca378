//! The leader's deferral loop: watch pods, nodes and CarbonScores, plan
//! every gated pod with [`plan_round`] (the shared planner), release the
//! ones it says, with an event on the pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::round::{Ask, Decision, RoundSettings, ZoneState, plan_round};
use super::{
    DURATION, GATE, LATEST_START, MAX_DELAY, Request, ZoneSeries, estimated_grams, parse_request,
};
use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::error::Error;
use crate::events::{PodEvents, pod_key};
use crate::metrics::Metrics;
use crate::planner::{ExpectedWait, ReleaseReason, RigidLoad};
use crate::power::PowerCoefficients;
use crate::resources::{node_allocatable_cpu, pod_cpu_request};
use crate::supervise::{ROUND_DEADLINE, bounded};
use crate::watches::{self, FailureLog};
use crate::zones;

mod capacity;
mod pods;
mod release;
pub use capacity::zone_capacity;
use pods::*;
pub use pods::{human, is_gated, is_terminal};

/// Re-plan at least this often, so a latest start is met without any event.
const TICK: Duration = Duration::from_secs(2);
const FIELD_MANAGER: &str = "carbon-kube-leader";
/// The watch may show a released pod's gate for a moment: do not release it twice.
const RELEASE_GRACE: Duration = Duration::from_secs(30);
/// Events and metrics name the component this way.
/// Weeks the learned non-deferred load per hour of week remembers.
const RIGID_MEMORY_WEEKS: u32 = 4;

#[derive(Debug, Clone)]
pub struct DeferralSettings {
    /// Carbon data older than this is not planned on (the pod is released).
    pub max_age: Duration,
    /// The planner's knobs and the forecast error it assumes.
    pub round: RoundSettings,
    /// Zone of nodes without a zone label or known region.
    pub default_zone: Option<GridZone>,
    /// This agent's identity, as the events' reporting instance.
    pub identity: String,
}

/// What the leader remembers of a pod it holds.
struct Held {
    /// Mean intensity over the pod's run had it started when first seen.
    first_now_mean: f64,
}

/// A pod this leader released a moment ago.
struct Released {
    at: Instant,
    /// Where it was booked: until bound, its CPU counts there.
    zone: Option<GridZone>,
    /// Its binding was seen (and its wait measured).
    bound: bool,
}

/// Why a pod (or a Kueue Workload's check) goes now, for its event and the metric.
pub enum Release {
    Planned {
        reason: ReleaseReason,
        zone: Option<GridZone>,
        now_mean: Option<f64>,
    },
    NoForecast(String),
    Invalid(String),
}

impl Release {
    /// A planned release in words: where it was booked, and the forecast over the
    /// run (empty for the other releases).
    pub(crate) fn planned_words(&self) -> (String, String) {
        let Release::Planned { zone, now_mean, .. } = self else {
            return (String::new(), String::new());
        };
        let zone_text = zone.as_ref().map_or_else(
            || "no zone has room now".to_string(),
            |z| format!("booked in zone {z}"),
        );
        let mean_text = now_mean.map_or(String::new(), |m| {
            format!(", {m:.0} gCO2/kWh forecast on average over the run")
        });
        (zone_text, mean_text)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Release::Planned { reason, .. } => reason.label(),
            Release::NoForecast(_) => "no_forecast",
            Release::Invalid(_) => "invalid",
        }
    }
}

pub struct Deferral {
    client: Client,
    metrics: Arc<Metrics>,
    settings: DeferralSettings,
    events: PodEvents,
    coefficients: PowerCoefficients,
    held: HashMap<String, Held>,
    /// Pods released recently, by uid.
    released: HashMap<String, Released>,
    rigid: Option<RigidLoad>,
    /// Zones in the order `rigid` knows them.
    rigid_zones: Vec<GridZone>,
    wait: ExpectedWait,
}

impl Drop for Deferral {
    /// A former leader holds nothing.
    fn drop(&mut self) {
        self.metrics.pods_deferred.set(0);
        self.metrics.set_deferral_ledger(&[]);
    }
}

/// Wakes the loop on every watch event, and logs failures quietly.
fn notify(
    tx: watch::Sender<()>,
    what: &'static str,
) -> impl FnMut(Result<(), watcher::Error>) -> futures::future::Ready<()> {
    let mut log = FailureLog::new(
        format!("deferral: {what}"),
        " (needs RBAC pods get/list/watch/patch and nodes list/watch, or --deferral=false)",
    );
    move |event| {
        log.see(&event);
        let _ = tx.send(());
        futures::future::ready(())
    }
}

impl Deferral {
    /// `coefficients` are the node's power model, for the grams-saved estimate.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: DeferralSettings,
        coefficients: PowerCoefficients,
    ) -> Self {
        let events = PodEvents::new(client.clone(), &settings.identity, "deferral");
        Self {
            client,
            metrics,
            settings,
            events,
            coefficients,
            held: HashMap::new(),
            released: HashMap::new(),
            rigid: None,
            rigid_zones: Vec::new(),
            wait: ExpectedWait::default(),
        }
    }

    /// Runs until dropped (the caller drops it on losing the Lease); the
    /// watches live inside this future and end with it.
    pub async fn run(mut self) {
        let (changed_tx, changed) = watch::channel(());
        // Every pod that holds or may hold CPU: gated ones, and those bound to nodes.
        let (pods, pod_events) = watches::cached(
            Api::<Pod>::all(self.client.clone()),
            watches::config().fields("status.phase!=Succeeded,status.phase!=Failed"),
        );
        let ((nodes, node_events), (scores, score_events)) =
            watches::nodes_and_scores(&self.client);
        let pod_watch = pod_events.for_each(notify(changed_tx.clone(), "pod"));
        let node_watch = node_events.for_each(notify(changed_tx.clone(), "node"));
        let score_watch = score_events.for_each(notify(changed_tx, "CarbonScore"));
        info!("deferral: planning pods gated by {GATE} into the greenest hours with room");
        let work = async {
            let mut rounds = watches::Rounds::new(TICK, changed);
            while rounds.next().await {
                if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err()
                {
                    return;
                }
                let metrics = self.metrics.clone();
                bounded(
                    "deferral",
                    ROUND_DEADLINE,
                    &metrics,
                    self.round(&pods, &nodes, &scores),
                )
                .await;
            }
        };
        tokio::select! {
            _ = pod_watch => {}
            _ = node_watch => {}
            _ = score_watch => {}
            _ = work => {}
        }
    }

    /// The zones as they are now: free CPU from the nodes and the pods bound to them.
    fn zones(
        &mut self,
        pods: &[Arc<Pod>],
        nodes: &Store<Node>,
        scores: &Store<CarbonScore>,
        now: Timestamp,
    ) -> Vec<ZoneState> {
        let (mut zones, zone_of_node) = zone_capacity(scores, nodes, &self.settings, now);
        for pod in pods.iter().filter(|p| !is_terminal(p)) {
            let uid = pod.uid().unwrap_or_default();
            // A pod we just released may still show the gate in the cache.
            if is_gated(pod) && !self.released.contains_key(&uid) {
                continue;
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
            let index = match node {
                Some(node) => zone_of_node.get(node).copied(),
                // Released by us and not bound yet: it will take the CPU it was booked for.
                None => self
                    .released
                    .get(&uid)
                    .and_then(|r| r.zone.as_ref())
                    .and_then(|zone| zones.iter().position(|z| &z.zone == zone)),
            };
            let Some(index) = index else {
                continue;
            };
            let vcpus = pod_cpu_request(pod);
            zones[index].requested += vcpus;
            if !is_deferrable(pod) {
                continue;
            }
            if let Some(released) = self
                .released
                .get_mut(&uid)
                .filter(|r| node.is_some() && !r.bound)
            {
                released.bound = true;
                self.wait.observe(released.at.elapsed().as_secs_f64());
            }
            let duration = pod
                .annotations()
                .get(DURATION)
                .and_then(|d| super::parse_duration(d).ok())
                .unwrap_or(super::DEFAULT_DURATION);
            let started = match node {
                Some(_) => bound_at(pod).unwrap_or(now),
                None => now,
            };
            let end = started + SignedDuration::try_from(duration).unwrap_or_default();
            zones[index].deferred.push((end, vcpus));
        }
        zones
    }

    /// One pass over every gated pod.
    async fn round(&mut self, pods: &Store<Pod>, nodes: &Store<Node>, scores: &Store<CarbonScore>) {
        let now = Timestamp::now();
        self.released
            .retain(|_, released| released.at.elapsed() < RELEASE_GRACE);
        let all = pods.state();
        let zones = self.zones(&all, nodes, scores, now);
        let names: Vec<GridZone> = zones.iter().map(|z| z.zone.clone()).collect();
        if self.rigid.is_none() || self.rigid_zones != names {
            // Observations per hour at this tick, for the load's memory in weeks.
            let per_hour = (3600 / TICK.as_secs()) as u32;
            self.rigid = Some(RigidLoad::new(names.len(), RIGID_MEMORY_WEEKS * per_hour));
            self.rigid_zones = names;
        }
        let gated: Vec<Arc<Pod>> = all
            .into_iter()
            .filter(|p| {
                is_gated(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && !self.released.contains_key(&p.uid().unwrap_or_default())
            })
            .collect();
        let mut planned: Vec<(Arc<Pod>, Ask)> = Vec::new();
        for pod in &gated {
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0);
            match parse_request(pod.annotations(), selector_zone(pod), created) {
                Ok(request) => {
                    let vcpus = pod_cpu_request(pod);
                    planned.push((pod.clone(), Ask { request, vcpus }));
                }
                Err(why) => self.release(pod, None, Release::Invalid(why), now).await,
            }
        }
        let asks: Vec<Ask> = planned.iter().map(|(_, a)| a.clone()).collect();
        let rigid = self.rigid.as_mut().expect("set above");
        let wait = Duration::from_secs_f64(self.wait.get());
        let round = plan_round(&self.settings.round, now, &zones, &asks, rigid, wait);
        let ledger: Vec<(String, f64, f64)> = round
            .booked
            .iter()
            .map(|b| (b.zone.to_string(), b.peak_vcpus, b.room_now_vcpus))
            .collect();
        self.metrics.set_deferral_ledger(&ledger);
        let mut holding = 0;
        for (i, (pod, ask)) in planned.iter().enumerate() {
            if let Decision::Hold {
                start_at,
                zone,
                now_mean,
                planned_mean,
            } = &round.decisions[i]
            {
                holding += 1;
                let uid = pod.uid().unwrap_or_default();
                if let std::collections::hash_map::Entry::Vacant(entry) = self.held.entry(uid) {
                    entry.insert(Held {
                        first_now_mean: *now_mean,
                    });
                    self.announce(pod, ask, *start_at, zone, *now_mean, *planned_mean)
                        .await;
                }
            }
        }
        for &i in &round.release_order {
            let (pod, ask) = &planned[i];
            let release = match &round.decisions[i] {
                Decision::Release {
                    reason,
                    zone,
                    now_mean,
                } => Release::Planned {
                    reason: *reason,
                    zone: zone.clone(),
                    now_mean: *now_mean,
                },
                Decision::NoForecast(why) => Release::NoForecast(why.clone()),
                Decision::Hold { .. } => continue,
            };
            self.release(pod, Some(ask), release, now).await;
        }
        let live: HashSet<String> = gated.iter().filter_map(|p| p.uid()).collect();
        self.held.retain(|uid, _| live.contains(uid));
        self.metrics.pods_deferred.set(holding);
    }

    fn grams(&self, ask: &Ask, mean: f64) -> f64 {
        estimated_grams(&self.coefficients, ask.vcpus, ask.request.duration, mean)
    }
}

#[cfg(test)]
mod tests;
