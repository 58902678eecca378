//! The agents' taint decisions in the replay, made by the agent's own code:
//! the leader's budget ([`allowed_zones`]) and every node's [`decide`].
//!
//! All nodes of a zone read the same CarbonScore and start untainted, so they
//! decide alike; one decision per zone stands for all of its nodes.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::budget::{ZoneLoad, allowed_zones};
use crate::carbon::GridZone;
use crate::decision::{DecisionParams, DwellState, ZoneScore, decide};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub decision: DecisionParams,
    pub max_tainted_fraction: f64,
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
        }
    }

    /// Taints for the step that starts at `now` with these intensities and thresholds.
    ///
    /// The leader writes intensity and allowance at `now`; the agents decide at
    /// once and, if the dwell ends within the step, again when it has passed.
    /// The last answer holds for the step: with hourly data and a 10-minute
    /// dwell the taint is in place for all but the first ten minutes, which we
    /// neglect. Longer dwells are counted in whole steps.
    pub fn step(
        &mut self,
        now: Timestamp,
        step: Duration,
        grams_per_kwh: &[f64],
        thresholds: &[f64],
    ) -> &[bool] {
        let loads: Vec<ZoneLoad> = (0..self.zones.len())
            .map(|z| ZoneLoad {
                zone: self.zones[z].clone(),
                nodes: self.nodes[z],
                grams_per_kwh: Some(grams_per_kwh[z]),
                threshold_grams_per_kwh: thresholds[z],
            })
            .collect();
        let params = &self.settings.decision;
        let allowed = allowed_zones(
            &loads,
            params.hysteresis_grams_per_kwh,
            self.settings.max_tainted_fraction,
        );
        let later = if params.dwell < step {
            now + SignedDuration::try_from(params.dwell).unwrap_or(SignedDuration::ZERO)
        } else {
            now
        };
        for z in 0..self.zones.len() {
            let score = ZoneScore {
                grams_per_kwh: grams_per_kwh[z],
                threshold_grams_per_kwh: thresholds[z],
                observed_at: now,
                taint_allowed: allowed.contains(&self.zones[z]),
            };
            for at in [now, later] {
                let decision = decide(params, Some(&score), self.tainted[z], self.dwell[z], at);
                self.tainted[z] = decision.tainted;
                self.dwell[z] = decision.dwell;
            }
        }
        &self.tainted
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
        let thresholds = [300.0; 4];
        assert_eq!(
            a.step(at(0), HOUR, &[400.0, 100.0, 100.0, 100.0], &thresholds),
            [true, false, false, false]
        );
        assert!(a.step(at(1), HOUR, &[290.0, 100.0, 100.0, 100.0], &thresholds)[0]);
        assert!(!a.step(at(2), HOUR, &[279.0, 100.0, 100.0, 100.0], &thresholds)[0]);
    }

    #[test]
    fn the_budget_keeps_the_greenest_half_schedulable() {
        let mut a = agents(vec![1, 1, 1, 1]);
        let tainted = a
            .step(at(0), HOUR, &[500.0, 400.0, 350.0, 320.0], &[300.0; 4])
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
        assert!(!a.step(at(0), HOUR, &high, &[300.0; 2])[0]);
        assert!(!a.step(at(1), HOUR, &high, &[300.0; 2])[0]);
        assert!(a.step(at(2), HOUR, &high, &[300.0; 2])[0]);
    }
}
