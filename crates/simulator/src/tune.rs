//! Does the outcome tuner earn its keep? Train it on one year, evaluate it on
//! the next, against the best fixed settings (budget, minimum spread,
//! headroom, margin) chosen on the training year by the same objective:
//! grams of CO2 + a price per vCPU-hour of delay. Every run is relative
//! taints with the planner, the agent's defaults.

use crate::SimError;
use crate::engine::{Deferral, Outcome, Policy, Scenario, run, run_with};
use crate::experiment::{ClusterConfig, forecasts, jobs_for, nodes_per_zone, scenario};
use crate::forecast::Forecasts;
use crate::plan::{Prefix, oracle};
use crate::report::{Row, row};
use crate::trace::Series;
use carbon_kube_core::learner::{Knobs, Learner, LearnerParams, LearnerState};

/// Passes over the training year, each with another draw of the workload.
const TRAINING_PASSES: u64 = 3;

pub struct GridPoint {
    pub knobs: Knobs,
    pub train_cost: f64,
    pub eval_cost: f64,
}

pub struct TuneResult {
    pub zones: Vec<String>,
    pub grid: Vec<GridPoint>,
    pub best_on_train: Knobs,
    pub best_on_eval: Knobs,
    /// Evaluation-year rows, each with its objective value.
    pub rows: Vec<(Row, f64)>,
}

fn cost(config: &ClusterConfig, outcome: &Outcome) -> f64 {
    outcome.grams + config.tuner.delay_cost_grams_per_vcpu_hour * outcome.delay_vcpu_hours
}

/// A year's replay inputs: the workload, the cluster and the planner's view.
struct Year<'a> {
    config: ClusterConfig,
    series: &'a [Series],
    jobs: Vec<crate::workload::Job>,
    nodes: Vec<usize>,
    forecast: Forecasts,
    sigma: Vec<Vec<f64>>,
}

impl<'a> Year<'a> {
    fn new(config: &ClusterConfig, series: &'a [Series]) -> Self {
        let nodes = nodes_per_zone(config.nodes, series.len());
        let jobs = jobs_for(config, series, &nodes);
        let (forecast, sigma) = forecasts(config, series);
        Self {
            config: config.clone(),
            series,
            jobs,
            nodes,
            forecast,
            sigma,
        }
    }

    fn scenario(&self, knobs: Option<Knobs>) -> Scenario<'_> {
        let mut config = self.config.clone();
        if let Some(k) = knobs {
            config.agent.max_tainted_fraction = k.max_tainted_fraction;
            config.agent.min_spread_grams_per_kwh = k.min_spread_grams_per_kwh;
        }
        scenario(&config, self.series, self.nodes.clone(), &self.jobs)
    }

    fn deferral(&self, knobs: Option<Knobs>) -> Deferral<'_> {
        let mut params = self.config.planner;
        if let Some(k) = knobs {
            params.headroom = k.headroom;
            params.margin = k.margin;
        }
        Deferral {
            params,
            forecast: &self.forecast,
            sigma: &self.sigma,
        }
    }

    /// Relative taints and the planner with fixed knobs (`None`: the defaults).
    fn fixed(&self, knobs: Option<Knobs>) -> Outcome {
        run_with(
            &self.scenario(knobs),
            Policy::Relative,
            Some(&self.deferral(knobs)),
        )
    }

    fn learned(&self, learner: &mut Learner) -> Outcome {
        run_with(
            &self.scenario(None),
            Policy::Learned { learner },
            Some(&self.deferral(None)),
        )
    }
}

/// The objective of every fixed knob vector on one year, two threads.
fn grid_costs(year: &Year, grid: &[Knobs]) -> Vec<f64> {
    let half = grid.len().div_ceil(2);
    std::thread::scope(|scope| {
        let parts: Vec<_> = grid
            .chunks(half.max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&k| cost(&year.config, &year.fixed(Some(k))))
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_default())
            .collect()
    })
}

fn argmin(grid: &[Knobs], costs: &[f64]) -> Knobs {
    grid.iter()
        .zip(costs)
        .fold((grid[0], f64::INFINITY), |best, (&k, &c)| {
            if c < best.1 { (k, c) } else { best }
        })
        .0
}

fn learner_params(config: &ClusterConfig) -> LearnerParams {
    LearnerParams {
        exploration: config.tuner.exploration,
        delay_cost_grams_per_vcpu_hour: config.tuner.delay_cost_grams_per_vcpu_hour,
        seed: config.tuner.seed,
    }
}

/// The learner after `TRAINING_PASSES` passes over `series`.
fn train_learner(config: &ClusterConfig, series: &[Series]) -> LearnerState {
    let mut learner = Learner::new(learner_params(config));
    for pass in 0..TRAINING_PASSES {
        let mut config = config.clone();
        config.workload.seed += pass;
        Year::new(&config, series).learned(&mut learner);
    }
    learner.state().clone()
}

pub fn describe(k: &Knobs) -> String {
    format!(
        "budget {}, spread {} g, headroom {}, margin {} h",
        k.max_tainted_fraction,
        k.min_spread_grams_per_kwh,
        k.headroom,
        k.margin.as_secs() / 3600
    )
}

pub fn tune(
    config: &ClusterConfig,
    train_series: &[Series],
    eval_series: &[Series],
) -> Result<TuneResult, SimError> {
    let zones: Vec<String> = eval_series.iter().map(|s| s.zone.to_string()).collect();
    if train_series
        .iter()
        .map(|s| s.zone.to_string())
        .collect::<Vec<_>>()
        != zones
    {
        return Err(SimError::Invalid(
            "training and evaluation years must have the same zones".into(),
        ));
    }
    let grid: Vec<Knobs> = Knobs::all().into_iter().map(Knobs::of).collect();
    let (train, eval) = (
        Year::new(config, train_series),
        Year::new(config, eval_series),
    );
    let train_costs = grid_costs(&train, &grid);
    let eval_costs = grid_costs(&eval, &grid);
    let best_on_train = argmin(&grid, &train_costs);
    let best_on_eval = argmin(&grid, &eval_costs);
    let trained = train_learner(config, train_series);
    let params = learner_params(config);
    let mut continued = Learner::from_state(params.clone(), trained)
        .map_err(|e| SimError::Invalid(e.to_string()))?;
    let mut fresh = Learner::new(params);
    let sc = eval.scenario(None);
    let truth: Vec<Prefix> = eval_series
        .iter()
        .map(|s| Prefix::new(&s.grams_per_kwh))
        .collect();
    let runs: Vec<(String, Outcome)> = vec![
        ("baseline".into(), run(&sc, Policy::Baseline)),
        ("relative+planner (defaults)".into(), eval.fixed(None)),
        (
            format!("fixed, best on train ({})", describe(&best_on_train)),
            eval.fixed(Some(best_on_train)),
        ),
        (
            "outcome tuner (trained on train year)".into(),
            eval.learned(&mut continued),
        ),
        ("outcome tuner (untrained)".into(), eval.learned(&mut fresh)),
        (
            format!("fixed, best on eval itself ({})", describe(&best_on_eval)),
            eval.fixed(Some(best_on_eval)),
        ),
        ("oracle-bound".into(), oracle(&sc, &truth)),
    ];
    let baseline = runs[0].1.grams;
    let oracle_grams = runs[runs.len() - 1].1.grams;
    let step_hours = eval_series
        .first()
        .map_or(1.0, |s| s.step_seconds as f64 / 3600.0);
    let rows = runs
        .iter()
        .map(|(name, outcome)| {
            (
                row(name, outcome, baseline, oracle_grams, step_hours),
                cost(config, outcome),
            )
        })
        .collect();
    let grid = grid
        .iter()
        .zip(train_costs.iter().zip(&eval_costs))
        .map(|(&knobs, (&train_cost, &eval_cost))| GridPoint {
            knobs,
            train_cost,
            eval_cost,
        })
        .collect();
    Ok(TuneResult {
        zones,
        grid,
        best_on_train,
        best_on_eval,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_the_first_best() {
        let grid: Vec<Knobs> = Knobs::all().into_iter().take(3).map(Knobs::of).collect();
        assert_eq!(argmin(&grid, &[5.0, 4.0, 4.0]), grid[1]);
    }
}
