//! The taint decision: a pure function of the zone's score, the node's current
//! state, the settings and the clock.

use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::budget::{Ranking, Verdict};

/// Settings of the decision, from the agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionParams {
    /// Untaint only below `threshold - hysteresis`, so a value hovering at the
    /// threshold does not flap the taint.
    pub hysteresis_grams_per_kwh: f64,
    /// Intensity must stay above the threshold this long before tainting.
    pub dwell: Duration,
    /// Older data is not trusted: the taint goes (availability wins).
    pub max_age: Duration,
}

/// What the agent knows about its zone, from the zone's CarbonScore.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneScore {
    pub grams_per_kwh: f64,
    pub threshold_grams_per_kwh: f64,
    pub observed_at: Timestamp,
    pub taint_allowed: bool,
    /// The leader's ranking under the relative policy; `None` under the
    /// absolute one, where the agent compares intensity with the threshold.
    pub ranking: Option<ZoneRanking>,
}

/// Where the leader ranked a zone (relative policy), as written in its CarbonScore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneRanking {
    /// The leader's verdict; agents taint only on `Taint`, after the dwell.
    pub verdict: Verdict,
    /// 1 for the dirtiest zone; absent when the zone has no live data.
    pub rank: Option<u32>,
    /// Zones with live data.
    pub ranked_zones: u32,
    /// The value ranked: the intensity, or its mean with the forecast over the dwell.
    pub ranked_by_grams_per_kwh: Option<f64>,
    /// The cleanest zone with data, the reference for the spread.
    pub cleanest_zone: Option<String>,
    pub cleanest_grams_per_kwh: Option<f64>,
    /// How much dirtier than the cleanest zone a zone must be to be tainted.
    pub required_spread_grams_per_kwh: f64,
}

impl ZoneRanking {
    /// Zone `index` of the leader's ranking, ranked by `value`.
    pub fn of(ranking: &Ranking, index: usize, value: Option<f64>) -> Self {
        // Hundredths of a gram are far below any provider's precision.
        let centi = |g: f64| (g * 100.0).round() / 100.0;
        let ranked = &ranking.zones[index];
        Self {
            verdict: ranked.verdict,
            rank: ranked.rank.map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
            ranked_zones: u32::try_from(ranking.ranked).unwrap_or(u32::MAX),
            ranked_by_grams_per_kwh: value.map(centi),
            cleanest_zone: ranking.cleanest.as_ref().map(|(z, _)| z.to_string()),
            cleanest_grams_per_kwh: ranking.cleanest.as_ref().map(|(_, g)| centi(*g)),
            required_spread_grams_per_kwh: ranking.required_spread_grams_per_kwh,
        }
    }

    /// The ranking in words, e.g. "ranked 1 of 3 (dirtiest first) at 450 gCO2/kWh,
    /// 390 g above the cleanest zone FR (60 g); a taint needs 50 g".
    pub fn describe(&self) -> String {
        let Some(rank) = self.rank else {
            return format!(
                "not ranked (no live data; {} zones ranked)",
                self.ranked_zones
            );
        };
        let value = self.ranked_by_grams_per_kwh.unwrap_or_default();
        let mut text = format!(
            "ranked {rank} of {} (dirtiest first) at {value:.0} gCO2/kWh",
            self.ranked_zones
        );
        if let (Some(zone), Some(cleanest)) = (&self.cleanest_zone, self.cleanest_grams_per_kwh) {
            if self.ranked_zones > 1 {
                text += &format!(
                    ", {:.0} g above the cleanest zone {zone} ({cleanest:.0} g); a taint needs {:.0} g",
                    value - cleanest,
                    self.required_spread_grams_per_kwh
                );
            }
        }
        text
    }
}

/// The class label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntensityClass {
    Green,
    Amber,
    Red,
}

impl IntensityClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Green => "green",
            Self::Amber => "amber",
            Self::Red => "red",
        }
    }
}

/// Why the node is (or is not) tainted; becomes the condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No CarbonScore for the zone yet, or the node has no zone.
    NoData,
    /// The data is older than `max_age`.
    Stale,
    /// Above the threshold for at least the dwell time.
    AboveThreshold,
    /// Above the threshold, but not yet for the dwell time.
    Dwelling,
    /// Above the threshold, but the cluster's taint budget is spent on dirtier zones.
    BudgetExhausted,
    /// Above the threshold on a static yearly average, which is shown, never
    /// acted on (the leader withholds the taint; set by the reconciler, which
    /// knows the source).
    StaticOnly,
    /// Between `threshold - hysteresis` and the threshold: the state is kept.
    WithinHysteresis,
    BelowThreshold,
    /// Relative policy: the leader ranks the zone dirtier than the cleanest
    /// by the minimum spread, for at least the dwell time.
    DirtierThanCleanest,
    /// As above, not yet for the dwell time.
    DirtierThanCleanestDwelling,
    /// Relative policy: not dirtier than the cleanest zone by the minimum spread.
    SpreadTooSmall,
    /// Relative policy: below the configured floor.
    BelowFloor,
    /// Relative policy: the cluster's cleanest zone.
    CleanestZone,
    /// Relative policy: the cluster's only zone, nothing to shift spatially.
    SingleZone,
    /// Relative policy: the leader had no live data to rank the zone by.
    NotRanked,
}

impl Reason {
    /// CamelCase reason for the node condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoData => "NoCarbonData",
            Self::Stale => "CarbonDataStale",
            Self::AboveThreshold => "IntensityAboveThreshold",
            Self::Dwelling => "IntensityAboveThresholdDwelling",
            Self::BudgetExhausted => "TaintBudgetExhausted",
            Self::StaticOnly => "StaticAverageNotActedOn",
            Self::WithinHysteresis => "IntensityWithinHysteresis",
            Self::BelowThreshold => "IntensityBelowThreshold",
            Self::DirtierThanCleanest => "DirtierThanCleanestZone",
            Self::DirtierThanCleanestDwelling => "DirtierThanCleanestZoneDwelling",
            Self::SpreadTooSmall => "SpreadToCleanestZoneTooSmall",
            Self::BelowFloor => "IntensityBelowFloor",
            Self::CleanestZone => "CleanestZone",
            Self::SingleZone => "SingleGridZone",
            Self::NotRanked => "NotRanked",
        }
    }
}

/// The agent's memory between decisions: since when intensity has been above
/// the threshold (or, under the relative policy, the zone dirty enough to taint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DwellState {
    pub above_since: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaintDecision {
    pub tainted: bool,
    /// `None` when there is no usable data: the label is removed.
    pub class: Option<IntensityClass>,
    pub reason: Reason,
    pub dwell: DwellState,
}

/// The leader's grant covers only the nodes it counted. A node that joined its
/// zone after the poll listed the nodes (created, or deleted and created again)
/// is held back as if the budget were spent, until a poll counts it; otherwise
/// every node that joins a granted zone between two polls is tainted on a
/// budget that did not count it (found by the chaos soak). Kubernetes writes
/// both times in whole seconds, so a node created in the second the nodes were
/// listed waits one poll more rather than risk it. `counted_at` is absent in
/// scores from leaders that did not record it: nothing is withheld.
pub fn uncounted(
    mut score: ZoneScore,
    counted_at: Option<Timestamp>,
    node_created: Option<Timestamp>,
) -> ZoneScore {
    if let (Some(counted), Some(created)) = (counted_at, node_created)
        && created >= counted
    {
        score.taint_allowed = false;
        if let Some(ranking) = score.ranking.as_mut()
            && ranking.verdict == Verdict::Taint
        {
            ranking.verdict = Verdict::BudgetExhausted;
        }
    }
    score
}

/// Decides whether the node should carry the carbon taint.
///
/// `currently_tainted` is read from the Node, so a restarted agent keeps the
/// taint it finds instead of dropping it and tainting again after the dwell.
pub fn decide(
    params: &DecisionParams,
    score: Option<&ZoneScore>,
    currently_tainted: bool,
    dwell: DwellState,
    now: Timestamp,
) -> TaintDecision {
    let untainted = |reason, class| TaintDecision {
        tainted: false,
        class,
        reason,
        dwell: DwellState::default(),
    };
    let Some(score) = score else {
        return untainted(Reason::NoData, None);
    };
    // A timestamp far in the future is as untrustworthy as an old one.
    if now.duration_since(score.observed_at).unsigned_abs() > params.max_age {
        return untainted(Reason::Stale, None);
    }
    if let Some(ranking) = &score.ranking {
        return follow_ranking(params, ranking.verdict, currently_tainted, dwell, now);
    }

    let threshold = score.threshold_grams_per_kwh;
    let intensity = score.grams_per_kwh;
    if intensity > threshold {
        let (dwell, dwelled) = keep_dwelling(params, dwell, now);
        let (tainted, reason) = if !score.taint_allowed {
            (false, Reason::BudgetExhausted)
        } else if currently_tainted || dwelled {
            (true, Reason::AboveThreshold)
        } else {
            (false, Reason::Dwelling)
        };
        return above_band(tainted, reason, dwell);
    }
    if intensity >= threshold - params.hysteresis_grams_per_kwh {
        // Keep the current state; a fresh rise above the threshold restarts the dwell.
        let tainted = currently_tainted && score.taint_allowed;
        let reason = if currently_tainted && !tainted {
            Reason::BudgetExhausted
        } else {
            Reason::WithinHysteresis
        };
        return above_band(tainted, reason, DwellState::default());
    }
    untainted(Reason::BelowThreshold, Some(IntensityClass::Green))
}

/// Starts or continues the dwell; whether it has lasted long enough.
fn keep_dwelling(params: &DecisionParams, dwell: DwellState, now: Timestamp) -> (DwellState, bool) {
    let above_since = dwell.above_since.unwrap_or(now);
    let dwelled = now.duration_since(above_since).unsigned_abs() >= params.dwell;
    (
        DwellState {
            above_since: Some(above_since),
        },
        dwelled,
    )
}

/// The relative policy: the leader's verdict decides, with its hysteresis on
/// rank changes; the agent adds the dwell, so one poll's blip does not taint.
fn follow_ranking(
    params: &DecisionParams,
    verdict: Verdict,
    currently_tainted: bool,
    dwell: DwellState,
    now: Timestamp,
) -> TaintDecision {
    let (reason, class) = match verdict {
        Verdict::Taint => {
            let (dwell, dwelled) = keep_dwelling(params, dwell, now);
            let (tainted, reason) = if currently_tainted || dwelled {
                (true, Reason::DirtierThanCleanest)
            } else {
                (false, Reason::DirtierThanCleanestDwelling)
            };
            return above_band(tainted, reason, dwell);
        }
        // Dirty enough: the dwell keeps counting, so the taint follows at
        // once when the budget frees up.
        Verdict::BudgetExhausted => {
            let (dwell, _) = keep_dwelling(params, dwell, now);
            return above_band(false, Reason::BudgetExhausted, dwell);
        }
        Verdict::SpreadTooSmall => (Reason::SpreadTooSmall, Some(IntensityClass::Green)),
        Verdict::BelowFloor => (Reason::BelowFloor, Some(IntensityClass::Green)),
        Verdict::Cleanest => (Reason::CleanestZone, Some(IntensityClass::Green)),
        // Green or red says how a zone compares with the others; alone it compares with none.
        Verdict::SingleZone => (Reason::SingleZone, None),
        Verdict::NotRanked => (Reason::NotRanked, None),
    };
    TaintDecision {
        tainted: false,
        class,
        reason,
        dwell: DwellState::default(),
    }
}

/// A decision at or above `threshold - hysteresis`: red while tainted, amber otherwise.
fn above_band(tainted: bool, reason: Reason, dwell: DwellState) -> TaintDecision {
    let class = if tainted {
        IntensityClass::Red
    } else {
        IntensityClass::Amber
    };
    TaintDecision {
        tainted,
        class: Some(class),
        reason,
        dwell,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + minutes * 60).unwrap()
    }

    fn params() -> DecisionParams {
        DecisionParams {
            hysteresis_grams_per_kwh: 20.0,
            dwell: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        }
    }

    fn score(grams_per_kwh: f64, observed_minute: i64) -> ZoneScore {
        ZoneScore {
            grams_per_kwh,
            threshold_grams_per_kwh: 300.0,
            observed_at: t(observed_minute),
            taint_allowed: true,
            ranking: None,
        }
    }

    #[test]
    fn no_data_means_no_taint_and_no_label() {
        let d = decide(&params(), None, true, DwellState::default(), t(0));
        assert!(!d.tainted);
        assert_eq!((d.class, d.reason), (None, Reason::NoData));
    }

    #[test]
    fn taints_only_after_the_dwell_time() {
        let p = params();
        let s = score(350.0, 0);
        let d0 = decide(&p, Some(&s), false, DwellState::default(), t(0));
        assert_eq!(
            (d0.tainted, d0.reason, d0.class),
            (false, Reason::Dwelling, Some(IntensityClass::Amber))
        );
        let d9 = decide(&p, Some(&s), false, d0.dwell, t(9));
        assert!(!d9.tainted);
        let d10 = decide(&p, Some(&s), false, d9.dwell, t(10));
        assert_eq!(
            (d10.tainted, d10.reason, d10.class),
            (true, Reason::AboveThreshold, Some(IntensityClass::Red))
        );
    }

    #[test]
    fn zero_dwell_taints_at_once() {
        let p = DecisionParams {
            dwell: Duration::ZERO,
            ..params()
        };
        assert!(
            decide(
                &p,
                Some(&score(301.0, 0)),
                false,
                DwellState::default(),
                t(0)
            )
            .tainted
        );
    }

    #[test]
    fn a_dip_below_the_threshold_restarts_the_dwell() {
        let p = params();
        let d0 = decide(
            &p,
            Some(&score(350.0, 0)),
            false,
            DwellState::default(),
            t(0),
        );
        let dip = decide(&p, Some(&score(290.0, 5)), false, d0.dwell, t(5));
        assert_eq!(dip.dwell.above_since, None);
        let back = decide(&p, Some(&score(350.0, 10)), false, dip.dwell, t(10));
        assert!(!back.tainted, "dwell restarted at minute 10");
        assert_eq!(back.dwell.above_since, Some(t(10)));
    }

    #[test]
    fn hysteresis_keeps_the_taint_until_well_below() {
        let p = params();
        let keep = decide(
            &p,
            Some(&score(285.0, 0)),
            true,
            DwellState::default(),
            t(0),
        );
        assert_eq!(
            (keep.tainted, keep.reason),
            (true, Reason::WithinHysteresis)
        );
        let edge = decide(
            &p,
            Some(&score(280.0, 0)),
            true,
            DwellState::default(),
            t(0),
        );
        assert!(
            edge.tainted,
            "exactly threshold - hysteresis keeps the taint"
        );
        let off = decide(
            &p,
            Some(&score(279.9, 0)),
            true,
            DwellState::default(),
            t(0),
        );
        assert_eq!(
            (off.tainted, off.reason, off.class),
            (false, Reason::BelowThreshold, Some(IntensityClass::Green))
        );
        let untainted_in_band = decide(
            &p,
            Some(&score(290.0, 0)),
            false,
            DwellState::default(),
            t(0),
        );
        assert_eq!(
            (untainted_in_band.tainted, untainted_in_band.class),
            (false, Some(IntensityClass::Amber))
        );
    }

    #[test]
    fn stale_data_removes_the_taint() {
        let p = params();
        let fresh = decide(
            &p,
            Some(&score(500.0, 0)),
            true,
            DwellState::default(),
            t(60),
        );
        assert!(fresh.tainted, "exactly max_age old is still usable");
        let stale = decide(
            &p,
            Some(&score(500.0, 0)),
            true,
            DwellState::default(),
            t(61),
        );
        assert_eq!(
            (stale.tainted, stale.reason, stale.class),
            (false, Reason::Stale, None)
        );
        let future = decide(
            &p,
            Some(&score(500.0, 120)),
            true,
            DwellState::default(),
            t(0),
        );
        assert_eq!(
            future.reason,
            Reason::Stale,
            "a timestamp far in the future is not trusted either"
        );
    }

    #[test]
    fn the_budget_can_forbid_and_revoke_the_taint() {
        let p = params();
        let mut s = score(500.0, 0);
        s.taint_allowed = false;
        let fresh = decide(
            &p,
            Some(&s),
            false,
            DwellState {
                above_since: Some(t(-30)),
            },
            t(0),
        );
        assert_eq!(
            (fresh.tainted, fresh.reason),
            (false, Reason::BudgetExhausted)
        );
        assert_eq!(
            fresh.dwell.above_since,
            Some(t(-30)),
            "dwell keeps counting while forbidden"
        );
        let revoked = decide(&p, Some(&s), true, DwellState::default(), t(0));
        assert!(!revoked.tainted);
        s.grams_per_kwh = 290.0;
        let in_band = decide(&p, Some(&s), true, DwellState::default(), t(0));
        assert_eq!(
            (in_band.tainted, in_band.reason),
            (false, Reason::BudgetExhausted)
        );
    }

    #[test]
    fn a_restarted_agent_keeps_the_taint_it_finds() {
        let d = decide(
            &params(),
            Some(&score(350.0, 0)),
            true,
            DwellState::default(),
            t(0),
        );
        assert!(d.tainted);
    }

    fn ranked(verdict: Verdict, observed_minute: i64) -> ZoneScore {
        ZoneScore {
            // The level does not matter under the relative policy.
            grams_per_kwh: 100.0,
            threshold_grams_per_kwh: 0.0,
            observed_at: t(observed_minute),
            taint_allowed: verdict.taints(),
            ranking: Some(ZoneRanking {
                verdict,
                rank: Some(1),
                ranked_zones: 3,
                ranked_by_grams_per_kwh: Some(100.0),
                cleanest_zone: Some("FR".into()),
                cleanest_grams_per_kwh: Some(20.0),
                required_spread_grams_per_kwh: 50.0,
            }),
        }
    }

    #[test]
    fn under_the_relative_policy_the_verdict_taints_after_the_dwell() {
        let p = params();
        let s = ranked(Verdict::Taint, 0);
        let d0 = decide(&p, Some(&s), false, DwellState::default(), t(0));
        assert_eq!(
            (d0.tainted, d0.reason, d0.class),
            (
                false,
                Reason::DirtierThanCleanestDwelling,
                Some(IntensityClass::Amber)
            )
        );
        let d10 = decide(&p, Some(&s), false, d0.dwell, t(10));
        assert_eq!(
            (d10.tainted, d10.reason, d10.class),
            (true, Reason::DirtierThanCleanest, Some(IntensityClass::Red))
        );
        // One poll's blip: the verdict comes and goes before the dwell ends.
        let blip = decide(&p, Some(&s), false, DwellState::default(), t(0));
        let gone = decide(
            &p,
            Some(&ranked(Verdict::SpreadTooSmall, 5)),
            false,
            blip.dwell,
            t(5),
        );
        let back = decide(&p, Some(&s), false, gone.dwell, t(12));
        assert!(!back.tainted, "the dwell restarted when the verdict went");
    }

    #[test]
    fn under_the_relative_policy_every_other_verdict_untaints_at_once() {
        let p = params();
        for (verdict, reason, class) in [
            (
                Verdict::BudgetExhausted,
                Reason::BudgetExhausted,
                Some(IntensityClass::Amber),
            ),
            (
                Verdict::SpreadTooSmall,
                Reason::SpreadTooSmall,
                Some(IntensityClass::Green),
            ),
            (
                Verdict::BelowFloor,
                Reason::BelowFloor,
                Some(IntensityClass::Green),
            ),
            (
                Verdict::Cleanest,
                Reason::CleanestZone,
                Some(IntensityClass::Green),
            ),
            (Verdict::SingleZone, Reason::SingleZone, None),
            (Verdict::NotRanked, Reason::NotRanked, None),
        ] {
            let d = decide(
                &p,
                Some(&ranked(verdict, 0)),
                true,
                DwellState::default(),
                t(0),
            );
            assert_eq!((d.tainted, d.reason, d.class), (false, reason, class));
        }
        let counting = DwellState {
            above_since: Some(t(-30)),
        };
        let held = decide(
            &p,
            Some(&ranked(Verdict::BudgetExhausted, 0)),
            false,
            counting,
            t(0),
        );
        assert_eq!(
            held.dwell, counting,
            "dwell keeps counting while the budget is spent"
        );
        let freed = decide(
            &p,
            Some(&ranked(Verdict::Taint, 1)),
            false,
            held.dwell,
            t(1),
        );
        assert!(
            freed.tainted,
            "and the taint follows at once when it frees up"
        );
    }

    #[test]
    fn under_the_relative_policy_stale_data_still_untaints() {
        let d = decide(
            &params(),
            Some(&ranked(Verdict::Taint, 0)),
            true,
            DwellState::default(),
            t(61),
        );
        assert_eq!((d.tainted, d.reason), (false, Reason::Stale));
    }

    #[test]
    fn the_ranking_reads_as_a_sentence() {
        let r = ranked(Verdict::Taint, 0).ranking.unwrap();
        assert_eq!(
            r.describe(),
            "ranked 1 of 3 (dirtiest first) at 100 gCO2/kWh, 80 g above the cleanest zone FR (20 g); a taint needs 50 g"
        );
        let alone = ZoneRanking {
            ranked_zones: 1,
            ..r.clone()
        };
        assert_eq!(
            alone.describe(),
            "ranked 1 of 1 (dirtiest first) at 100 gCO2/kWh"
        );
        let unranked = ZoneRanking { rank: None, ..r };
        assert_eq!(
            unranked.describe(),
            "not ranked (no live data; 3 zones ranked)"
        );
    }

    #[test]
    fn a_node_the_leader_has_not_counted_waits_for_a_poll_that_counts_it() {
        let p = params();
        let counted = t(10);
        let tainting = ranked(Verdict::Taint, 9);
        let joined = uncounted(tainting.clone(), Some(counted), Some(t(11)));
        let decision = decide(&p, Some(&joined), false, DwellState::default(), t(12));
        assert!(!decision.tainted);
        assert_eq!(decision.reason, Reason::BudgetExhausted);
        // Counted, or from a leader that does not say when it counted: unchanged.
        assert_eq!(
            uncounted(tainting.clone(), Some(counted), Some(t(9))),
            tainting
        );
        assert_eq!(uncounted(tainting.clone(), None, Some(t(11))), tainting);
        // The absolute policy: the allowance is withheld the same way.
        let above = score(520.0, 9);
        let joined = uncounted(above, Some(counted), Some(t(11)));
        assert!(!joined.taint_allowed);
        let decision = decide(&p, Some(&joined), false, DwellState::default(), t(12));
        assert_eq!(decision.reason, Reason::BudgetExhausted);
    }
}
