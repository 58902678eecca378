//! The leader's loop for the `carbon-kube.io/green-window` AdmissionChecks: watch
//! Workloads, AdmissionChecks, their GreenWindowConfigs, nodes, pods and CarbonScores;
//! plan every Workload whose check is Pending with [`plan_round`] (the shared planner);
//! write the check's state (Pending with the plan, or Ready) on the Workload's status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    AdmissionCheckSpec, CONTROLLER_NAME, GROUP, GreenWindowConfig, Params, VERSION, WorkloadSpec,
    WorkloadStatus, pin_updates, request,
};
use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::deferral::controller::{DeferralSettings, Release, human, is_terminal, zone_capacity};
use crate::deferral::round::{Ask, Decision, plan_round};
use crate::metrics::Metrics;
use crate::planner::{ReleaseReason, RigidLoad};
use crate::resources::pod_cpu_request;
use crate::watches::{self, FailureLog};

/// Re-plan at least this often, so a latest start is met without any event.
mod checks;
mod metrics;
mod verdict;
pub use metrics::CheckMetrics;

const TICK: Duration = Duration::from_secs(2);
const FIELD_MANAGER: &str = "carbon-kube-green-window";
/// Weeks the learned non-deferred load per hour of week remembers (as deferral).
const RIGID_MEMORY_WEEKS: u32 = 4;
/// Seconds a Workload was held: a minute to two days.
const HOLD_BUCKETS: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
];

/// A Workload waiting on one of our checks.
struct Waiting {
    namespace: String,
    name: String,
    uid: String,
    created: Timestamp,
    check: String,
    /// The check's message and last transition as the Workload shows them.
    message: String,
    since: Option<String>,
    spec: WorkloadSpec,
}

pub struct GreenWindow {
    client: Client,
    metrics: Arc<CheckMetrics>,
    settings: DeferralSettings,
    rigid: Option<RigidLoad>,
    rigid_zones: Vec<GridZone>,
    /// Checks set Ready a moment ago, by Workload uid and check: the watch may still show Pending.
    done: HashMap<(String, String), std::time::Instant>,
    /// The planned start each held check's message shows, by Workload uid and check.
    announced: HashMap<(String, String), Timestamp>,
}

impl Drop for GreenWindow {
    /// A former leader holds nothing.
    fn drop(&mut self) {
        self.metrics.held.set(0);
    }
}

pub(super) fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// A store of Kueue objects and the watch that fills it (they have no Rust type).
pub(super) fn cached_dynamic(
    client: &Client,
    resource: &ApiResource,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = Result<(), watcher::Error>> + Send + use<>,
) {
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), resource);
    let events = watcher(api, watches::config())
        .default_backoff()
        .reflect(writer)
        .map(|event| event.map(|_| ()));
    (store, events)
}

/// Wakes a loop on every watch event, and logs failures quietly: `what` names the watch,
/// `hint` says what it needs.
pub(super) fn notify(
    tx: watch::Sender<()>,
    what: String,
    hint: &'static str,
) -> impl FnMut(Result<(), watcher::Error>) -> futures::future::Ready<()> {
    let mut log = FailureLog::new(what, hint);
    move |event| {
        log.see(&event);
        let _ = tx.send(());
        futures::future::ready(())
    }
}

const HINT: &str = " (needs RBAC workloads, admissionchecks, greenwindowconfigs, pods and nodes \
                     get/list/watch, workloads/status and admissionchecks/status patch; Kueue's \
                     CRDs installed), or --kueue-green-window=false";

fn watching(
    tx: &watch::Sender<()>,
    what: &str,
) -> impl FnMut(Result<(), watcher::Error>) -> futures::future::Ready<()> + use<> {
    notify(tx.clone(), format!("kueue green-window: {what}"), HINT)
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    value: Option<&serde_json::Value>,
) -> Option<T> {
    serde_json::from_value(value?.clone()).ok()
}

impl GreenWindow {
    pub fn new(client: Client, metrics: Arc<CheckMetrics>, settings: DeferralSettings) -> Self {
        Self {
            client,
            metrics,
            settings,
            rigid: None,
            rigid_zones: Vec::new(),
            done: HashMap::new(),
            announced: HashMap::new(),
        }
    }

    /// Runs until dropped (the caller drops it on losing the Lease).
    pub async fn run(mut self) {
        let (changed_tx, changed) = watch::channel(());
        let workload_resource = api_resource("Workload", "workloads");
        let check_resource = api_resource("AdmissionCheck", "admissionchecks");
        let (workloads, workload_events) = cached_dynamic(&self.client, &workload_resource);
        let (checks, check_events) = cached_dynamic(&self.client, &check_resource);
        let (configs, config_events) = watches::cached(
            Api::<GreenWindowConfig>::all(self.client.clone()),
            watches::config(),
        );
        let (pods, pod_events) = watches::cached(
            Api::<Pod>::all(self.client.clone()),
            watches::config()
                .fields("spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"),
        );
        let ((nodes, node_events), (scores, score_events)) =
            watches::nodes_and_scores(&self.client);
        let workload_watch = workload_events.for_each(watching(&changed_tx, "Workload"));
        let check_watch = check_events.for_each(watching(&changed_tx, "AdmissionCheck"));
        let config_watch = config_events.for_each(watching(&changed_tx, "GreenWindowConfig"));
        let pod_watch = pod_events.for_each(watching(&changed_tx, "pod"));
        let node_watch = node_events.for_each(watching(&changed_tx, "node"));
        let score_watch = score_events.for_each(watching(&changed_tx, "CarbonScore"));
        info!(
            "kueue: deciding AdmissionChecks of {CONTROLLER_NAME} by the greenest start with room"
        );
        let work = async {
            let mut rounds = watches::Rounds::new(TICK, changed);
            while rounds.next().await {
                let ready = futures::future::join(
                    futures::future::join3(
                        workloads.wait_until_ready(),
                        checks.wait_until_ready(),
                        configs.wait_until_ready(),
                    ),
                    futures::future::join3(
                        pods.wait_until_ready(),
                        nodes.wait_until_ready(),
                        scores.wait_until_ready(),
                    ),
                )
                .await;
                let ((a, b, c), (d, e, f)) = ready;
                if [a, b, c, d, e, f].iter().any(Result::is_err) {
                    return;
                }
                let ours = self.our_checks(&checks, &configs).await;
                self.round(&ours, &workloads, &pods, &nodes, &scores).await;
            }
        };
        tokio::select! {
            _ = workload_watch => {}
            _ = check_watch => {}
            _ = config_watch => {}
            _ = pod_watch => {}
            _ = node_watch => {}
            _ = score_watch => {}
            _ = work => {}
        }
    }

    /// One pass over every Workload that waits on one of our checks.
    async fn round(
        &mut self,
        ours: &HashMap<String, Result<Params, String>>,
        workloads: &Store<DynamicObject>,
        pods: &Store<Pod>,
        nodes: &Store<Node>,
        scores: &Store<CarbonScore>,
    ) {
        let now = Timestamp::now();
        self.done
            .retain(|_, at| at.elapsed() < Duration::from_secs(30));
        let (mut zones, zone_of_node) = zone_capacity(scores, nodes, &self.settings, now);
        for pod in pods.state().iter().filter(|p| !is_terminal(p)) {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
            if let Some(&index) = node.and_then(|n| zone_of_node.get(n)) {
                zones[index].requested += pod_cpu_request(pod);
            }
        }
        let names: Vec<GridZone> = zones.iter().map(|z| z.zone.clone()).collect();
        if self.rigid.is_none() || self.rigid_zones != names {
            let per_hour = (3600 / TICK.as_secs()) as u32;
            self.rigid = Some(RigidLoad::new(names.len(), RIGID_MEMORY_WEEKS * per_hour));
            self.rigid_zones = names;
        }
        // Zones a pin can name: those whose nodes carry the grid-zone label.
        let labelled: HashSet<String> = nodes
            .state()
            .iter()
            .filter_map(|n| n.labels().get(crate::zones::GRID_ZONE_LABEL).cloned())
            .collect();
        let zones_with_nodes = zones.iter().filter(|z| z.allocatable > 0.0).count();

        let mut planned: Vec<(Waiting, Ask)> = Vec::new();
        for waiting in self.waiting(ours, workloads) {
            let Some(Ok(params)) = ours.get(&waiting.check) else {
                let why = match ours.get(&waiting.check) {
                    Some(Err(why)) => why.clone(),
                    _ => format!("AdmissionCheck {} is not ours", waiting.check),
                };
                self.ready(&waiting, Release::Invalid(why), None, now).await;
                continue;
            };
            match request(params, &waiting.spec, waiting.created) {
                Ok(request) => {
                    let vcpus = waiting.spec.vcpus();
                    planned.push((waiting, Ask { request, vcpus }));
                }
                Err(why) => self.ready(&waiting, Release::Invalid(why), None, now).await,
            }
        }
        let asks: Vec<Ask> = planned.iter().map(|(_, a)| a.clone()).collect();
        let rigid = self.rigid.as_mut().expect("set above");
        let round = plan_round(
            &self.settings.round,
            now,
            &zones,
            &asks,
            rigid,
            Duration::ZERO,
        );
        // Slots run from now, so a standing plan's start moves by less than a slot each round.
        let step = jiff::SignedDuration::try_from(round.step).unwrap_or_default();
        let mut held = 0;
        let mut holding = HashSet::new();
        for (i, (waiting, ask)) in planned.iter().enumerate() {
            match &round.decisions[i] {
                Decision::Hold {
                    start_at,
                    zone,
                    now_mean,
                    planned_mean,
                } => {
                    held += 1;
                    let key = (waiting.uid.clone(), waiting.check.clone());
                    holding.insert(key.clone());
                    let moved = self
                        .announced
                        .get(&key)
                        .is_none_or(|shown| shown.duration_since(*start_at).abs() >= step);
                    if !moved && !waiting.message.is_empty() {
                        continue;
                    }
                    let start_at = &start_at.round(jiff::Unit::Second).unwrap_or(*start_at);
                    let message = format!(
                        "Waiting for greener power: planned start {start_at} in zone {zone}, \
                         booked within its free CPU ({planned_mean:.0} gCO2/kWh forecast on \
                         average over {} vs {now_mean:.0} starting now, {} vCPU). Ready by {} \
                         at the latest.",
                        human(ask.request.duration),
                        ask.vcpus,
                        ask.request.latest_start,
                    );
                    info!(workload = %format!("{}/{}", waiting.namespace, waiting.name), start_at = %start_at, zone = %zone, "kueue: holding workload");
                    if self.write(waiting, "Pending", &message, Vec::new()).await {
                        self.announced.insert(key, *start_at);
                    }
                }
                Decision::Release {
                    reason,
                    zone,
                    now_mean,
                } => {
                    // Pinned only where there is a choice of zone and the Workload left it to us.
                    let pin = zone.clone().filter(|z| {
                        zones_with_nodes > 1
                            && ask.request.zone.is_none()
                            && labelled.contains(&z.to_string())
                    });
                    let ready = Release::Planned {
                        reason: *reason,
                        zone: zone.clone(),
                        now_mean: *now_mean,
                    };
                    self.ready(waiting, ready, pin, now).await;
                }
                Decision::NoForecast(why) => {
                    self.ready(waiting, Release::NoForecast(why.clone()), None, now)
                        .await;
                }
            }
        }
        self.announced.retain(|key, _| holding.contains(key));
        self.metrics.held.set(held);
    }
}

/// Runs the controller while this agent leads, and drops it the moment it does not.
pub async fn while_leader(
    mut is_leader: watch::Receiver<bool>,
    client: Client,
    metrics: Arc<CheckMetrics>,
    settings: DeferralSettings,
) {
    loop {
        if is_leader.wait_for(|leader| *leader).await.is_err() {
            return;
        }
        let controller = GreenWindow::new(client.clone(), metrics.clone(), settings.clone());
        tokio::select! {
            _ = controller.run() => {}
            _ = is_leader.wait_for(|leader| !*leader) => {}
        }
    }
}
