//! The leader's deferral loop: watch unscheduled pods, hold the gated ones,
//! and release each when [`decide`] says so, with an event on the pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    Decision, GATE, Plan, Release, Request, decide, estimated_grams, forecast_for, parse_request,
    requested_vcpus,
};
use crate::carbon::GridZone;
use crate::crd::{CarbonScore, CarbonScoreStatus};
use crate::metrics::Metrics;
use crate::power::PowerCoefficients;
use crate::zones;

/// Re-plan at least this often, so a latest start is met without any event.
const TICK: Duration = Duration::from_secs(2);
const FIELD_MANAGER: &str = "carbon-kube-leader";
/// The watch may show a released pod's gate for a moment: do not release it twice.
const RELEASE_GRACE: Duration = Duration::from_secs(30);
/// Events and metrics name the component this way.
pub const CONTROLLER: &str = "carbon-kube";

#[derive(Debug, Clone)]
pub struct DeferralSettings {
    /// Carbon data older than this is not planned on (the pod is released).
    pub max_age: Duration,
    /// Power model for the grams-saved estimate.
    pub coefficients: PowerCoefficients,
    /// This agent's identity, as the events' reporting instance.
    pub identity: String,
}

/// What the leader remembers of a pod it holds.
struct Held {
    /// Mean intensity over the pod's run had it started when first seen.
    first_now_mean: f64,
}

pub struct Deferral {
    client: Client,
    metrics: Arc<Metrics>,
    settings: DeferralSettings,
    recorder: Recorder,
    held: HashMap<String, Held>,
    released: HashMap<String, Instant>,
}

impl Drop for Deferral {
    /// A former leader holds nothing.
    fn drop(&mut self) {
        self.metrics.pods_deferred.set(0);
    }
}

/// True when the pod still carries our gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == GATE))
}

/// The zone a pod's node selector pins it to (grid-zone label, or a known region).
fn selector_zone(pod: &Pod) -> Option<GridZone> {
    let selector = pod.spec.as_ref()?.node_selector.as_ref()?;
    zones::zone_for_node(selector, None).zone
}

/// Wakes the loop on every watch event. A failure (the watcher retries with
/// backoff) is a warning when it starts, then debug until the watch recovers,
/// so a missing permission does not flood the log.
fn notify<T>(
    tx: watch::Sender<()>,
    what: &'static str,
) -> impl FnMut(Result<T, watcher::Error>) -> futures::future::Ready<()> {
    let mut failing = false;
    move |event| {
        match event {
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "deferral: {what} watch failed; retrying (needs RBAC pods get/list/watch/patch, or --deferral=false)");
            }
            Err(e) => debug!(error = %e, "deferral: {what} watch still failing"),
            Ok(_) => failing = false,
        }
        let _ = tx.send(());
        futures::future::ready(())
    }
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl Deferral {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: DeferralSettings) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER.into(),
                instance: Some(settings.identity.clone()),
            },
        );
        Self {
            client,
            metrics,
            settings,
            recorder,
            held: HashMap::new(),
            released: HashMap::new(),
        }
    }

    /// Runs until dropped (the caller drops it on losing the Lease); the
    /// watches live inside this future and end with it.
    pub async fn run(mut self) {
        let (changed_tx, mut changed) = watch::channel(());
        // Gated pods are unscheduled: the field selector keeps bound pods out of the cache.
        let (pods, pod_writer) = reflector::store::<Pod>();
        let pod_events = watcher(
            Api::<Pod>::all(self.client.clone()),
            watcher::Config::default().fields("spec.nodeName="),
        )
        .default_backoff()
        .reflect(pod_writer);
        let (scores, score_writer) = reflector::store::<CarbonScore>();
        let score_events = watcher(
            Api::<CarbonScore>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(score_writer);
        let pod_watch = pod_events.for_each(notify(changed_tx.clone(), "pod"));
        let score_watch = score_events.for_each(notify(changed_tx, "CarbonScore"));
        info!("deferral: holding pods gated by {GATE} until their greenest start");
        let work = async {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    changed = changed.changed() => if changed.is_err() { return },
                }
                if pods.wait_until_ready().await.is_err() {
                    return;
                }
                self.round(&pods, &scores).await;
            }
        };
        tokio::select! {
            _ = pod_watch => {}
            _ = score_watch => {}
            _ = work => {}
        }
    }

    /// One pass over every gated pod.
    async fn round(&mut self, pods: &Store<Pod>, scores: &Store<CarbonScore>) {
        let now = Timestamp::now();
        let mut zones: Vec<(GridZone, CarbonScoreStatus)> = scores
            .state()
            .iter()
            .filter_map(|s| Some((GridZone::parse(&s.spec.zone).ok()?, s.status.clone()?)))
            .collect();
        zones.sort_by(|a, b| a.0.cmp(&b.0));
        self.released.retain(|_, at| at.elapsed() < RELEASE_GRACE);
        let gated: Vec<Arc<Pod>> = pods
            .state()
            .into_iter()
            .filter(|p| is_gated(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        let mut holding = 0;
        for pod in &gated {
            let uid = pod.uid().unwrap_or_default();
            if self.released.contains_key(&uid) {
                continue;
            }
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0);
            let request = match parse_request(pod.annotations(), selector_zone(pod), created) {
                Ok(request) => request,
                Err(why) => {
                    self.release(pod, None, Release::Invalid(why), now).await;
                    continue;
                }
            };
            let forecast = forecast_for(request.zone.as_ref(), &zones, now, self.settings.max_age);
            match decide(now, &request, forecast.as_ref().map_err(String::as_str)) {
                Decision::Hold(plan) => {
                    holding += 1;
                    if let std::collections::hash_map::Entry::Vacant(entry) = self.held.entry(uid) {
                        entry.insert(Held {
                            first_now_mean: plan.now_mean,
                        });
                        self.announce(pod, &request, &plan).await;
                    }
                }
                Decision::Release(release) => {
                    self.release(pod, Some(&request), release, now).await;
                }
            }
        }
        let live: HashSet<String> = gated.iter().filter_map(|p| p.uid()).collect();
        self.held.retain(|uid, _| live.contains(uid));
        self.metrics.pods_deferred.set(holding);
    }

    fn grams(&self, pod: &Pod, request: &Request, mean: f64) -> f64 {
        estimated_grams(
            &self.settings.coefficients,
            requested_vcpus(pod),
            request.duration,
            mean,
        )
    }

    async fn announce(&self, pod: &Pod, request: &Request, plan: &Plan) {
        let saving = self.grams(pod, request, plan.now_mean - plan.best_mean);
        let note = format!(
            "Waiting for greener power: the forecast for {} is lowest for a start at {} \
             ({:.0} gCO2/kWh on average over {} vs {:.0} starting now; about {:.1} g CO2 less \
             for {} vCPU). Released by {} at the latest.",
            plan.scope,
            plan.start_at,
            plan.best_mean,
            human(request.duration),
            plan.now_mean,
            saving,
            requested_vcpus(pod),
            request.latest_start,
        );
        info!(pod = %pod_key(pod), start_at = %plan.start_at, latest_start = %request.latest_start, "deferral: holding pod");
        self.event(pod, EventType::Normal, "Deferred", "Defer", note)
            .await;
    }

    async fn release(
        &mut self,
        pod: &Pod,
        request: Option<&Request>,
        release: Release,
        now: Timestamp,
    ) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        // Strategic merge by the gates' merge key `name`: the server removes ours
        // and keeps every other gate, whatever their order.
        let patch =
            json!({ "spec": { "schedulingGates": [{ "name": GATE, "$patch": "delete" }] } });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api
            .patch(&pod.name_any(), &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(e) => {
                warn!(pod = %pod_key(pod), error = %e, "deferral: removing the gate failed; will retry");
                return;
            }
        }
        let uid = pod.uid().unwrap_or_default();
        self.released.insert(uid.clone(), Instant::now());
        let held = self.held.remove(&uid);
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let waited = now.duration_since(created).as_secs_f64().max(0.0);
        self.metrics.deferral_seconds.observe(waited);
        self.metrics.record_deferral_release(release.reason());
        // Saving: the run as forecast when the pod was first held, against the run from now.
        let saved = match (held, request, release.now_mean()) {
            (Some(held), Some(request), Some(now_mean)) => {
                Some(self.grams(pod, request, held.first_now_mean - now_mean))
            }
            _ => None,
        };
        if let Some(grams) = saved.filter(|g| *g > 0.0) {
            self.metrics.deferral_saved_grams.inc_by(grams);
        }
        let waited_text = human(Duration::from_secs(waited as u64));
        let saved_text = saved.map_or(String::new(), |g| {
            format!(" Estimated saving against starting when first held: {g:.1} g CO2.")
        });
        let (kind, reason, note) = match &release {
            Release::Greenest { now_mean, scope } => (
                EventType::Normal,
                "Released",
                format!(
                    "Released after {waited_text}: now is the greenest start before the latest start \
                     (forecast for {scope}: {now_mean:.0} gCO2/kWh on average over the run).{saved_text}"
                ),
            ),
            Release::LatestStart { .. } => (
                EventType::Normal,
                "ReleasedAtLatestStart",
                format!(
                    "Released after {waited_text}: its latest start {} has come.{saved_text}",
                    request.map_or_else(String::new, |r| r.latest_start.to_string())
                ),
            ),
            Release::NoForecast(why) => (
                EventType::Warning,
                "ReleasedWithoutForecast",
                format!("Released after {waited_text} without deferral: {why}. Availability wins."),
            ),
            Release::Invalid(why) => (
                EventType::Warning,
                "InvalidDeferral",
                format!("Released at once without deferral: {why}."),
            ),
        };
        info!(pod = %pod_key(pod), reason = release.reason(), waited_seconds = waited as u64, "deferral: released pod");
        self.event(pod, kind, reason, "Release", note).await;
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!(pod = %pod_key(pod), error = %e, "deferral: recording an event failed (RBAC: events.k8s.io events create/patch)");
        }
    }
}

/// `1h30m`, `45s`.
pub fn human(duration: Duration) -> String {
    let s = duration.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}
