//! The cluster-wide taint budget (leader): never more than a set share of the
//! nodes tainted, spent on the dirtiest zones first, so the greenest capacity
//! always stays schedulable.
//!
//! Two policies spend it. `absolute`: zones above a fixed threshold compete
//! ([`allowed_zones`]; each agent then compares its zone with the threshold).
//! `relative` (the default): the leader ranks the zones against each other and
//! gives each a [`Verdict`] ([`rank_zones`]); agents follow the verdict. With
//! the budget ranking zones anyway, a threshold below the cleanest zone behaves
//! like no threshold, and one above it forgoes savings whenever every zone is
//! cleaner than usual: what pays is the difference between zones, not the level.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::carbon::GridZone;

/// How the leader decides which zones may be tainted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TaintPolicy {
    /// The dirtiest zones, when dirtier than the cleanest schedulable zone by the minimum spread.
    #[default]
    Relative,
    /// Zones above a fixed threshold.
    Absolute,
}

impl TaintPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relative => "relative",
            Self::Absolute => "absolute",
        }
    }
}

/// One zone as the leader sees it in this poll.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneLoad {
    pub zone: GridZone,
    pub nodes: usize,
    /// `None` when no provider answered: such a zone's agents untaint (no data).
    pub grams_per_kwh: Option<f64>,
    pub threshold_grams_per_kwh: f64,
}

#[cfg(any(test, feature = "fixtures"))]
impl ZoneLoad {
    /// A zone with a 300 g/kWh threshold.
    pub fn for_tests(zone: &str, nodes: usize, grams_per_kwh: Option<f64>) -> Self {
        Self {
            zone: GridZone::parse(zone).unwrap(),
            nodes,
            grams_per_kwh,
            threshold_grams_per_kwh: 300.0,
        }
    }
}

impl ZoneLoad {
    /// The zone's intensity when it could hold a taint (at or above
    /// `threshold - hysteresis`), so that it competes for the budget.
    pub fn competing(&self, hysteresis_grams_per_kwh: f64) -> Option<f64> {
        self.grams_per_kwh
            .filter(|g| *g >= self.threshold_grams_per_kwh - hysteresis_grams_per_kwh)
    }
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
        match zone.competing(hysteresis_grams_per_kwh) {
            Some(g) => candidates.push((zone, g)),
            None => {
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

/// Defaults of the relative policy, shared by the agent's and the simulator's flags.
pub const DEFAULT_MIN_SPREAD_GRAMS_PER_KWH: f64 = 50.0;
pub const DEFAULT_MIN_SPREAD_PERCENT: f64 = 20.0;

/// Settings of the relative policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RelativeParams {
    pub max_tainted_fraction: f64,
    /// A zone is tainted only when dirtier than the cleanest zone by at least this…
    pub min_spread_grams_per_kwh: f64,
    /// …and by at least this share (per cent) of the cleanest zone's intensity.
    pub min_spread_percent: f64,
    /// A tainted zone keeps its taint until its spread falls below the minimum
    /// minus this, and another zone takes its place in the budget only when
    /// dirtier by more than this: zones that cross do not flap.
    pub hysteresis_grams_per_kwh: f64,
    /// Never taint a zone below this intensity (0: no floor).
    pub floor_grams_per_kwh: f64,
}

/// One zone as the relative ranking sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RankInput {
    pub zone: GridZone,
    pub nodes: usize,
    /// What the zone is ranked by (intensity, or its forecast mean over the
    /// dwell); `None` without live data.
    pub grams_per_kwh: Option<f64>,
    /// The verdict of the previous poll was [`Verdict::Taint`].
    pub tainted_before: bool,
}

/// The leader's word on one zone under the relative policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Verdict {
    /// Dirty enough against the cleanest zone and within the budget: taint.
    Taint,
    /// Dirty enough, but the budget is spent on dirtier zones.
    BudgetExhausted,
    /// Not dirtier than the cleanest zone by the minimum spread.
    SpreadTooSmall,
    /// Below the configured floor.
    BelowFloor,
    /// The cleanest zone, where work should go.
    Cleanest,
    /// The cluster's only zone: nothing to shift between zones.
    SingleZone,
    /// No live data to rank the zone by; its nodes are left alone.
    NotRanked,
}

impl Verdict {
    pub fn taints(self) -> bool {
        self == Self::Taint
    }

    /// What the verdict means for the zone's nodes, for the CarbonScore's message.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Taint => {
                "its nodes are tainted after the dwell, so new pods prefer cleaner zones"
            }
            Self::BudgetExhausted => {
                "dirty enough to taint, but the taint budget is spent on dirtier zones"
            }
            Self::SpreadTooSmall => {
                "not dirtier than the cleanest zone by the minimum spread, so not tainted"
            }
            Self::BelowFloor => "below the floor, so not tainted",
            Self::Cleanest => {
                "the cleanest zone: never tainted, work shifted from dirtier zones comes here"
            }
            Self::SingleZone => {
                "the cluster's only grid zone: there is nothing to shift between zones, so it is never tainted (metrics and deferral still work)"
            }
            Self::NotRanked => "no live data to rank it by, so not tainted",
        }
    }
}

/// One zone's place in the ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub zone: GridZone,
    pub verdict: Verdict,
    /// 1 for the dirtiest zone with data; `None` without data.
    pub rank: Option<usize>,
}

/// The ranking of every zone, with what it was measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// In the order of the input.
    pub zones: Vec<Ranked>,
    /// The cleanest zone with data and its value: never tainted, so always schedulable.
    pub cleanest: Option<(GridZone, f64)>,
    /// How much dirtier than the cleanest a zone must be to be tainted.
    pub required_spread_grams_per_kwh: f64,
    /// Zones with data.
    pub ranked: usize,
}

/// Ranks the zones and gives each a verdict.
///
/// The cleanest zone with data is the reference and is never tainted, so
/// zones without data do not count as schedulable greener capacity. A zone
/// is a candidate when it is dirtier than the reference by the required
/// spread (less the hysteresis if its verdict was `Taint` before) and not
/// below the floor (idem). Candidates spend the budget dirtiest first, whole
/// zones at a time; a zone that held a taint is ranked as if the hysteresis
/// were added to its value, so a zone that overtakes it by less keeps waiting.
pub fn rank_zones(zones: &[RankInput], params: &RelativeParams) -> Ranking {
    let total: usize = zones.iter().map(|z| z.nodes).sum();
    let mut left = node_budget(total, params.max_tainted_fraction);
    let with_data: Vec<(usize, f64)> = zones
        .iter()
        .enumerate()
        .filter_map(|(i, z)| z.grams_per_kwh.map(|g| (i, g)))
        .collect();
    // Dirtiest first, then by name so every leader decides the same way.
    let mut order = with_data.clone();
    order.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| zones[a.0].zone.cmp(&zones[b.0].zone))
    });
    let cleanest = order.last().copied();
    let reference = cleanest.map_or(0.0, |(_, g)| g);
    let required = params
        .min_spread_grams_per_kwh
        .max(params.min_spread_percent / 100.0 * reference);
    let mut verdicts: Vec<Verdict> = zones.iter().map(|_| Verdict::NotRanked).collect();
    let mut ranks: Vec<Option<usize>> = vec![None; zones.len()];
    let mut candidates: Vec<(usize, f64)> = Vec::new();
    for (position, &(i, g)) in order.iter().enumerate() {
        ranks[i] = Some(position + 1);
        let zone = &zones[i];
        let slack = if zone.tainted_before {
            params.hysteresis_grams_per_kwh
        } else {
            0.0
        };
        verdicts[i] = if zones.len() == 1 {
            Verdict::SingleZone
        } else if Some(i) == cleanest.map(|c| c.0) {
            Verdict::Cleanest
        } else if g - reference < required - slack {
            Verdict::SpreadTooSmall
        } else if params.floor_grams_per_kwh > 0.0 && g < params.floor_grams_per_kwh - slack {
            Verdict::BelowFloor
        } else {
            candidates.push((i, g + slack));
            Verdict::BudgetExhausted
        };
    }
    candidates.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| zones[a.0].zone.cmp(&zones[b.0].zone))
    });
    for (i, _) in candidates {
        if zones[i].nodes <= left {
            left -= zones[i].nodes;
            verdicts[i] = Verdict::Taint;
        }
    }
    Ranking {
        zones: zones
            .iter()
            .enumerate()
            .map(|(i, z)| Ranked {
                zone: z.zone.clone(),
                verdict: verdicts[i],
                rank: ranks[i],
            })
            .collect(),
        cleanest: cleanest.map(|(i, g)| (zones[i].zone.clone(), g)),
        required_spread_grams_per_kwh: required,
        ranked: with_data.len(),
    }
}

/// Break before make, for the leader between two polls: a zone granted the
/// budget in the previous poll may keep tainted nodes until its agents see the
/// grant revoked, so a zone newly granted gets only the budget those zones
/// leave; one that does not fit waits for the next poll, once the revoked
/// zone's agents have had a poll interval to untaint. Without this, a swap
/// taints the new zone's nodes (their dwell already ran while they waited for
/// budget) in the same instant the old zone's untaint: over budget until the
/// slower side acts. `newcomers` are (index, nodes) in the order the budget is
/// spent; returns the indices of those that must wait.
fn waiting(budget: usize, held: usize, newcomers: &[(usize, usize)]) -> Vec<usize> {
    let mut free = budget.saturating_sub(held);
    newcomers
        .iter()
        .filter_map(|&(index, nodes)| {
            if nodes <= free {
                free -= nodes;
                None
            } else {
                Some(index)
            }
        })
        .collect()
}

/// [`waiting`] under the relative policy: a zone held the budget if its
/// previous verdict was `Taint`; a newcomer that must wait is
/// `BudgetExhausted` for this poll. `zones` and `ranking` are in the same order.
pub fn break_before_make(ranking: &mut Ranking, zones: &[RankInput], max_tainted_fraction: f64) {
    let total: usize = zones.iter().map(|z| z.nodes).sum();
    let held: usize = zones
        .iter()
        .filter(|z| z.tainted_before)
        .map(|z| z.nodes)
        .sum();
    // Newcomers dirtiest first, as the ranking spent the budget.
    let mut newcomers: Vec<usize> = (0..zones.len())
        .filter(|&i| ranking.zones[i].verdict.taints() && !zones[i].tainted_before)
        .collect();
    newcomers.sort_by_key(|&i| ranking.zones[i].rank);
    let newcomers: Vec<(usize, usize)> =
        newcomers.into_iter().map(|i| (i, zones[i].nodes)).collect();
    for i in waiting(node_budget(total, max_tainted_fraction), held, &newcomers) {
        ranking.zones[i].verdict = Verdict::BudgetExhausted;
    }
}

/// [`waiting`] under the absolute policy: `allowed` is this poll's
/// [`allowed_zones`]; `held` are the zones whose agents may still hold taints
/// from the previous poll (allowed then, and competing then). A competing zone
/// allowed now but not held is a newcomer; one that must wait is taken out of
/// `allowed` for this poll.
pub fn stage_allowed(
    allowed: &mut BTreeSet<GridZone>,
    zones: &[ZoneLoad],
    held: &BTreeSet<GridZone>,
    hysteresis_grams_per_kwh: f64,
    max_tainted_fraction: f64,
) {
    let total: usize = zones.iter().map(|z| z.nodes).sum();
    let held_nodes: usize = zones
        .iter()
        .filter(|z| held.contains(&z.zone))
        .map(|z| z.nodes)
        .sum();
    let mut newcomers: Vec<(usize, f64)> = zones
        .iter()
        .enumerate()
        .filter(|(_, z)| allowed.contains(&z.zone) && !held.contains(&z.zone))
        .filter_map(|(i, z)| Some((i, z.competing(hysteresis_grams_per_kwh)?)))
        .collect();
    // Dirtiest first, then by name, as `allowed_zones` spent the budget.
    newcomers.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| zones[a.0].zone.cmp(&zones[b.0].zone))
    });
    let newcomers: Vec<(usize, usize)> = newcomers
        .into_iter()
        .map(|(i, _)| (i, zones[i].nodes))
        .collect();
    for i in waiting(
        node_budget(total, max_tainted_fraction),
        held_nodes,
        &newcomers,
    ) {
        allowed.remove(&zones[i].zone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(zone: &str, nodes: usize, grams_per_kwh: Option<f64>) -> ZoneLoad {
        ZoneLoad::for_tests(zone, nodes, grams_per_kwh)
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

    fn params() -> RelativeParams {
        RelativeParams {
            max_tainted_fraction: 0.5,
            min_spread_grams_per_kwh: 50.0,
            min_spread_percent: 20.0,
            hysteresis_grams_per_kwh: 20.0,
            floor_grams_per_kwh: 0.0,
        }
    }

    fn input(zone: &str, nodes: usize, grams_per_kwh: Option<f64>, before: bool) -> RankInput {
        RankInput {
            zone: GridZone::parse(zone).unwrap(),
            nodes,
            grams_per_kwh,
            tainted_before: before,
        }
    }

    fn verdicts(ranking: &Ranking) -> Vec<(&str, Verdict)> {
        ranking
            .zones
            .iter()
            .map(|r| (r.zone.as_str(), r.verdict))
            .collect()
    }

    #[test]
    fn the_dirtiest_zones_are_ranked_first_and_tainted_up_to_the_budget() {
        let zones = [
            input("DE", 2, Some(450.0), false),
            input("FR", 2, Some(60.0), false),
            input("PL", 2, Some(700.0), false),
            input("NL", 2, Some(400.0), false),
        ];
        let r = rank_zones(&zones, &params());
        assert_eq!(
            verdicts(&r),
            [
                ("DE", Verdict::Taint),
                ("FR", Verdict::Cleanest),
                ("PL", Verdict::Taint),
                ("NL", Verdict::BudgetExhausted),
            ]
        );
        let ranks: Vec<_> = r.zones.iter().map(|z| z.rank).collect();
        assert_eq!(ranks, [Some(2), Some(4), Some(1), Some(3)]);
        assert_eq!(r.cleanest, Some((GridZone::parse("FR").unwrap(), 60.0)));
        assert_eq!(r.ranked, 4);
    }

    #[test]
    fn the_level_does_not_matter_only_the_spread() {
        // Every zone clean by any absolute standard: the dirtiest still pays.
        let low = [
            input("A", 1, Some(40.0), false),
            input("B", 1, Some(110.0), false),
        ];
        assert_eq!(rank_zones(&low, &params()).zones[1].verdict, Verdict::Taint);
        // Every zone dirty, but alike: nothing to gain, nothing tainted.
        let alike = [
            input("A", 1, Some(600.0), false),
            input("B", 1, Some(680.0), false),
        ];
        assert_eq!(
            verdicts(&rank_zones(&alike, &params())),
            [("A", Verdict::Cleanest), ("B", Verdict::SpreadTooSmall)]
        );
    }

    #[test]
    fn the_spread_must_reach_both_the_grams_and_the_share() {
        let spread = |cleanest: f64, other: f64| {
            let zones = [
                input("A", 1, Some(cleanest), false),
                input("B", 1, Some(other), false),
            ];
            let r = rank_zones(&zones, &params());
            (r.required_spread_grams_per_kwh, r.zones[1].verdict)
        };
        // Cleanest 100: 20 % is 20 g, so the 50 g minimum decides.
        assert_eq!(spread(100.0, 149.9), (50.0, Verdict::SpreadTooSmall));
        assert_eq!(spread(100.0, 150.0), (50.0, Verdict::Taint));
        // Cleanest 400: 20 % is 80 g.
        assert_eq!(spread(400.0, 479.0), (80.0, Verdict::SpreadTooSmall));
        assert_eq!(spread(400.0, 480.0), (80.0, Verdict::Taint));
    }

    #[test]
    fn the_floor_spares_zones_below_it_with_hysteresis() {
        let p = RelativeParams {
            floor_grams_per_kwh: 200.0,
            ..params()
        };
        let zones = |b: f64, before: bool| {
            [
                input("A", 1, Some(20.0), false),
                input("B", 1, Some(b), before),
            ]
        };
        assert_eq!(
            rank_zones(&zones(190.0, false), &p).zones[1].verdict,
            Verdict::BelowFloor
        );
        assert_eq!(
            rank_zones(&zones(200.0, false), &p).zones[1].verdict,
            Verdict::Taint
        );
        assert_eq!(
            rank_zones(&zones(185.0, true), &p).zones[1].verdict,
            Verdict::Taint,
            "a tainted zone keeps its taint down to floor - hysteresis"
        );
        assert_eq!(
            rank_zones(&zones(179.0, true), &p).zones[1].verdict,
            Verdict::BelowFloor
        );
    }

    #[test]
    fn a_tainted_zone_keeps_its_taint_until_its_spread_falls_below_minimum_less_hysteresis() {
        let zones = |b: f64, before: bool| {
            [
                input("A", 1, Some(100.0), false),
                input("B", 1, Some(b), before),
            ]
        };
        let verdict = |b, before| rank_zones(&zones(b, before), &params()).zones[1].verdict;
        assert_eq!(verdict(140.0, false), Verdict::SpreadTooSmall);
        assert_eq!(verdict(140.0, true), Verdict::Taint);
        assert_eq!(verdict(130.0, true), Verdict::Taint, "exactly 50 - 20");
        assert_eq!(verdict(129.9, true), Verdict::SpreadTooSmall);
    }

    #[test]
    fn a_zone_that_overtakes_a_tainted_one_by_less_than_the_hysteresis_waits() {
        // One node of four may be tainted.
        let p = RelativeParams {
            max_tainted_fraction: 0.25,
            ..params()
        };
        let zones = |a: f64, b: f64, a_before: bool, b_before: bool| {
            [
                input("A", 1, Some(a), a_before),
                input("B", 1, Some(b), b_before),
                input("C", 1, Some(50.0), false),
                input("D", 1, Some(60.0), false),
            ]
        };
        let taints = |z: [RankInput; 4]| -> Vec<&'static str> {
            let r = rank_zones(&z, &p);
            ["A", "B", "C", "D"]
                .into_iter()
                .zip(&r.zones)
                .filter(|(_, z)| z.verdict.taints())
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(taints(zones(500.0, 400.0, false, false)), ["A"]);
        // B passes A by 10 g: A keeps the budget.
        assert_eq!(taints(zones(500.0, 510.0, true, false)), ["A"]);
        // By exactly the hysteresis: a tie with A's boosted value, and A sorts first.
        assert_eq!(taints(zones(500.0, 520.0, true, false)), ["A"]);
        // By more: the taint moves, and then stays with B when A comes back a little.
        assert_eq!(taints(zones(500.0, 521.0, true, false)), ["B"]);
        assert_eq!(taints(zones(530.0, 521.0, false, true)), ["B"]);
    }

    #[test]
    fn a_single_zone_has_nothing_to_shift() {
        let r = rank_zones(&[input("DE", 5, Some(800.0), true)], &params());
        assert_eq!(verdicts(&r), [("DE", Verdict::SingleZone)]);
        assert_eq!(r.zones[0].rank, Some(1));
    }

    #[test]
    fn zones_without_data_are_not_ranked_and_are_not_the_reference() {
        let zones = [
            input("A", 1, None, true),
            input("B", 1, Some(300.0), false),
            input("C", 1, Some(200.0), false),
            input("D", 1, Some(90.0), false),
        ];
        let r = rank_zones(&zones, &params());
        assert_eq!(
            verdicts(&r),
            [
                ("A", Verdict::NotRanked),
                ("B", Verdict::Taint),
                ("C", Verdict::Taint),
                ("D", Verdict::Cleanest),
            ]
        );
        assert_eq!(r.zones[0].rank, None);
        let only = [
            input("A", 1, None, false),
            input("B", 1, Some(300.0), false),
        ];
        assert_eq!(
            verdicts(&rank_zones(&only, &params())),
            [("A", Verdict::NotRanked), ("B", Verdict::Cleanest)]
        );
    }

    #[test]
    fn a_big_zone_that_does_not_fit_lets_smaller_ones_in_and_the_budget_is_kept() {
        let zones = [
            input("BIG", 6, Some(800.0), false),
            input("SMALL", 1, Some(400.0), false),
            input("CLEAN", 3, Some(100.0), false),
        ];
        let r = rank_zones(&zones, &params());
        assert_eq!(
            verdicts(&r),
            [
                ("BIG", Verdict::BudgetExhausted),
                ("SMALL", Verdict::Taint),
                ("CLEAN", Verdict::Cleanest),
            ]
        );
        let full = RelativeParams {
            max_tainted_fraction: 1.0,
            min_spread_grams_per_kwh: 0.0,
            min_spread_percent: 0.0,
            hysteresis_grams_per_kwh: 0.0,
            floor_grams_per_kwh: 0.0,
        };
        let alike = [
            input("A", 1, Some(100.0), false),
            input("B", 1, Some(100.0), false),
        ];
        assert_eq!(
            verdicts(&rank_zones(&alike, &full)),
            [("A", Verdict::Taint), ("B", Verdict::Cleanest)],
            "with no minimum spread a tie is tainted, but never the reference"
        );
    }

    #[test]
    fn a_swap_releases_the_old_zone_one_poll_before_it_taints_the_new_one() {
        let p = params();
        // Budget 2 of 5 nodes: DE held it; PL is now dirtier and takes it.
        let before = [
            input("DE", 2, Some(500.0), true),
            input("PL", 2, Some(700.0), false),
            input("FR", 1, Some(60.0), false),
        ];
        let mut ranking = rank_zones(&before, &p);
        assert_eq!(
            ranking.zones[1].verdict,
            Verdict::Taint,
            "the ranking alone swaps"
        );
        break_before_make(&mut ranking, &before, p.max_tainted_fraction);
        assert_eq!(
            verdicts(&ranking),
            [
                ("DE", Verdict::BudgetExhausted),
                ("PL", Verdict::BudgetExhausted),
                ("FR", Verdict::Cleanest)
            ],
            "DE is released first; PL waits for its nodes"
        );
        // The next poll: DE's verdict was revoked, so nothing holds the budget.
        let after = [
            input("DE", 2, Some(500.0), false),
            input("PL", 2, Some(700.0), false),
            input("FR", 1, Some(60.0), false),
        ];
        let mut ranking = rank_zones(&after, &p);
        break_before_make(&mut ranking, &after, p.max_tainted_fraction);
        assert_eq!(ranking.zones[1].verdict, Verdict::Taint);
        assert_eq!(ranking.zones[0].verdict, Verdict::BudgetExhausted);
    }

    #[test]
    fn a_new_zone_that_fits_beside_the_held_ones_is_tainted_at_once() {
        let p = params();
        // Budget 3 of 6 nodes (0.5): DE keeps its node, PL's two fit beside it.
        let zones = [
            input("DE", 1, Some(800.0), true),
            input("PL", 2, Some(700.0), false),
            input("NL", 1, Some(650.0), false),
            input("FR", 2, Some(60.0), false),
        ];
        let mut ranking = rank_zones(&zones, &p);
        let untouched = ranking.clone();
        break_before_make(&mut ranking, &zones, p.max_tainted_fraction);
        assert_eq!(ranking, untouched);
        assert_eq!(
            verdicts(&ranking)[..3],
            [
                ("DE", Verdict::Taint),
                ("PL", Verdict::Taint),
                ("NL", Verdict::BudgetExhausted)
            ]
        );
    }

    #[test]
    fn under_the_absolute_policy_a_swap_releases_before_it_grants() {
        // Budget 2 of 5 nodes: DE held it; PL is now dirtier.
        let zones = [
            load("DE", 2, Some(500.0)),
            load("PL", 2, Some(700.0)),
            load("FR", 1, Some(60.0)),
        ];
        let held: BTreeSet<GridZone> = [GridZone::parse("DE").unwrap()].into();
        let mut allowed = allowed_zones(&zones, 20.0, 0.4);
        assert_eq!(names(&allowed), ["FR", "PL"], "the budget alone swaps");
        stage_allowed(&mut allowed, &zones, &held, 20.0, 0.4);
        assert_eq!(names(&allowed), ["FR"], "DE is released first; PL waits");
        // The next poll: DE was not allowed, so nothing holds the budget.
        let mut allowed = allowed_zones(&zones, 20.0, 0.4);
        stage_allowed(&mut allowed, &zones, &BTreeSet::new(), 20.0, 0.4);
        assert_eq!(names(&allowed), ["FR", "PL"]);
    }

    #[test]
    fn under_the_absolute_policy_a_newcomer_that_fits_is_allowed_at_once() {
        // Budget 3 of 6 nodes: DE keeps its node, PL's two fit beside it, and a
        // zone below the band is allowed whatever is held (it untaints anyway).
        let zones = [
            load("DE", 1, Some(800.0)),
            load("PL", 2, Some(700.0)),
            load("NL", 1, Some(650.0)),
            load("FR", 2, Some(60.0)),
        ];
        let held: BTreeSet<GridZone> = [GridZone::parse("DE").unwrap()].into();
        let mut allowed = allowed_zones(&zones, 20.0, 0.5);
        let untouched = allowed.clone();
        stage_allowed(&mut allowed, &zones, &held, 20.0, 0.5);
        assert_eq!(allowed, untouched);
        assert_eq!(names(&allowed), ["DE", "FR", "PL"]);
    }
}
