//! The cluster-wide taint budget (leader): never more than a set share of the
//! nodes tainted, spent on the dirtiest zones first, so the greenest capacity
//! always stays schedulable.

use std::collections::BTreeSet;

use crate::carbon::GridZone;

/// One zone as the leader sees it in this poll.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneLoad {
    pub zone: GridZone,
    pub nodes: usize,
    /// `None` when no provider answered: such a zone's agents untaint (no data).
    pub grams_per_kwh: Option<f64>,
    pub threshold_grams_per_kwh: f64,
}

/// Largest number of nodes that may be tainted at once.
pub fn node_budget(total_nodes: usize, max_tainted_fraction: f64) -> usize {
    // Rounding down keeps the promise "at most this share" for small clusters.
    (total_nodes as f64 * max_tainted_fraction.clamp(0.0, 1.0)).floor() as usize
}

/// Zones whose agents may taint. Every zone that could hold a taint (at or
/// above `threshold - hysteresis`) competes, dirtiest first; a zone is allowed
/// only if all of its nodes fit in what is left of the budget. Zones below the
/// band are allowed too: their agents untaint anyway, and the next poll, which
/// writes intensity and allowance together, re-decides if they rise.
pub fn allowed_zones(
    zones: &[ZoneLoad],
    hysteresis_grams_per_kwh: f64,
    max_tainted_fraction: f64,
) -> BTreeSet<GridZone> {
    let total: usize = zones.iter().map(|z| z.nodes).sum();
    let mut left = node_budget(total, max_tainted_fraction);
    let mut candidates: Vec<(&ZoneLoad, f64)> = Vec::new();
    let mut allowed = BTreeSet::new();
    for zone in zones {
        match zone.grams_per_kwh {
            Some(g) if g >= zone.threshold_grams_per_kwh - hysteresis_grams_per_kwh => {
                candidates.push((zone, g));
            }
            _ => {
                allowed.insert(zone.zone.clone());
            }
        }
    }
    // Dirtiest first, then by name so every leader decides the same way.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.zone.cmp(&b.0.zone)));
    for (zone, _) in candidates {
        if zone.nodes <= left {
            left -= zone.nodes;
            allowed.insert(zone.zone.clone());
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(zone: &str, nodes: usize, grams_per_kwh: Option<f64>) -> ZoneLoad {
        ZoneLoad {
            zone: GridZone::parse(zone).unwrap(),
            nodes,
            grams_per_kwh,
            threshold_grams_per_kwh: 300.0,
        }
    }

    fn names(set: &BTreeSet<GridZone>) -> Vec<&str> {
        set.iter().map(GridZone::as_str).collect()
    }

    #[test]
    fn budget_rounds_down() {
        assert_eq!(node_budget(3, 0.5), 1);
        assert_eq!(node_budget(10, 0.5), 5);
        assert_eq!(node_budget(10, 0.0), 0);
        assert_eq!(node_budget(10, 7.0), 10);
    }

    #[test]
    fn dirtiest_zones_spend_the_budget_first() {
        let zones = [
            load("PL", 2, Some(700.0)),
            load("DE", 2, Some(450.0)),
            load("FR", 2, Some(60.0)),
            load("NL", 2, Some(400.0)),
        ];
        // 8 nodes, budget 4: PL and DE fit, NL does not; FR is clean.
        assert_eq!(names(&allowed_zones(&zones, 20.0, 0.5)), ["DE", "FR", "PL"]);
    }

    #[test]
    fn with_every_zone_dirty_the_share_stays_untainted() {
        let zones = [
            load("A", 1, Some(500.0)),
            load("B", 1, Some(400.0)),
            load("C", 1, Some(350.0)),
        ];
        let allowed = allowed_zones(&zones, 20.0, 0.5);
        assert_eq!(names(&allowed), ["A"]);
        let tainted: usize = zones
            .iter()
            .filter(|z| allowed.contains(&z.zone))
            .map(|z| z.nodes)
            .sum();
        assert!(tainted <= node_budget(3, 0.5));
    }

    #[test]
    fn a_big_zone_that_does_not_fit_lets_smaller_dirty_zones_in() {
        let zones = [
            load("BIG", 6, Some(800.0)),
            load("SMALL", 1, Some(400.0)),
            load("CLEAN", 3, Some(100.0)),
        ];
        assert_eq!(names(&allowed_zones(&zones, 20.0, 0.5)), ["CLEAN", "SMALL"]);
    }

    #[test]
    fn zones_in_the_hysteresis_band_compete_and_zones_without_data_are_free() {
        let zones = [
            load("BAND", 2, Some(285.0)),
            load("DIRTY", 2, Some(600.0)),
            load("NODATA", 2, None),
        ];
        // 6 nodes, budget 3: DIRTY takes 2, BAND (2) no longer fits.
        assert_eq!(
            names(&allowed_zones(&zones, 20.0, 0.5)),
            ["DIRTY", "NODATA"]
        );
    }

    #[test]
    fn ties_break_by_zone_name() {
        let zones = [load("B", 1, Some(500.0)), load("A", 1, Some(500.0))];
        assert_eq!(names(&allowed_zones(&zones, 20.0, 0.5)), ["A"]);
    }
}
