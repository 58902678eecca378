//! The outcome tuner: learns the settings that change outcomes — the taint
//! budget, the minimum spread, the planner's headroom and margin — rather
//! than a threshold. A contextual bandit, factored by setting: each setting
//! picks one of three values per context, ε-greedy on the running mean of the
//! reward, and every setting is credited with the reward of the epoch its
//! value was in force.
//!
//! Context: how far apart the zones are (spread over mean intensity), how busy
//! the cluster is, and how much of the work waits. Reward: minus what the
//! epoch's work emitted plus a price on its delay, over what the same work
//! would have emitted at the cluster's mean intensity, so that a windy week
//! and a calm one are judged on the same scale.
//!
//! Pure and deterministic given the seed, with its state serialisable so a new
//! leader continues where the last one stopped. Evaluated by
//! `carbon-kube-sim tune` (trained on one year, judged on the next against
//! the best fixed settings chosen on the training year).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tuner::uniform;

/// Values each setting may take.
pub const BUDGETS: [f64; 3] = [0.3, 0.5, 0.7];
pub const SPREADS_GRAMS_PER_KWH: [f64; 3] = [25.0, 50.0, 100.0];
pub const HEADROOMS: [f64; 3] = [0.1, 0.2, 0.3];
pub const MARGINS_HOURS: [u64; 3] = [1, 2, 4];
const SETTINGS: usize = 4;
const VALUES: usize = 3;
/// Spread (3 buckets) × utilisation (2) × waiting share (2).
const CONTEXTS: usize = 12;

/// One choice of every setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    pub max_tainted_fraction: f64,
    pub min_spread_grams_per_kwh: f64,
    pub headroom: f64,
    pub margin: Duration,
}

impl Knobs {
    /// The knobs for value indices `[budget, spread, headroom, margin]`.
    pub fn of(choice: [usize; SETTINGS]) -> Self {
        Self {
            max_tainted_fraction: BUDGETS[choice[0]],
            min_spread_grams_per_kwh: SPREADS_GRAMS_PER_KWH[choice[1]],
            headroom: HEADROOMS[choice[2]],
            margin: Duration::from_secs(MARGINS_HOURS[choice[3]] * 3600),
        }
    }

    /// Every combination, for the search of the best fixed knobs.
    pub fn all() -> Vec<[usize; SETTINGS]> {
        (0..VALUES.pow(SETTINGS as u32))
            .map(|i| [i % 3, i / 3 % 3, i / 9 % 3, i / 27 % 3])
            .collect()
    }
}

/// What the cluster looks like when an epoch starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Context {
    /// (dirtiest − cleanest) / mean intensity over the zones.
    pub relative_spread: f64,
    /// Busy share of the allocatable CPU.
    pub utilisation: f64,
    /// Share of the demand waiting (held by a taint or the planner).
    pub waiting_share: f64,
}

impl Context {
    fn index(&self) -> usize {
        let spread = match self.relative_spread {
            s if s < 0.5 => 0,
            s if s < 1.5 => 1,
            _ => 2,
        };
        let busy = usize::from(self.utilisation >= 0.35);
        let waiting = usize::from(self.waiting_share >= 0.05);
        spread * 4 + busy * 2 + waiting
    }
}

/// What the epoch that just ended cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochCost {
    pub emitted_grams: f64,
    pub delayed_vcpu_hours: f64,
    /// What the same work would have emitted at the cluster's mean intensity.
    pub at_mean_grams: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LearnerParams {
    pub exploration: f64,
    /// Grams of CO2 one vCPU-hour of delay is worth.
    pub delay_cost_grams_per_vcpu_hour: f64,
    pub seed: u64,
}

/// Everything learned; serialise it to let the next leader continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerState {
    /// Per setting, context and value: mean reward and count.
    pub mean: Vec<Vec<[f64; VALUES]>>,
    pub count: Vec<Vec<[u64; VALUES]>>,
    /// The choice in force, awaiting its reward.
    pub last: Option<(usize, [usize; SETTINGS])>,
    pub epochs: u64,
    pub rng: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LearnerError {
    #[error("learner state has the wrong shape")]
    Shape,
    #[error("learner state holds a non-finite number")]
    NotFinite,
}

#[derive(Debug, Clone)]
pub struct Learner {
    params: LearnerParams,
    state: LearnerState,
}

impl Learner {
    pub fn new(params: LearnerParams) -> Self {
        let state = LearnerState {
            mean: vec![vec![[0.0; VALUES]; CONTEXTS]; SETTINGS],
            count: vec![vec![[0; VALUES]; CONTEXTS]; SETTINGS],
            last: None,
            epochs: 0,
            rng: params.seed,
        };
        Self { params, state }
    }

    /// Continues from a persisted state; refuses one of another shape or with non-finite numbers.
    pub fn from_state(params: LearnerParams, state: LearnerState) -> Result<Self, LearnerError> {
        let shaped = |rows: usize| rows == SETTINGS;
        if !shaped(state.mean.len())
            || !shaped(state.count.len())
            || state.mean.iter().any(|c| c.len() != CONTEXTS)
            || state.count.iter().any(|c| c.len() != CONTEXTS)
            || state
                .last
                .is_some_and(|(c, v)| c >= CONTEXTS || v.iter().any(|&i| i >= VALUES))
        {
            return Err(LearnerError::Shape);
        }
        if !state.mean.iter().flatten().flatten().all(|v| v.is_finite()) {
            return Err(LearnerError::NotFinite);
        }
        Ok(Self { params, state })
    }

    pub fn state(&self) -> &LearnerState {
        &self.state
    }

    /// Credits the previous choice with `cost` (if any) and chooses the knobs
    /// for the epoch that starts in `context`.
    pub fn step(&mut self, cost: Option<EpochCost>, context: Context) -> Knobs {
        let s = &mut self.state;
        if let (Some((c, values)), Some(cost)) = (s.last, cost) {
            let reward = -(cost.emitted_grams
                + self.params.delay_cost_grams_per_vcpu_hour * cost.delayed_vcpu_hours)
                / cost.at_mean_grams.max(1e-9);
            for (setting, &v) in values.iter().enumerate() {
                let n = &mut s.count[setting][c][v];
                *n += 1;
                let mean = &mut s.mean[setting][c][v];
                *mean += (reward - *mean) / *n as f64;
            }
        }
        let c = context.index();
        let mut choice = [0; SETTINGS];
        for (setting, value) in choice.iter_mut().enumerate() {
            *value = if uniform(&mut s.rng) < self.params.exploration {
                (uniform(&mut s.rng) * VALUES as f64) as usize % VALUES
            } else {
                // Untried values first, then the best mean; ties to the middle (the defaults).
                let (counts, means) = (s.count[setting][c], s.mean[setting][c]);
                let mut best = 1;
                for v in [0, 2] {
                    let better = match (counts[v] == 0, counts[best] == 0) {
                        (true, false) => true,
                        (false, true) => false,
                        _ => means[v] > means[best],
                    };
                    if better {
                        best = v;
                    }
                }
                best
            };
        }
        s.last = Some((c, choice));
        s.epochs += 1;
        Knobs::of(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(exploration: f64) -> LearnerParams {
        LearnerParams {
            exploration,
            delay_cost_grams_per_vcpu_hour: 0.0,
            seed: 7,
        }
    }

    const CALM: Context = Context {
        relative_spread: 1.0,
        utilisation: 0.4,
        waiting_share: 0.0,
    };

    #[test]
    fn the_grid_has_every_combination_once() {
        let all = Knobs::all();
        assert_eq!(all.len(), 81);
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 81);
        assert_eq!(Knobs::of([1, 1, 1, 1]).min_spread_grams_per_kwh, 50.0);
    }

    #[test]
    fn it_learns_the_budget_that_pays_in_a_context() {
        let mut learner = Learner::new(params(0.2));
        let mut cost = None;
        for _ in 0..600 {
            let knobs = learner.step(cost, CALM);
            // A larger budget emits less here; the other settings do not matter.
            cost = Some(EpochCost {
                emitted_grams: 100.0 - 20.0 * knobs.max_tainted_fraction,
                delayed_vcpu_hours: 0.0,
                at_mean_grams: 100.0,
            });
        }
        let greedy = Learner::from_state(params(0.0), learner.state().clone())
            .unwrap()
            .step(cost, CALM);
        assert_eq!(greedy.max_tainted_fraction, 0.7);
    }

    #[test]
    fn the_state_survives_a_round_trip_and_bad_states_are_refused() {
        let mut a = Learner::new(params(0.1));
        for _ in 0..5 {
            a.step(
                Some(EpochCost {
                    emitted_grams: 50.0,
                    delayed_vcpu_hours: 1.0,
                    at_mean_grams: 60.0,
                }),
                CALM,
            );
        }
        let json = serde_json::to_string(a.state()).unwrap();
        let state: LearnerState = serde_json::from_str(&json).unwrap();
        let mut b = Learner::from_state(params(0.1), state).unwrap();
        let next = EpochCost {
            emitted_grams: 40.0,
            delayed_vcpu_hours: 0.0,
            at_mean_grams: 60.0,
        };
        assert_eq!(a.step(Some(next), CALM), b.step(Some(next), CALM));
        let mut bad = a.state().clone();
        bad.mean.pop();
        assert_eq!(
            Learner::from_state(params(0.1), bad).unwrap_err(),
            LearnerError::Shape
        );
    }
}
