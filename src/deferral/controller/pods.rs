//! What the deferral loop reads off a pod.

use super::*;

/// True when the pod still carries our gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == GATE))
}

/// True for a pod that opted in to deferral (whether still held or not).
pub(super) fn is_deferrable(pod: &Pod) -> bool {
    let annotations = pod.annotations();
    annotations.contains_key(LATEST_START) || annotations.contains_key(MAX_DELAY)
}

/// The zone a pod's node selector pins it to (grid-zone label, or a known region).
pub(super) fn selector_zone(pod: &Pod) -> Option<GridZone> {
    let selector = pod.spec.as_ref()?.node_selector.as_ref()?;
    zones::zone_for_node(selector, None).zone
}

/// When a bound pod was bound (its PodScheduled condition), else created.
pub(super) fn bound_at(pod: &Pod) -> Option<Timestamp> {
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    scheduled.or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
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
