//! The taint decision: a pure function of the zone's score, the node's current
//! state, the settings and the clock.

use std::time::Duration;

use jiff::Timestamp;

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
        }
    }
}

/// The agent's memory between decisions: since when intensity has been above the threshold.
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

    let threshold = score.threshold_grams_per_kwh;
    let intensity = score.grams_per_kwh;
    if intensity > threshold {
        let above_since = dwell.above_since.unwrap_or(now);
        let dwelled = now.duration_since(above_since).unsigned_abs() >= params.dwell;
        let dwell = DwellState {
            above_since: Some(above_since),
        };
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
}
