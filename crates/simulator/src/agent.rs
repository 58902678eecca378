//! The agents' taint decisions in the replay, made by the agent's own code:
//! the leader's budget ([`allowed_zones`]) or ranking ([`rank_zones`]) and
//! every node's [`decide`].
//!
//! All nodes of a zone read the same CarbonScore and start untainted, so they
//! decide alike; one decision per zone stands for all of its nodes.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use carbon_kube_core::budget::{
    DEFAULT_MIN_SPREAD_GRAMS_PER_KWH, DEFAULT_MIN_SPREAD_PERCENT, RankInput, RelativeParams,
    Verdict, ZoneLoad, allowed_zones, rank_zones,
};
use carbon_kube_core::carbon::GridZone;
use carbon_kube_core::decision::{DecisionParams, DwellState, ZoneRanking, ZoneScore, decide};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub decision: DecisionParams,
    pub max_tainted_fraction: f64,
    pub min_spread_grams_per_kwh: f64,
    pub min_spread_percent: f64,
    pub floor_grams_per_kwh: f64,
}

impl AgentSettings {
    fn relative(&self) -> RelativeParams {
        RelativeParams {
            max_tainted_fraction: self.max_tainted_fraction,
            min_spread_grams_per_kwh: self.min_spread_grams_per_kwh,
            min_spread_percent: self.min_spread_percent,
            hysteresis_grams_per_kwh: self.decision.hysteresis_grams_per_kwh,
            floor_grams_per_kwh: self.floor_grams_per_kwh,
        }
    }
}

/// How the leader picks the zones to taint in a step.
#[derive(Debug, Clone, Copy)]
pub enum TaintRule<'a> {
    /// Each zone's threshold this step.
    Absolute {
        thresholds: &'a [f64],
    },
    Relative,
}

impl Default for AgentSettings {
    /// The agent's defaults (`carbon-kube agent --help`).
    fn default() -> Self {
        Self {
            decision: DecisionParams {
                hysteresis_grams_per_kwh: 20.0,
                dwell: Duration::from_secs(600),
                max_age: Duration::from_secs(90 * 60),
            },
            max_tainted_fraction: 0.5,
            min_spread_grams_per_kwh: DEFAULT_MIN_SPREAD_GRAMS_PER_KWH,
            min_spread_percent: DEFAULT_MIN_SPREAD_PERCENT,
            floor_grams_per_kwh: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Agents {
    settings: AgentSettings,
    zones: Vec<GridZone>,
    nodes: Vec<usize>,
    tainted: Vec<bool>,
    dwell: Vec<DwellState>,
    /// The leader's previous verdicts (relative policy), for its hysteresis.
    verdicts: Vec<Verdict>,
}

impl Agents {
    pub fn new(settings: AgentSettings, zones: Vec<GridZone>, nodes: Vec<usize>) -> Self {
        let n = zones.len();
        Self {
            settings,
            zones,
            nodes,
            tainted: vec![false; n],
            dwell: vec![DwellState::default(); n],
            verdicts: vec![Verdict::NotRanked; n],
        }
    }

    /// Changes the relative policy's budget and minimum spread (the outcome tuner's choice).
    pub fn set_relative(&mut self, max_tainted_fraction: f64, min_spread_grams_per_kwh: f64) {
        self.settings.max_tainted_fraction = max_tainted_fraction;
        self.settings.min_spread_grams_per_kwh = min_spread_grams_per_kwh;
    }

    /// Taints for the step that starts at `now` with these intensities.
    ///
    /// The leader writes intensity and allowance at `now`; the agents decide at
    /// once and, if the dwell ends within the step, again when it has passed.
    /// The last answer holds for the step: with hourly data and a 10-minute
    /// dwell the taint is in place for all but the first ten minutes, which we
    /// neglect. Longer dwells are counted in whole steps. With hourly data the
    /// relative policy ranks by the intensity alone: no forecast point falls
    /// within a 10-minute dwell.
    pub fn step(
        &mut self,
        now: Timestamp,
        step: Duration,
        grams_per_kwh: &[f64],
        rule: TaintRule,
    ) -> &[bool] {
        let scores: Vec<ZoneScore> = match rule {
            TaintRule::Absolute { thresholds } => self.by_threshold(now, grams_per_kwh, thresholds),
            TaintRule::Relative => self.by_rank(now, grams_per_kwh),
        };
        let params = &self.settings.decision;
        let later = if params.dwell < step {
            now + SignedDuration::try_from(params.dwell).unwrap_or(SignedDuration::ZERO)
        } else {
            now
        };
        for (z, score) in scores.iter().enumerate() {
            for at in [now, later] {
                let decision = decide(params, Some(score), self.tainted[z], self.dwell[z], at);
                self.tainted[z] = decision.tainted;
                self.dwell[z] = decision.dwell;
            }
        }
        &self.tainted
    }

    fn by_threshold(
        &self,
        now: Timestamp,
        grams_per_kwh: &[f64],
        thresholds: &[f64],
    ) -> Vec<ZoneScore> {
        let loads: Vec<ZoneLoad> = (0..self.zones.len())
            .map(|z| ZoneLoad {
                zone: self.zones[z].clone(),
                nodes: self.nodes[z],
                grams_per_kwh: Some(grams_per_kwh[z]),
                threshold_grams_per_kwh: thresholds[z],
            })
            .collect();
        let allowed = allowed_zones(
            &loads,
            self.settings.decision.hysteresis_grams_per_kwh,
            self.settings.max_tainted_fraction,
        );
        (0..self.zones.len())
            .map(|z| ZoneScore {
                grams_per_kwh: grams_per_kwh[z],
                threshold_grams_per_kwh: thresholds[z],
                observed_at: now,
                taint_allowed: allowed.contains(&self.zones[z]),
                ranking: None,
            })
            .collect()
    }

    fn by_rank(&mut self, now: Timestamp, grams_per_kwh: &[f64]) -> Vec<ZoneScore> {
        let inputs: Vec<RankInput> = (0..self.zones.len())
            .map(|z| RankInput {
                zone: self.zones[z].clone(),
                nodes: self.nodes[z],
                grams_per_kwh: Some(grams_per_kwh[z]),
                tainted_before: self.verdicts[z].taints(),
            })
            .collect();
        let ranking = rank_zones(&inputs, &self.settings.relative());
        (0..self.zones.len())
            .map(|z| {
                let ranked = &ranking.zones[z];
                self.verdicts[z] = ranked.verdict;
                ZoneScore {
                    grams_per_kwh: grams_per_kwh[z],
                    threshold_grams_per_kwh: self.settings.floor_grams_per_kwh,
                    observed_at: now,
                    taint_allowed: ranked.verdict.taints(),
                    ranking: Some(ZoneRanking::of(&ranking, z, Some(grams_per_kwh[z]))),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(nodes: Vec<usize>) -> Agents {
        let zones = (0..nodes.len())
            .map(|i| GridZone::parse(&format!("Z{i}")).unwrap())
            .collect();
        Agents::new(AgentSettings::default(), zones, nodes)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hour: i64) -> Timestamp {
        Timestamp::from_second(1_600_000_000 + hour * 3600).unwrap()
    }

    #[test]
    fn a_short_dwell_taints_within_the_step_and_hysteresis_holds_it() {
        let mut a = agents(vec![1, 1, 1, 1]);
        let rule = TaintRule::Absolute {
            thresholds: &[300.0; 4],
        };
        assert_eq!(
            a.step(at(0), HOUR, &[400.0, 100.0, 100.0, 100.0], rule),
            [true, false, false, false]
        );
        assert!(a.step(at(1), HOUR, &[290.0, 100.0, 100.0, 100.0], rule)[0]);
        assert!(!a.step(at(2), HOUR, &[279.0, 100.0, 100.0, 100.0], rule)[0]);
    }

    #[test]
    fn the_budget_keeps_the_greenest_half_schedulable() {
        let mut a = agents(vec![1, 1, 1, 1]);
        let tainted = a
            .step(
                at(0),
                HOUR,
                &[500.0, 400.0, 350.0, 320.0],
                TaintRule::Absolute {
                    thresholds: &[300.0; 4],
                },
            )
            .to_vec();
        assert_eq!(tainted, [true, true, false, false]);
    }

    #[test]
    fn a_dwell_longer_than_a_step_waits_for_the_next_steps() {
        let mut settings = AgentSettings::default();
        settings.decision.dwell = Duration::from_secs(2 * 3600);
        let mut a = Agents::new(
            settings,
            vec![GridZone::parse("A").unwrap(), GridZone::parse("B").unwrap()],
            vec![1, 1],
        );
        let high = [400.0, 100.0];
        let rule = TaintRule::Absolute {
            thresholds: &[300.0; 2],
        };
        assert!(!a.step(at(0), HOUR, &high, rule)[0]);
        assert!(!a.step(at(1), HOUR, &high, rule)[0]);
        assert!(a.step(at(2), HOUR, &high, rule)[0]);
        assert!(
            a.step(at(3), HOUR, &high, TaintRule::Relative)[0],
            "already tainted"
        );
    }

    #[test]
    fn relative_taints_follow_the_ranking_without_flapping_when_zones_cross() {
        // Budget: one node of three.
        let settings = AgentSettings {
            max_tainted_fraction: 0.34,
            ..AgentSettings::default()
        };
        let zones = ["A", "B", "C"]
            .map(|z| GridZone::parse(z).unwrap())
            .to_vec();
        let mut a = Agents::new(settings, zones, vec![1, 1, 1]);
        let mut step =
            |hour, grams: [f64; 3]| a.step(at(hour), HOUR, &grams, TaintRule::Relative).to_vec();
        assert_eq!(step(0, [500.0, 450.0, 100.0]), [true, false, false]);
        // B overtakes A by 10 g, then A by 10 g again: A keeps its taint.
        assert_eq!(step(1, [500.0, 510.0, 100.0]), [true, false, false]);
        assert_eq!(step(2, [510.0, 500.0, 100.0]), [true, false, false]);
        // B clearly dirtier: the taint moves (after the 10-minute dwell, within the step).
        assert_eq!(step(3, [450.0, 600.0, 100.0]), [false, true, false]);
        // Every zone close to the cleanest: nothing tainted, even at 700 g.
        assert_eq!(step(4, [700.0, 720.0, 690.0]), [false, false, false]);
    }

    #[test]
    fn a_single_zone_is_never_tainted_by_rank() {
        let mut a = agents(vec![4]);
        assert_eq!(a.step(at(0), HOUR, &[900.0], TaintRule::Relative), [false]);
    }
}
