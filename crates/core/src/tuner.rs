//! The threshold tuner (leader): tabular Q-learning, one learner per grid zone.
//!
//! State: the intensity bucket (the zone's intensity against the cluster's
//! node-weighted mean, because the taint budget ranks zones against each
//! other), the threshold's margin over the current intensity (tainting, near,
//! clear), and the latency-risk bucket (share of carbon-flexible work held
//! back by the taint). Actions: raise the threshold by 10 %, hold it, or lower
//! it by 10 %, within bounds. Reward: minus the zone's emissions minus a price
//! on the delay the taint caused, divided by a running scale (about a week
//! long) so that zones of very different intensity learn at the same pace.
//! In the simulator (`carbon-kube-sim tune`) this learns, but does not
//! beat the best static threshold: see `benches/results/tune-2021-2022/`.
//! Tried and dropped there: intensity and threshold against the zone's own
//! recent distribution, a cluster-wide reward, and charging each zone for the
//! work submitted to it; each learned less. The kept per-zone reward has a
//! known flaw: a green zone lowers its own emissions by tainting itself when
//! the budget lets it, pushing work to dirtier zones.
//!
//! Pure and deterministic given the seed: the exploration generator lives in
//! [`TunerState`], so a new leader that loads the persisted state continues
//! exactly where the old one stopped.

use serde::{Deserialize, Serialize};

const INTENSITY_BUCKETS: usize = 4;
const THRESHOLD_BUCKETS: usize = 3;
const RISK_BUCKETS: usize = 3;
const STATES: usize = INTENSITY_BUCKETS * THRESHOLD_BUCKETS * RISK_BUCKETS;
/// Raise, hold, lower.
const ACTIONS: [f64; 3] = [1.1, 1.0, 1.0 / 1.1];
const HOLD: usize = 1;
/// Weight of a new observation in the running cost scale: about a week of hourly steps.
const SCALE_WEIGHT: f64 = 1.0 / 168.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunerParams {
    pub min_threshold_grams_per_kwh: f64,
    pub max_threshold_grams_per_kwh: f64,
    pub initial_threshold_grams_per_kwh: f64,
    pub learning_rate: f64,
    pub discount: f64,
    /// Chance of a random action, so the learner keeps checking its estimates.
    pub exploration: f64,
    /// Grams of CO2 one vCPU-hour of taint-caused delay is worth.
    pub delay_cost_grams_per_vcpu_hour: f64,
    pub seed: u64,
}

impl Default for TunerParams {
    fn default() -> Self {
        Self {
            min_threshold_grams_per_kwh: 20.0,
            max_threshold_grams_per_kwh: 1_000.0,
            initial_threshold_grams_per_kwh: 300.0,
            learning_rate: 0.05,
            discount: 0.9,
            exploration: 0.05,
            delay_cost_grams_per_vcpu_hour: 0.05,
            seed: 1,
        }
    }
}

/// What the leader saw in one zone since the previous step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub grams_per_kwh: f64,
    /// Mean intensity of the cluster's zones, weighted by their nodes: the
    /// taint budget ranks zones against each other, so position matters more
    /// than level.
    pub cluster_grams_per_kwh: f64,
    /// CO2 emitted by the work running in the zone.
    pub emitted_grams: f64,
    /// vCPU-hours that carbon-flexible pods waited because of the taint.
    pub delayed_vcpu_hours: f64,
    /// Share (0–1) of the zone's demand now held back by the taint.
    pub pending_share: f64,
}

/// Everything the tuner learned; serialise it to let the next leader continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunerState {
    pub threshold_grams_per_kwh: f64,
    /// Action values, `STATES` rows of raise/hold/lower.
    pub q: Vec<[f64; 3]>,
    /// The state and action of the previous step, awaiting their reward.
    pub last: Option<(usize, usize)>,
    /// Running mean of the cost; `None` until the first observation (JSON has no NaN).
    pub cost_scale: Option<f64>,
    pub steps: u64,
    pub rng: u64,
    /// Reward of the last step, for the leader's metrics.
    #[serde(default)]
    pub last_reward: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TunerError {
    #[error("tuner state has {found} rows of action values, expected {expected}")]
    Shape { found: usize, expected: usize },
    #[error("tuner state holds a non-finite number")]
    NotFinite,
}

#[derive(Debug, Clone)]
pub struct Tuner {
    params: TunerParams,
    state: TunerState,
}

impl Tuner {
    pub fn new(params: TunerParams) -> Self {
        let threshold = params.initial_threshold_grams_per_kwh.clamp(
            params.min_threshold_grams_per_kwh,
            params.max_threshold_grams_per_kwh,
        );
        let state = TunerState {
            threshold_grams_per_kwh: threshold,
            q: vec![[0.0; 3]; STATES],
            last: None,
            cost_scale: None,
            steps: 0,
            rng: params.seed,
            last_reward: None,
        };
        Self { params, state }
    }

    /// Continues from a persisted state; refuses one of another shape or with non-finite numbers.
    pub fn from_state(params: TunerParams, state: TunerState) -> Result<Self, TunerError> {
        if state.q.len() != STATES {
            return Err(TunerError::Shape {
                found: state.q.len(),
                expected: STATES,
            });
        }
        let finite = state.q.iter().flatten().all(|v| v.is_finite())
            && state.threshold_grams_per_kwh.is_finite()
            && state.cost_scale.is_none_or(f64::is_finite);
        if !finite
            || state
                .last
                .is_some_and(|(s, a)| s >= STATES || a >= ACTIONS.len())
        {
            return Err(TunerError::NotFinite);
        }
        Ok(Self { params, state })
    }

    pub fn state(&self) -> &TunerState {
        &self.state
    }

    pub fn threshold(&self) -> f64 {
        self.state.threshold_grams_per_kwh
    }

    /// The action of the last step (`raise`, `hold` or `lower`), for metrics.
    pub fn last_action(&self) -> Option<&'static str> {
        self.state
            .last
            .map(|(_, action)| ["raise", "hold", "lower"][action])
    }

    /// Learns from what followed the previous action and returns the threshold to apply now.
    pub fn step(&mut self, observation: &Observation) -> f64 {
        let p = &self.params;
        let s = &mut self.state;
        let cost = observation.emitted_grams.max(0.0)
            + p.delay_cost_grams_per_vcpu_hour * observation.delayed_vcpu_hours.max(0.0);
        let scale = s
            .cost_scale
            .map_or(cost, |scale| scale + SCALE_WEIGHT * (cost - scale));
        s.cost_scale = Some(scale);
        let reward = if scale > 0.0 { -cost / scale } else { 0.0 };
        s.last_reward = Some(reward);
        let now = state_index(s, observation);
        if let Some((before, action)) = s.last {
            let best_next = s.q[now].iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let target = reward + p.discount * best_next;
            s.q[before][action] += p.learning_rate * (target - s.q[before][action]);
        }
        let action = if uniform(&mut s.rng) < p.exploration {
            (uniform(&mut s.rng) * ACTIONS.len() as f64) as usize % ACTIONS.len()
        } else {
            greedy(&s.q[now])
        };
        s.threshold_grams_per_kwh = (s.threshold_grams_per_kwh * ACTIONS[action])
            .clamp(p.min_threshold_grams_per_kwh, p.max_threshold_grams_per_kwh);
        s.last = Some((now, action));
        s.steps += 1;
        s.threshold_grams_per_kwh
    }
}

fn state_index(s: &TunerState, o: &Observation) -> usize {
    let relative = o.grams_per_kwh / o.cluster_grams_per_kwh.max(1e-9);
    let intensity = [0.8, 1.0, 1.25]
        .iter()
        .filter(|&&edge| relative >= edge)
        .count();
    let margin = s.threshold_grams_per_kwh / o.grams_per_kwh.max(1e-9);
    let threshold = [0.9, 1.1].iter().filter(|&&edge| margin >= edge).count();
    let risk = match o.pending_share {
        x if x <= 0.0 => 0,
        x if x <= 0.2 => 1,
        _ => 2,
    };
    (intensity * THRESHOLD_BUCKETS + threshold) * RISK_BUCKETS + risk
}

/// Best action; ties go to holding, then to the lower index, so an untrained learner holds.
fn greedy(values: &[f64; 3]) -> usize {
    let mut best = HOLD;
    for (action, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = action;
        }
    }
    best
}

/// SplitMix64, mapped to [0, 1).
pub(crate) fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (((z ^ (z >> 31)) >> 11) as f64) * (1.0 / 9_007_199_254_740_992.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(grams_per_kwh: f64, emitted_grams: f64, pending_share: f64) -> Observation {
        Observation {
            grams_per_kwh,
            cluster_grams_per_kwh: 200.0,
            emitted_grams,
            delayed_vcpu_hours: 0.0,
            pending_share,
        }
    }

    #[test]
    fn thresholds_stay_within_bounds() {
        let params = TunerParams {
            exploration: 1.0,
            ..TunerParams::default()
        };
        let mut tuner = Tuner::new(params.clone());
        for i in 0..5_000 {
            let t = tuner.step(&observation(100.0 + (i % 24) as f64 * 10.0, 50.0, 0.0));
            assert!(
                (params.min_threshold_grams_per_kwh..=params.max_threshold_grams_per_kwh)
                    .contains(&t)
            );
        }
    }

    #[test]
    fn an_untrained_tuner_holds() {
        let mut tuner = Tuner::new(TunerParams {
            exploration: 0.0,
            ..TunerParams::default()
        });
        assert_eq!(tuner.step(&observation(400.0, 10.0, 0.0)), 300.0);
    }

    #[test]
    fn same_seed_same_path_and_persisted_state_continues_identically() {
        let run = |tuner: &mut Tuner, from: usize, to: usize| -> Vec<f64> {
            (from..to)
                .map(|i| {
                    tuner.step(&observation(
                        200.0 + ((i * 7) % 50) as f64 * 5.0,
                        (i % 13) as f64,
                        0.1,
                    ))
                })
                .collect()
        };
        let params = TunerParams {
            exploration: 0.3,
            ..TunerParams::default()
        };
        let mut a = Tuner::new(params.clone());
        let mut b = Tuner::new(params.clone());
        assert_eq!(run(&mut a, 0, 500), run(&mut b, 0, 500));
        let mut resumed = Tuner::from_state(params.clone(), b.state().clone()).unwrap();
        assert_eq!(run(&mut a, 500, 1000), run(&mut resumed, 500, 1000));
        // Through JSON (as persisted in the cluster) the numbers survive to the last digit or so.
        let json = serde_json::to_string(a.state()).unwrap();
        let back: TunerState = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.last, back.steps, back.rng),
            (a.state().last, a.state().steps, a.state().rng)
        );
        assert!((back.threshold_grams_per_kwh - a.threshold()).abs() < 1e-9);
        assert!(Tuner::from_state(params, back).is_ok());
    }

    #[test]
    fn learns_to_lower_the_threshold_when_tainting_pays() {
        // A toy zone: emissions are high unless the threshold is below the intensity.
        let params = TunerParams {
            exploration: 0.2,
            learning_rate: 0.1,
            ..TunerParams::default()
        };
        let mut tuner = Tuner::new(params);
        let mut threshold = tuner.threshold();
        for _ in 0..20_000 {
            let emitted = if threshold < 250.0 { 1.0 } else { 10.0 };
            threshold = tuner.step(&observation(250.0, emitted, 0.0));
        }
        assert!(threshold < 300.0, "threshold {threshold}");
    }

    #[test]
    fn malformed_states_are_refused() {
        let mut state = Tuner::new(TunerParams::default()).state().clone();
        state.q.pop();
        assert!(matches!(
            Tuner::from_state(TunerParams::default(), state.clone()),
            Err(TunerError::Shape { .. })
        ));
        state.q.push([f64::NAN, 0.0, 0.0]);
        assert_eq!(
            Tuner::from_state(TunerParams::default(), state).unwrap_err(),
            TunerError::NotFinite
        );
    }
}
