//! What each zone offers the planner this round: its forecast and the CPU
//! of its schedulable nodes. Deferral and the Kueue check both start from it.

use super::*;

/// Every zone with a CarbonScore, its forecast (or why there is none to plan on) and the
/// allocatable CPU of its schedulable nodes, nothing requested yet; and each node's zone
/// (index). Deferral and the Kueue check start each round from it.
pub fn zone_capacity(
    scores: &Store<CarbonScore>,
    nodes: &Store<Node>,
    settings: &DeferralSettings,
    now: Timestamp,
) -> (Vec<ZoneState>, HashMap<String, usize>) {
    let (default_zone, max_age) = (settings.default_zone.as_ref(), settings.max_age);
    let mut zones: Vec<ZoneState> = scores
        .state()
        .iter()
        .filter_map(|s| {
            let zone = GridZone::parse(&s.spec.zone).ok()?;
            let forecast = match &s.status {
                Some(status) => ZoneSeries::from_snapshot(&zone, &status.into(), now, max_age),
                None => Err(format!("zone {zone} has no carbon data yet")),
            };
            Some(ZoneState {
                zone,
                allocatable: 0.0,
                requested: 0.0,
                deferred: Vec::new(),
                forecast,
            })
        })
        .collect();
    zones.sort_by(|a, b| a.zone.cmp(&b.zone));
    let mut zone_of_node: HashMap<String, usize> = HashMap::new();
    for node in nodes.state() {
        let Some(zone) = zones::zone_for_node(node.labels(), default_zone).zone else {
            continue;
        };
        let Some(index) = zones.iter().position(|z| z.zone == zone) else {
            continue;
        };
        zone_of_node.insert(node.name_any(), index);
        let schedulable = !node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if schedulable {
            zones[index].allocatable += node_allocatable_cpu(&node);
        }
    }
    (zones, zone_of_node)
}
