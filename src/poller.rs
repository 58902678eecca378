//! The leader's shared poller: each zone present among the Nodes is fetched
//! once per interval, whatever the number of nodes, and written to its
//! CarbonScore together with the threshold and the taint budget's verdict.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::{info, warn};

use crate::budget::{
    RankInput, RelativeParams, TaintPolicy, Verdict, ZoneLoad, allowed_zones, break_before_make,
    rank_zones, stage_allowed,
};
use crate::carbon::{GridZone, Reading, SourceKind};
use crate::crd::{CarbonScore, CarbonScoreStatus};
use crate::decision::ZoneRanking;
use crate::election::Fence;
use crate::error::Error;
use crate::kubeclient;
use crate::metrics::Metrics;
use crate::providers::{Chain, ChainError};
use crate::supervise::{ROUND_DEADLINE, bounded};
use crate::tuner::TunerParams;
use crate::tuning::{self, Tuned};
use crate::zones;

const FIELD_MANAGER: &str = "carbon-kube-leader";

#[derive(Debug, Clone)]
pub struct PollerSettings {
    pub interval: Duration,
    pub concurrency: usize,
    pub default_zone: Option<GridZone>,
    pub default_threshold_grams_per_kwh: f64,
    pub hysteresis_grams_per_kwh: f64,
    pub max_tainted_fraction: f64,
    /// `None`: the threshold stays at the default.
    pub tuner: Option<TunerParams>,
    pub policy: TaintPolicy,
    pub min_spread_grams_per_kwh: f64,
    pub min_spread_percent: f64,
    /// Relative policy: never taint below this (0: no floor).
    pub floor_grams_per_kwh: f64,
    /// Relative policy: zones are ranked by the mean of the intensity and the
    /// forecast over this window (the agents' dwell: a taint placed now acts after it).
    pub rank_window: Duration,
}

impl PollerSettings {
    fn relative(&self) -> RelativeParams {
        RelativeParams {
            max_tainted_fraction: self.max_tainted_fraction,
            min_spread_grams_per_kwh: self.min_spread_grams_per_kwh,
            min_spread_percent: self.min_spread_percent,
            hysteresis_grams_per_kwh: self.hysteresis_grams_per_kwh,
            floor_grams_per_kwh: self.floor_grams_per_kwh,
        }
    }
}

pub struct Poller {
    client: Client,
    chain: Arc<Chain>,
    metrics: Arc<Metrics>,
    settings: PollerSettings,
    fence: Fence,
    created: HashSet<GridZone>,
}

/// A yearly average says nothing about this hour: it may be shown, never acted on.
fn is_live(reading: &Reading) -> bool {
    reading.kind != SourceKind::Static
}

/// What the relative policy ranks a zone by: the intensity, averaged with the
/// forecast points within `window` after it where the provider gives any.
pub fn rank_value(reading: &Reading, window: Duration) -> f64 {
    let end = reading.observed_at + jiff::SignedDuration::try_from(window).unwrap_or_default();
    let ahead: Vec<f64> = reading
        .forecast
        .iter()
        .filter(|p| p.at > reading.observed_at && p.at <= end)
        .map(|p| p.grams_per_kwh)
        .collect();
    (reading.grams_per_kwh + ahead.iter().sum::<f64>()) / (1 + ahead.len()) as f64
}

/// Nodes per LIST request of the poller.
const NODE_PAGE: u32 = 500;

/// Counts nodes per zone from their labels.
pub fn zones_of_nodes<'a>(
    labels: impl Iterator<Item = &'a BTreeMap<String, String>>,
    default: Option<&GridZone>,
) -> BTreeMap<GridZone, usize> {
    let mut counts = BTreeMap::new();
    for node_labels in labels {
        if let Some(zone) = zones::zone_for_node(node_labels, default).zone {
            *counts.entry(zone).or_insert(0) += 1;
        }
    }
    counts
}

impl Poller {
    pub fn new(
        client: Client,
        chain: Arc<Chain>,
        metrics: Arc<Metrics>,
        settings: PollerSettings,
        fence: Fence,
    ) -> Self {
        Self {
            client,
            chain,
            metrics,
            settings,
            fence,
            created: HashSet::new(),
        }
    }

    /// Polls every interval until dropped (the caller drops it on losing the Lease).
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = Instant::now();
            let deadline = self.settings.interval.max(ROUND_DEADLINE);
            let metrics = self.metrics.clone();
            if let Some(Err(e)) = bounded("poller", deadline, &metrics, self.poll_once()).await {
                warn!(error = %e, "poll failed; CarbonScores keep their last values");
            }
            self.metrics
                .poll_duration
                .observe(started.elapsed().as_secs_f64());
        }
    }

    pub async fn poll_once(&mut self) -> Result<(), kube::Error> {
        // Every node created before this instant, by the API server's clock
        // that stamps their creation, is in the list below.
        let counted_at = kubeclient::server_time(&self.client).await?.map(Time);
        if counted_at.is_none() {
            warn!(
                "the API server sent no Date header: nodes that join a zone follow its grant before a poll counts them"
            );
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        // Page by page, keeping only labels: the leader holds one page of
        // node metadata (managedFields and all) at a time, not the cluster's.
        let mut labels = Vec::new();
        let mut params = ListParams::default().limit(NODE_PAGE);
        loop {
            let page = nodes.list_metadata(&params).await?;
            labels.extend(
                page.items
                    .into_iter()
                    .map(|n| n.metadata.labels.unwrap_or_default()),
            );
            match page.metadata.continue_.filter(|t| !t.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        let counts = zones_of_nodes(labels.iter(), self.settings.default_zone.as_ref());

        let scores: Api<CarbonScore> = Api::all(self.client.clone());
        let existing: BTreeMap<String, CarbonScore> = scores
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name.clone().map(|n| (n, s)))
            .collect();

        let chain = self.chain.clone();
        let fetched: Vec<(GridZone, Result<Reading, ChainError>)> =
            futures::stream::iter(counts.keys().cloned())
                .map(|zone| {
                    let chain = chain.clone();
                    async move {
                        let fetch = chain.fetch(&zone).await;
                        (zone, fetch)
                    }
                })
                .buffer_unordered(self.settings.concurrency)
                .map(|(zone, fetch)| {
                    self.metrics.record_attempts(&fetch.attempts);
                    (zone, fetch.result)
                })
                .collect()
                .await;

        let mut loads: Vec<ZoneLoad> = fetched
            .iter()
            .map(|(zone, result)| {
                let previous = existing
                    .get(&zone.object_name())
                    .and_then(|s| s.status.as_ref());
                ZoneLoad {
                    zone: zone.clone(),
                    nodes: counts.get(zone).copied().unwrap_or(0),
                    grams_per_kwh: match result {
                        Ok(reading) if is_live(reading) => Some(reading.grams_per_kwh),
                        Ok(_) => None,
                        Err(_) => previous.map(|p| p.intensity_grams_per_kwh),
                    },
                    threshold_grams_per_kwh: match self.settings.policy {
                        TaintPolicy::Absolute => self.settings.default_threshold_grams_per_kwh,
                        TaintPolicy::Relative => self.settings.floor_grams_per_kwh,
                    },
                }
            })
            .collect();
        let tuned = self.tune(&mut loads, &existing).await;
        let hysteresis = self.settings.hysteresis_grams_per_kwh;
        let mut allowed = allowed_zones(&loads, hysteresis, self.settings.max_tainted_fraction);
        if self.settings.policy == TaintPolicy::Absolute {
            // Zones whose agents may still hold taints from the previous poll.
            let held: BTreeSet<GridZone> = loads
                .iter()
                .filter(|load| {
                    existing
                        .get(&load.zone.object_name())
                        .and_then(|s| s.status.as_ref())
                        .is_some_and(|p| {
                            p.taint_allowed
                                && p.intensity_grams_per_kwh
                                    >= p.threshold_grams_per_kwh - hysteresis
                        })
                })
                .map(|load| load.zone.clone())
                .collect();
            stage_allowed(
                &mut allowed,
                &loads,
                &held,
                hysteresis,
                self.settings.max_tainted_fraction,
            );
        }
        let rank_inputs: Vec<RankInput> = fetched
            .iter()
            .zip(&loads)
            .map(|((zone, result), load)| {
                let previous = existing
                    .get(&zone.object_name())
                    .and_then(|s| s.status.as_ref());
                RankInput {
                    zone: zone.clone(),
                    nodes: load.nodes,
                    grams_per_kwh: match result {
                        Ok(reading) if is_live(reading) => {
                            Some(rank_value(reading, self.settings.rank_window))
                        }
                        Ok(_) => None,
                        // No answer: rank by what was ranked last time, or the kept intensity.
                        Err(_) => previous
                            .and_then(|p| p.ranking.as_ref()?.ranked_by_grams_per_kwh)
                            .or(load.grams_per_kwh),
                    },
                    tainted_before: previous
                        .and_then(|p| p.ranking.as_ref())
                        .is_some_and(|r| r.verdict == Verdict::Taint),
                }
            })
            .collect();
        let ranking = (self.settings.policy == TaintPolicy::Relative).then(|| {
            let mut ranking = rank_zones(&rank_inputs, &self.settings.relative());
            break_before_make(
                &mut ranking,
                &rank_inputs,
                self.settings.max_tainted_fraction,
            );
            ranking
        });

        let ranked: Vec<Option<ZoneRanking>> = (0..fetched.len())
            .map(|index| {
                let ranking = ranking.as_ref()?;
                Some(ZoneRanking::of(
                    ranking,
                    index,
                    rank_inputs[index].grams_per_kwh,
                ))
            })
            .collect();
        let grants: Vec<bool> = fetched
            .iter()
            .zip(&ranked)
            .map(|((zone, result), ranked)| match ranked {
                Some(r) => r.verdict.taints(),
                None => allowed.contains(zone) && result.as_ref().map_or(true, is_live),
            })
            .collect();
        // A node that joined a zone which keeps its grant is a new grant too:
        // while this poll revokes another zone's, whose agents have yet to
        // untaint, the grants cover only the nodes the last poll covered.
        let revoking = fetched.iter().zip(&grants).any(|((zone, _), granted)| {
            !granted
                && existing
                    .get(&zone.object_name())
                    .and_then(|s| s.status.as_ref())
                    .is_some_and(|p| p.taint_allowed)
        });

        let now = Timestamp::now();
        for (index, ((zone, result), load)) in fetched.iter().zip(&loads).enumerate() {
            let previous = existing
                .get(&zone.object_name())
                .and_then(|s| s.status.clone());
            let ranked = ranked[index].clone();
            let taint_allowed = grants[index];
            let covered_until = match (&previous, revoking) {
                (Some(p), true) => p.counted_at.clone().or_else(|| counted_at.clone()),
                _ => counted_at.clone(),
            };
            let nodes = u32::try_from(load.nodes).unwrap_or(u32::MAX);
            let mut status = match result {
                Ok(reading) => {
                    self.metrics.set_zone_intensity(
                        zone.as_str(),
                        &reading.source,
                        reading.grams_per_kwh,
                    );
                    CarbonScoreStatus::from_reading(
                        reading,
                        now,
                        load.threshold_grams_per_kwh,
                        taint_allowed,
                        nodes,
                    )
                }
                Err(error) => {
                    warn!(%zone, %error, "no provider answered; keeping the last good reading");
                    // Keep the last good values: agents judge their age and untaint when stale.
                    let mut kept = previous.unwrap_or_default();
                    kept.threshold_grams_per_kwh = load.threshold_grams_per_kwh;
                    kept.taint_allowed = taint_allowed;
                    kept.nodes = nodes;
                    kept.last_error = Some(error.to_string());
                    kept
                }
            };
            if let Some(t) = tuned.get(zone) {
                status.tuner_state = Some(t.state.clone());
            }
            status.policy = Some(self.settings.policy);
            status.counted_at = covered_until;
            status.message = ranked
                .as_ref()
                .map(|r| format!("{}: {}", r.describe(), r.verdict.explain()));
            status.ranking = ranked;
            if let Err(e) = self.write(zone, &status).await {
                let e = Error::from(e);
                self.metrics.record_error("poller", &e);
                warn!(%zone, error = %e, "writing the CarbonScore failed");
            }
        }
        self.revoke_zones_without_nodes(&existing, &counts, counted_at.as_ref())
            .await;
        info!(zones = counts.len(), nodes = labels.len(), "poll done");
        Ok(())
    }

    /// A zone whose nodes are all gone is not polled, but its grant must not
    /// outlive them: a node that joins it again would follow the old verdict,
    /// and the leader would take the zone as still holding its budget.
    async fn revoke_zones_without_nodes(
        &mut self,
        existing: &BTreeMap<String, CarbonScore>,
        counts: &BTreeMap<GridZone, usize>,
        counted_at: Option<&Time>,
    ) {
        for score in existing.values() {
            let Ok(zone) = GridZone::parse(&score.spec.zone) else {
                continue;
            };
            let Some(status) = score.status.as_ref() else {
                continue;
            };
            let granted = status.taint_allowed
                || status
                    .ranking
                    .as_ref()
                    .is_some_and(|r| r.verdict == Verdict::Taint);
            if counts.contains_key(&zone) || !granted {
                continue;
            }
            let mut revoked = status.clone();
            revoked.taint_allowed = false;
            revoked.nodes = 0;
            revoked.counted_at = counted_at.cloned();
            if let Some(ranking) = revoked.ranking.as_mut() {
                ranking.verdict = Verdict::NotRanked;
            }
            revoked.message = Some("no nodes in this zone at the last poll".into());
            if let Err(e) = self.write(&zone, &revoked).await {
                let e = Error::from(e);
                self.metrics.record_error("poller", &e);
                warn!(%zone, error = %e, "revoking the grant of a zone without nodes failed");
            }
        }
    }

    /// Steps the tuner (when on) and puts its thresholds into `loads`.
    async fn tune(
        &self,
        loads: &mut [ZoneLoad],
        existing: &BTreeMap<String, CarbonScore>,
    ) -> BTreeMap<GridZone, Tuned> {
        let Some(params) = &self.settings.tuner else {
            return BTreeMap::new();
        };
        let saved: BTreeMap<GridZone, String> = loads
            .iter()
            .filter_map(|l| {
                let status = existing.get(&l.zone.object_name())?.status.as_ref()?;
                Some((l.zone.clone(), status.tuner_state.clone()?))
            })
            .collect();
        let pending = tuning::pending(&self.client).await;
        let tuned = tuning::step_zones(params, loads, &saved, pending, self.settings.interval);
        for load in loads.iter_mut() {
            if let Some(t) = tuned.get(&load.zone) {
                load.threshold_grams_per_kwh = t.threshold_grams_per_kwh;
                self.metrics
                    .set_tuner_threshold(load.zone.as_str(), t.threshold_grams_per_kwh);
                if let Some(reward) = t.reward {
                    self.metrics.set_tuner_reward(load.zone.as_str(), reward);
                }
                if let Some(action) = t.action {
                    self.metrics
                        .record_tuner_decision(load.zone.as_str(), action);
                }
            }
        }
        tuned
    }

    async fn write(
        &mut self,
        zone: &GridZone,
        status: &CarbonScoreStatus,
    ) -> Result<(), kube::Error> {
        // A leader that was frozen may wake here before its elector steps it down.
        if !self.fence.holds() {
            warn!(%zone, "no longer sure to lead: CarbonScore not written");
            return Ok(());
        }
        let api: Api<CarbonScore> = Api::all(self.client.clone());
        let name = zone.object_name();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if !self.created.contains(zone) {
            let object = CarbonScore::for_zone(zone);
            api.patch(&name, &params, &Patch::Apply(&object)).await?;
            self.created.insert(zone.clone());
        }
        let patch = json!({
            "apiVersion": "carbon-kube.io/v1alpha1",
            "kind": "CarbonScore",
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
