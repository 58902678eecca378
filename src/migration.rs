//! Migration: every agent may move opted-in pods off its own node once the
//! node has carried the carbon taint for a while, through the Eviction API
//! (so PodDisruptionBudgets hold), a few per hour at most, and only when
//! greener capacity exists elsewhere. The pod's controller creates the
//! replacement; the scheduler places it away from tainted nodes.
//!
//! The decisions here are pure; [`controller`] is the agent's loop.

pub mod controller;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::node::{CONDITION_TYPE, TAINT_KEY};
use crate::providers::static_table;

/// The label a pod carries to opt in (value `true`).
pub const OPT_IN_LABEL: &str = "carbon-kube.io/migrate";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
const HOUR: Duration = Duration::from_secs(3600);

/// At most `per_hour` evictions in any sliding hour.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_hour: u32,
    recent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_hour,
            recent: VecDeque::new(),
        }
    }

    /// Whether one more eviction fits at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.recent.pop_front();
        }
        (self.recent.len() as u64) < u64::from(self.per_hour)
    }

    /// Counts an eviction that happened at `now`.
    pub fn record(&mut self, now: Instant) {
        self.recent.push_back(now);
    }

    /// How long until the next eviction fits (zero when it fits now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.allows(now) {
            return Duration::ZERO;
        }
        self.recent.front().map_or(Duration::ZERO, |t| {
            HOUR.saturating_sub(now.saturating_duration_since(*t))
        })
    }
}

/// `None` when the node does not carry our taint; else since when, if known:
/// the taint's `timeAdded` (the agent sets it), else the transition time of a
/// `True` CarbonIntensityHigh condition.
pub fn tainted_since(node: &Node) -> Option<Option<Timestamp>> {
    let taint = node
        .spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == TAINT_KEY)?;
    let condition = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == CONDITION_TYPE && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref());
    Some(taint.time_added.as_ref().or(condition).map(|t| t.0))
}

/// The effect of our taint on the node, if it carries it.
pub fn taint_effect(node: &Node) -> Option<String> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == TAINT_KEY)
        .map(|t| t.effect.clone())
}

/// A zone as migration sees it, from its CarbonScore.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneView {
    pub zone: GridZone,
    pub grams_per_kwh: f64,
    pub threshold_grams_per_kwh: f64,
    pub taint_allowed: bool,
    /// Decided by the relative policy: the allowance alone says whether it is tainted.
    pub ranked: bool,
    pub nodes: u32,
    pub observed_at: Timestamp,
    pub source: String,
}

impl ZoneView {
    pub fn of(score: &CarbonScore) -> Option<Self> {
        let status = score.status.as_ref()?;
        Some(Self {
            zone: GridZone::parse(&score.spec.zone).ok()?,
            grams_per_kwh: status.intensity_grams_per_kwh,
            threshold_grams_per_kwh: status.threshold_grams_per_kwh,
            taint_allowed: status.taint_allowed,
            ranked: score.zone_score()?.ranking.is_some(),
            nodes: status.nodes,
            observed_at: status.observed_at.as_ref()?.0,
            source: status.source.clone(),
        })
    }
}

/// Greener capacity: the greenest zone other than `own` that
/// - has nodes,
/// - has fresh, live data (not older than `max_age`, not the static yearly table),
/// - is greener than `own` now, and
/// - is certainly not tainted: the leader does not allow tainting it, or
///   (absolute policy) its intensity is below its threshold minus the
///   hysteresis, where every agent removes the taint.
///
/// Whether its nodes have room is the scheduler's call; a replacement that
/// finds none waits, like any pod.
pub fn greener_capacity<'a>(
    own: &ZoneView,
    zones: &'a [ZoneView],
    hysteresis_grams_per_kwh: f64,
    max_age: Duration,
    now: Timestamp,
) -> Option<&'a ZoneView> {
    let max_age = SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX);
    zones
        .iter()
        .filter(|z| z.zone != own.zone && z.nodes > 0)
        .filter(|z| z.source != static_table::NAME && now.duration_since(z.observed_at) <= max_age)
        .filter(|z| z.grams_per_kwh < own.grams_per_kwh)
        .filter(|z| {
            !z.taint_allowed
                || (!z.ranked
                    && z.grams_per_kwh < z.threshold_grams_per_kwh - hysteresis_grams_per_kwh)
        })
        .min_by(|a, b| a.grams_per_kwh.total_cmp(&b.grams_per_kwh))
}

/// Why a pod on a tainted node is not evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    NotOptedIn,
    Terminating,
    Finished,
    /// No controller would replace it (a bare pod, or a static pod).
    NoController,
    /// A DaemonSet's replacement comes back to the same node.
    DaemonSet,
    /// It tolerates the carbon taint, so its replacement may come back.
    ToleratesTaint,
    /// Its node selector pins it to this node or this zone.
    Pinned,
}

impl Ineligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOptedIn => "not opted in",
            Self::Terminating => "terminating",
            Self::Finished => "finished",
            Self::NoController => "no controller would replace it",
            Self::DaemonSet => "a DaemonSet pod comes back to the same node",
            Self::ToleratesTaint => {
                "it tolerates the carbon taint, so its replacement may come back"
            }
            Self::Pinned => "its node selector pins it to this node or zone",
        }
    }
}

/// Whether `pod`, on `node` (in `zone`, tainted with `effect`), may be evicted.
pub fn eligibility(pod: &Pod, node: &str, zone: &GridZone, effect: &str) -> Result<(), Ineligible> {
    if pod.labels().get(OPT_IN_LABEL).map(String::as_str) != Some("true") {
        return Err(Ineligible::NotOptedIn);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Ineligible::Terminating);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Err(Ineligible::Finished);
    }
    let controller = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match controller.map(|o| o.kind.as_str()) {
        None | Some("Node") => return Err(Ineligible::NoController),
        Some("DaemonSet") => return Err(Ineligible::DaemonSet),
        Some(_) => {}
    }
    let spec = pod.spec.as_ref();
    let tolerates = spec
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|tolerations| {
            tolerations.iter().any(|t| {
                let key = t.key.as_deref().unwrap_or_default();
                let key_matches =
                    key == TAINT_KEY || (key.is_empty() && t.operator.as_deref() == Some("Exists"));
                let effect_matches = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == effect);
                key_matches && effect_matches
            })
        });
    if tolerates {
        return Err(Ineligible::ToleratesTaint);
    }
    let empty = BTreeMap::new();
    let selector = spec
        .and_then(|s| s.node_selector.as_ref())
        .unwrap_or(&empty);
    let pinned_here = selector.get(HOSTNAME_LABEL).map(String::as_str) == Some(node);
    let pinned_zone = !selector.is_empty()
        && crate::zones::zone_for_node(selector, None).zone.as_ref() == Some(zone);
    if pinned_here || pinned_zone {
        return Err(Ineligible::Pinned);
    }
    Ok(())
}

/// Whether a node tainted since `since` has been tainted long enough.
pub fn long_enough(since: Timestamp, now: Timestamp, migrate_after: Duration) -> bool {
    let after = SignedDuration::try_from(migrate_after).unwrap_or(SignedDuration::MAX);
    now.duration_since(since) >= after
}

#[cfg(test)]
mod tests;
