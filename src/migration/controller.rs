//! The agent's migration loop: its own Node, the CarbonScores, and the
//! opted-in pods on its node; one eviction at a time, rate-limited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::EvictParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    OPT_IN_LABEL, RateLimiter, ZoneView, eligibility, greener_capacity, long_enough, taint_effect,
    tainted_since, zone_view,
};
use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::deferral::controller::human;
use crate::error::Error;
use crate::events::{PodEvents, pod_key};
use crate::metrics::Metrics;
use crate::supervise::{ROUND_DEADLINE, bounded};
use crate::watches::{self, FailureLog};
use crate::zones;

/// How often the loop looks; evictions are rare, so this need not be fast.
const TICK: Duration = Duration::from_secs(5);
/// A pod whose eviction was refused (a PodDisruptionBudget) or failed is tried again after this.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// The node must have carried the carbon taint this long.
    pub migrate_after: Duration,
    pub max_evictions_per_hour: u32,
    pub hysteresis_grams_per_kwh: f64,
    pub max_age: Duration,
    pub default_zone: Option<GridZone>,
    /// This agent's identity, as the events' reporting instance.
    pub identity: String,
}

pub struct Migrator {
    client: Client,
    node_name: String,
    metrics: Arc<Metrics>,
    settings: MigrationSettings,
    events: PodEvents,
    limiter: RateLimiter,
    /// Pods not to try again before the instant.
    retry_at: HashMap<String, Instant>,
    /// When this agent first saw the taint, for a taint without a time.
    first_seen_tainted: Option<Timestamp>,
    /// The last reason for doing nothing, so it is logged once.
    idle_reason: String,
}

impl Migrator {
    /// `config` is the agent's; the migrator's client does not retry 429s by
    /// itself, because an eviction that a PodDisruptionBudget refuses answers
    /// 429, and that answer is what the loop counts and retries later.
    pub fn new(
        config: &kube::Config,
        node_name: &str,
        metrics: Arc<Metrics>,
        settings: MigrationSettings,
    ) -> Result<Self, crate::kubeclient::ClientError> {
        let mut config = config.clone();
        config.default_retry = false;
        let client = crate::kubeclient::client(&config)?;
        Ok(Self::with_client(client, node_name, metrics, settings))
    }

    /// A migrator on `client`, which must not retry 429s (see [`Migrator::new`]).
    pub fn with_client(
        client: Client,
        node_name: &str,
        metrics: Arc<Metrics>,
        settings: MigrationSettings,
    ) -> Self {
        let events = PodEvents::new(client.clone(), &settings.identity, "migration");
        Self {
            client,
            node_name: node_name.to_string(),
            metrics,
            limiter: RateLimiter::new(settings.max_evictions_per_hour),
            settings,
            events,
            retry_at: HashMap::new(),
            first_seen_tainted: None,
            idle_reason: String::new(),
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let log = |what: &'static str| {
            let mut log = FailureLog::new(format!("migration: {what}"), "");
            move |event: Result<(), watcher::Error>| {
                log.see(&event);
                futures::future::ready(())
            }
        };
        let (node, node_events) = watches::cached(
            Api::<Node>::all(self.client.clone()),
            watches::config().fields(&format!("metadata.name={}", self.node_name)),
        );
        let node_watch = node_events.for_each(log("node"));
        let (scores, score_events) = watches::cached(
            Api::<CarbonScore>::all(self.client.clone()),
            watches::config(),
        );
        let score_watch = score_events.for_each(log("CarbonScore"));
        // Only this node's opted-in pods, as a kubelet watches its own.
        let (pods, pod_events) = watches::cached(
            Api::<Pod>::all(self.client.clone()),
            watches::config()
                .fields(&format!("spec.nodeName={}", self.node_name))
                .labels(&format!("{OPT_IN_LABEL}=true")),
        );
        let pod_watch =
            pod_events.for_each(log("pod (RBAC: pods list/watch, pods/eviction create)"));
        info!(
            node = %self.node_name,
            migrate_after = %human(self.settings.migrate_after),
            max_per_hour = self.settings.max_evictions_per_hour,
            "migration: evicting pods labelled {OPT_IN_LABEL}=true off this node while it stays tainted"
        );
        let work = async {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let metrics = self.metrics.clone();
                bounded(
                    "migration",
                    ROUND_DEADLINE,
                    &metrics,
                    self.round(&node, &scores, &pods),
                )
                .await;
            }
        };
        tokio::select! {
            _ = node_watch => {}
            _ = score_watch => {}
            _ = pod_watch => {}
            _ = work => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Logs why nothing happens, once per reason.
    fn idle(&mut self, reason: String) {
        if reason != self.idle_reason {
            info!(node = %self.node_name, "migration: {reason}");
            self.idle_reason = reason;
        }
    }

    async fn round(&mut self, node: &Store<Node>, scores: &Store<CarbonScore>, pods: &Store<Pod>) {
        let Some(node) = node.state().into_iter().next() else {
            return;
        };
        let now = Timestamp::now();
        let since = match tainted_since(&node) {
            None => {
                self.first_seen_tainted = None;
                return self.idle("node not tainted; nothing to move".into());
            }
            Some(Some(since)) => since,
            Some(None) => *self.first_seen_tainted.get_or_insert(now),
        };
        if !long_enough(since, now, self.settings.migrate_after) {
            return self.idle(format!(
                "node tainted since {since}; waiting until it has been tainted for {}",
                human(self.settings.migrate_after)
            ));
        }
        let Some(zone) =
            zones::zone_for_node(node.labels(), self.settings.default_zone.as_ref()).zone
        else {
            return self.idle("node has no grid zone".into());
        };
        let views: Vec<ZoneView> = scores.state().iter().filter_map(|s| zone_view(s)).collect();
        let Some(own) = views.iter().find(|v| v.zone == zone).cloned() else {
            return self.idle(format!("no carbon data for zone {zone}"));
        };
        let Some(greener) = greener_capacity(
            &own,
            &views,
            self.settings.hysteresis_grams_per_kwh,
            self.settings.max_age,
            now,
        )
        .cloned() else {
            return self.idle(format!(
                "no greener untainted zone than {zone} ({:.0} gCO2/kWh); pods stay",
                own.grams_per_kwh
            ));
        };
        let effect = taint_effect(&node).unwrap_or_default();
        let clock = Instant::now();
        self.retry_at.retain(|_, at| *at > clock);
        let mut candidates: Vec<Arc<Pod>> = pods
            .state()
            .into_iter()
            .filter(|p| !self.retry_at.contains_key(&p.uid().unwrap_or_default()))
            .filter(|p| match eligibility(p, &self.node_name, &zone, &effect) {
                Ok(()) => true,
                Err(why) => {
                    debug!(pod = %pod_key(p), reason = why.as_str(), "migration: not evicting");
                    false
                }
            })
            .collect();
        if candidates.is_empty() {
            return self.idle(format!(
                "tainted for {}, zone {} is greener, but no opted-in pod here can move now",
                human(Duration::from_secs(
                    now.duration_since(since).as_secs().max(0) as u64
                )),
                greener.zone
            ));
        }
        let wait = self.limiter.wait(clock);
        if !wait.is_zero() {
            return self.idle(format!(
                "{} eviction(s) per hour reached; next in {}",
                self.settings.max_evictions_per_hour,
                human(wait)
            ));
        }
        // Oldest first: it has had the longest run on dirty power.
        candidates.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let pod = &candidates[0];
        let tainted_for = human(Duration::from_secs(
            now.duration_since(since).as_secs().max(0) as u64,
        ));
        self.evict(pod, &own, &greener, &tainted_for).await;
    }

    async fn evict(&mut self, pod: &Pod, own: &ZoneView, greener: &ZoneView, tainted_for: &str) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let uid = pod.uid().unwrap_or_default();
        let now = Instant::now();
        match api.evict(&pod.name_any(), &EvictParams::default()).await {
            Ok(_) => {
                self.limiter.record(now);
                self.metrics.record_eviction("evicted");
                self.retry_at.insert(uid, now + RETRY);
                self.idle_reason.clear();
                info!(pod = %pod_key(pod), node = %self.node_name, to_zone = %greener.zone, "migration: evicted pod");
                let note = format!(
                    "Evicted to move to greener power: node {} has carried the carbon taint for {tainted_for} \
                     (zone {} at {:.0} gCO2/kWh); zone {} has untainted capacity at {:.0} gCO2/kWh. \
                     Its controller creates a replacement, which the scheduler places away from tainted nodes.",
                    self.node_name,
                    own.zone,
                    own.grams_per_kwh,
                    greener.zone,
                    greener.grams_per_kwh
                );
                self.event(pod, EventType::Normal, "Migrating", note).await;
            }
            Err(kube::Error::Api(status)) if status.code == 429 => {
                self.metrics.record_eviction("blocked");
                self.retry_at.insert(uid, now + RETRY);
                info!(pod = %pod_key(pod), message = %status.message, "migration: eviction blocked by a PodDisruptionBudget");
                let note = format!(
                    "Not moved to greener zone {}: the eviction was refused ({}). Trying again in {}.",
                    greener.zone,
                    status.message,
                    human(RETRY)
                );
                self.event(pod, EventType::Warning, "MigrationBlocked", note)
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                self.metrics.record_eviction("failed");
                let e = Error::from(e);
                self.metrics.record_error("migration", &e);
                self.retry_at.insert(uid, now + RETRY);
                warn!(pod = %pod_key(pod), error = %e, "migration: eviction failed; trying again later");
                let note = format!(
                    "Not moved: the eviction failed ({e}). Trying again in {}.",
                    human(RETRY)
                );
                self.event(pod, EventType::Warning, "MigrationFailed", note)
                    .await;
            }
        }
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        self.events.publish(pod, type_, reason, "Evict", note).await;
    }
}

#[cfg(test)]
mod tests;
