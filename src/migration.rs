//! Migration: every agent may move opted-in pods off its own node once the
//! node has carried the carbon taint for a while, through the Eviction API
//! (so PodDisruptionBudgets hold), a few per hour at most, and only when
//! greener capacity exists elsewhere. The pod's controller creates the
//! replacement; the scheduler places it away from tainted nodes.
//!
//! The pure decisions are the core's ([`carbon_kube_core::migration`]); this
//! module reads nodes and pods into them; [`controller`] is the agent's loop.

pub use carbon_kube_core::migration::*;

pub mod controller;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::node::{CONDITION_TYPE, TAINT_KEY};

/// The label a pod carries to opt in (value `true`).
pub const OPT_IN_LABEL: &str = "carbon-kube.io/migrate";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

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

/// A zone as migration sees it, from its CarbonScore (`None` before its first reading).
pub fn zone_view(score: &CarbonScore) -> Option<ZoneView> {
    let status = score.status.as_ref()?;
    Some(ZoneView {
        zone: GridZone::parse(&score.spec.zone).ok()?,
        grams_per_kwh: status.intensity_grams_per_kwh,
        threshold_grams_per_kwh: status.threshold_grams_per_kwh,
        taint_allowed: status.taint_allowed,
        ranked: score.zone_score()?.ranking.is_some(),
        nodes: status.nodes,
        observed_at: status.observed_at.as_ref()?.0,
        source: status.kind,
    })
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

#[cfg(test)]
mod tests;
