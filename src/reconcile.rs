//! Every agent's loop: watch its own Node and the CarbonScores, decide, and
//! write to the Node only on a transition.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::carbon::{GridZone, Signal, SourceKind};
use crate::crd::CarbonScore;
use crate::decision::{
    DecisionParams, DwellState, Reason, TaintDecision, ZoneScore, decide, uncounted,
};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::{NodeWriter, OwnedState, TAINT_KEY};
use crate::taint::TaintEffect;
use crate::watches::{self, Slim};
use crate::zones;

/// Re-decide at least this often, so dwell and staleness take effect without events.
const TICK: Duration = Duration::from_secs(5);

/// What every agent decides its own node by.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// Zone of a node without a zone label or known region.
    pub default_zone: Option<GridZone>,
    pub decision: DecisionParams,
    pub taint_effect: TaintEffect,
}

pub struct Reconciler {
    pub client: Client,
    pub node_name: String,
    pub settings: ReconcilerSettings,
    pub writer: NodeWriter,
    pub metrics: Arc<Metrics>,
    /// This node's zone intensity, for the emissions loop.
    pub intensity: watch::Sender<Option<f64>>,
    /// Whether the node's power is measured or modelled, from the emissions
    /// loop; it ends the condition message.
    pub power_note: watch::Receiver<String>,
}

/// The operator-facing explanation in the node condition.
pub fn condition_message(
    zone: Option<&GridZone>,
    score: Option<&ZoneScore>,
    source: &str,
    decision: &TaintDecision,
    effect: &str,
    now: Timestamp,
) -> String {
    let Some(zone) = zone else {
        return "Node has no grid zone: set the carbon-kube.io/grid-zone label, a known topology.kubernetes.io/region, or the agent's --default-zone.".into();
    };
    let Some(score) = score else {
        return format!("No carbon data for grid zone {zone} yet; the node is left schedulable.");
    };
    let age_minutes = now.duration_since(score.observed_at).as_secs() / 60;
    let observed = format!(
        "source {source}, observed {}, {age_minutes} min before this update",
        score.observed_at
    );
    if let Some(ranking) = &score.ranking {
        return format!(
            "Grid zone {zone}: {:.0} gCO2/kWh ({observed}); {}. {}",
            score.grams_per_kwh,
            ranking.describe(),
            ranked_verdict(zone, score, decision, effect)
        );
    }
    let facts = format!(
        "Grid zone {zone}: {:.0} gCO2/kWh, threshold {:.0} gCO2/kWh ({observed}).",
        score.grams_per_kwh, score.threshold_grams_per_kwh
    );
    use crate::decision::Reason::*;
    let verdict = match decision.reason {
        Stale => STALE.to_string(),
        AboveThreshold | WithinHysteresis if decision.tainted => format!("Node tainted {TAINT_KEY}:{effect}; pods that tolerate it may still land here."),
        Dwelling => "Above the threshold; the node is tainted if it stays above for the dwell time.".into(),
        BudgetExhausted => "Above the threshold, but the cluster's taint budget is spent on dirtier zones; the node stays schedulable.".into(),
        StaticOnly => STATIC_ONLY.into(),
        _ => "Below the threshold; the node is schedulable without carbon preference.".into(),
    };
    format!("{facts} {verdict}")
}

const STALE: &str = "The data is too old to act on; the carbon taint is removed.";
const STATIC_ONLY: &str = "No live provider answers; a static yearly average is shown but never acted on, so the node stays schedulable.";

/// The verdict part of the message under the relative policy.
fn ranked_verdict(
    zone: &GridZone,
    score: &ZoneScore,
    decision: &TaintDecision,
    effect: &str,
) -> String {
    use crate::decision::Reason::*;
    match decision.reason {
        Stale => STALE.into(),
        StaticOnly => STATIC_ONLY.into(),
        DirtierThanCleanest => format!("Node tainted {TAINT_KEY}:{effect} so that new pods prefer cleaner zones; pods that tolerate it may still land here."),
        DirtierThanCleanestDwelling => "Dirtier than the cleanest zone by the minimum spread; the node is tainted if this holds for the dwell time.".into(),
        BudgetExhausted => "Dirtier than the cleanest zone by the minimum spread, but the cluster's taint budget is spent on dirtier zones; the node stays schedulable.".into(),
        SpreadTooSmall => "Not dirtier than the cleanest zone by the minimum spread: moving work would gain little, so the node stays schedulable.".into(),
        BelowFloor => format!("Below the floor of {:.0} gCO2/kWh, under which no zone is tainted; the node stays schedulable.", score.threshold_grams_per_kwh),
        CleanestZone => "The cleanest zone of the cluster: never tainted, work moved away from dirtier zones comes here.".into(),
        SingleZone => format!("{zone} is the cluster's only grid zone: there is nothing to shift between zones, so the node is never tainted; metrics and deferral to greener hours still work."),
        _ => "The leader has no live data to rank this zone by; the node stays schedulable.".into(),
    }
}

/// Whether the CarbonScore cache holds the result of a complete list.
fn store_ready(store: &Store<CarbonScore>) -> bool {
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

impl Reconciler {
    pub fn new(
        client: Client,
        node_name: &str,
        settings: ReconcilerSettings,
        metrics: Arc<Metrics>,
        intensity: watch::Sender<Option<f64>>,
    ) -> Self {
        let writer = NodeWriter::new(
            Api::all(client.clone()),
            node_name,
            settings.taint_effect.as_str(),
        );
        Self {
            client,
            node_name: node_name.to_string(),
            settings,
            writer,
            metrics,
            intensity,
            power_note: watch::channel(String::new()).1,
        }
    }

    pub fn with_power_note(mut self, note: watch::Receiver<String>) -> Self {
        self.power_note = note;
        self
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node_config = watches::config().fields(&format!("metadata.name={}", self.node_name));
        let (node_tx, mut node_rx) = watch::channel::<Option<Node>>(None);
        // Dropping the set aborts the watches, however this loop ends; one
        // that ends on its own closes its channel, which ends this loop.
        let mut watches = JoinSet::new();
        watches.spawn(async move {
            let mut events = watcher(nodes, node_config)
                .modify(Node::slim)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(node) => {
                        let _ = node_tx.send(Some(node));
                    }
                    Err(e) => warn!(error = %e, "node watch failed; retrying"),
                }
            }
        });
        let (store, events) = crate::watches::cached(
            Api::<CarbonScore>::all(self.client.clone()),
            watches::config(),
        );
        let (score_tx, mut score_rx) = watch::channel(());
        watches.spawn(async move {
            let mut events = events.boxed();
            while let Some(event) = events.next().await {
                if let Err(e) = event {
                    warn!(error = %e, "CarbonScore watch failed; is the CRD installed? (carbon-kube crd | kubectl apply -f -)");
                }
                let _ = score_tx.send(());
            }
        });

        let mut dwell = DwellState::default();
        let mut last_zone: Option<GridZone> = None;
        let started = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = node_rx.changed() => if changed.is_err() { break },
                changed = score_rx.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
            self.metrics.heartbeat.beat();
            let Some(node) = node_rx.borrow_and_update().clone() else {
                continue;
            };
            // Until the first list of CarbonScores is in, a missing score means
            // "not read yet", not "no data": deciding on it would strip the
            // taint a restarted agent finds on its node and put it back a
            // moment later. Data older than max-age would be stale anyway, so
            // an agent that cannot read CarbonScores stops waiting then.
            if !store_ready(&store) && started.elapsed() < self.settings.decision.max_age {
                continue;
            }
            dwell = self.reconcile(&node, &store, dwell, &mut last_zone).await;
        }
    }

    async fn reconcile(
        &self,
        node: &Node,
        store: &Store<CarbonScore>,
        dwell: DwellState,
        last_zone: &mut Option<GridZone>,
    ) -> DwellState {
        let resolution = zones::zone_for_node(node.labels(), self.settings.default_zone.as_ref());
        if resolution.zone != *last_zone {
            if let Some(warning) = &resolution.warning {
                warn!(node = %self.node_name, "{warning}");
            }
            info!(node = %self.node_name, zone = resolution.zone.as_ref().map_or("none", GridZone::as_str), "grid zone resolved");
            *last_zone = resolution.zone.clone();
        }
        let zone = resolution.zone.as_ref();
        let object = zone.and_then(|z| store.get(&reflector::ObjectRef::new(&z.object_name())));
        // Ready once the first list of CarbonScores is in: we then know whether ours exists.
        if store_ready(store) {
            self.metrics.ready.store(true, Ordering::Relaxed);
        }
        let status = object.as_ref().and_then(|o| o.status.as_ref());
        let score = object.as_ref().and_then(|o| o.zone_score()).map(|score| {
            uncounted(
                score,
                status.and_then(|s| s.counted_at.as_ref()).map(|t| t.0),
                node.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let source = status.map(|s| s.source.clone()).unwrap_or_default();
        let static_only = status.is_some_and(|s| s.kind == SourceKind::Static);
        let now = Timestamp::now();
        let found = OwnedState::of_node(node);
        let mut decision = decide(
            &self.settings.decision,
            score.as_ref(),
            found.tainted,
            dwell,
            now,
        );
        // The leader withholds the taint on static data; say so rather than
        // blame the taint budget.
        if matches!(decision.reason, Reason::BudgetExhausted | Reason::NotRanked) && static_only {
            decision.reason = Reason::StaticOnly;
        }

        self.publish(zone, score.as_ref(), &source, now);
        let verdict = condition_message(
            zone,
            score.as_ref(),
            &source,
            &decision,
            self.settings.taint_effect.as_str(),
            now,
        );
        let message = match self.power_note.borrow().as_str() {
            "" => verdict,
            note => format!("{verdict} {note}"),
        };
        // The gauge says what the node carries: the decision once written,
        // what was found while the write fails.
        let carries = match self.writer.apply(node, &decision, &message).await {
            Ok(changed) => {
                if changed {
                    self.metrics.taint_transitions.inc();
                }
                decision.tainted
            }
            Err(e) => {
                let e = Error::from(e);
                self.metrics.node_write_errors.inc();
                self.metrics.record_error("reconciler", &e);
                warn!(node = %self.node_name, error = %e, "writing the node failed; will retry");
                found.tainted
            }
        };
        self.metrics.tainted.set(i64::from(carries));
        decision.dwell
    }

    fn publish(
        &self,
        zone: Option<&GridZone>,
        score: Option<&ZoneScore>,
        source: &str,
        now: Timestamp,
    ) {
        let _ = self.intensity.send(score.map(|s| s.grams_per_kwh));
        if let (Some(zone), Some(score)) = (zone, score) {
            self.metrics
                .set_zone_intensity(zone.as_str(), source, score.grams_per_kwh);
            self.metrics
                .set_node_grid(zone.as_str(), Signal::of_source(source));
            self.metrics.threshold.set(score.threshold_grams_per_kwh);
            self.metrics
                .data_age_seconds
                .set(now.duration_since(score.observed_at).as_secs_f64().max(0.0));
        }
    }
}

#[cfg(test)]
mod tests;
