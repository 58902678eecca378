//! Does the tuner earn its keep? Train it on one year, evaluate it on the
//! next, against the best single threshold chosen in hindsight on the
//! training year, all judged by the tuner's own objective:
//! grams of CO2 + a price per vCPU-hour of delay.

use super::SimError;
use super::engine::{Outcome, Policy, run};
use super::experiment::{ClusterConfig, jobs_for, nodes_per_zone, scenario, train_tuners, tuners};
use super::plan::{Prefix, oracle};
use super::report::{Row, row};
use super::trace::Series;

/// Thresholds tried for the best static one (gCO2/kWh); infinity never taints.
pub fn threshold_grid() -> Vec<f64> {
    (1..=32)
        .map(|i| f64::from(i) * 25.0)
        .chain(std::iter::once(f64::INFINITY))
        .collect()
}

pub struct GridPoint {
    pub threshold: f64,
    pub train_cost: f64,
    pub eval_cost: f64,
}

pub struct TuneResult {
    pub zones: Vec<String>,
    pub grid: Vec<GridPoint>,
    pub best_on_train: f64,
    pub best_on_eval: f64,
    /// Evaluation-year rows, each with its objective value.
    pub rows: Vec<(Row, f64)>,
}

fn cost(config: &ClusterConfig, outcome: &Outcome) -> f64 {
    outcome.grams + config.tuner.delay_cost_grams_per_vcpu_hour * outcome.delay_vcpu_hours
}

/// Static-threshold replays of one year for every threshold, two at a time.
fn static_costs(config: &ClusterConfig, series: &[Series], grid: &[f64]) -> Vec<f64> {
    let nodes = nodes_per_zone(config.nodes, series.len());
    let jobs = jobs_for(config, series, &nodes);
    let sc = scenario(config, series, nodes, &jobs);
    let half = grid.len().div_ceil(2);
    std::thread::scope(|scope| {
        let sc = &sc;
        let parts: Vec<_> = grid
            .chunks(half.max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&t| {
                            cost(
                                config,
                                &run(
                                    sc,
                                    Policy::Static {
                                        threshold_grams_per_kwh: t,
                                    },
                                ),
                            )
                        })
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

fn argmin(grid: &[f64], costs: &[f64]) -> f64 {
    grid.iter()
        .zip(costs)
        .fold((f64::INFINITY, f64::INFINITY), |best, (&t, &c)| {
            if c < best.1 { (t, c) } else { best }
        })
        .0
}

pub fn tune(
    config: &ClusterConfig,
    train: &[Series],
    eval: &[Series],
) -> Result<TuneResult, SimError> {
    let zones: Vec<String> = eval.iter().map(|s| s.zone.to_string()).collect();
    if train.iter().map(|s| s.zone.to_string()).collect::<Vec<_>>() != zones {
        return Err(SimError::Invalid(
            "training and evaluation years must have the same zones".into(),
        ));
    }
    let grid = threshold_grid();
    let train_costs = static_costs(config, train, &grid);
    let eval_costs = static_costs(config, eval, &grid);
    let best_on_train = argmin(&grid, &train_costs);
    let best_on_eval = argmin(&grid, &eval_costs);
    let trained = train_tuners(config, train)?;

    let nodes = nodes_per_zone(config.nodes, eval.len());
    let jobs = jobs_for(config, eval, &nodes);
    let sc = scenario(config, eval, nodes, &jobs);
    let mut continued = tuners(config, eval, &trained)?;
    let mut fresh = tuners(config, eval, &[])?;
    let truth: Vec<Prefix> = eval.iter().map(|s| Prefix::new(&s.grams_per_kwh)).collect();
    let runs: Vec<(String, Outcome)> = vec![
        ("baseline".into(), run(&sc, Policy::Baseline)),
        (
            format!(
                "static (agent default {:.0})",
                config.threshold_grams_per_kwh
            ),
            run(
                &sc,
                Policy::Static {
                    threshold_grams_per_kwh: config.threshold_grams_per_kwh,
                },
            ),
        ),
        (
            format!("static (best on train: {best_on_train:.0})"),
            run(
                &sc,
                Policy::Static {
                    threshold_grams_per_kwh: best_on_train,
                },
            ),
        ),
        (
            "tuned (trained on train year)".into(),
            run(
                &sc,
                Policy::Tuned {
                    tuners: &mut continued,
                },
            ),
        ),
        (
            "tuned (untrained)".into(),
            run(&sc, Policy::Tuned { tuners: &mut fresh }),
        ),
        (
            format!("static (best on eval itself: {best_on_eval:.0})"),
            run(
                &sc,
                Policy::Static {
                    threshold_grams_per_kwh: best_on_eval,
                },
            ),
        ),
        ("oracle-bound".into(), oracle(&sc, &truth)),
    ];
    let baseline = runs[0].1.grams;
    let oracle_grams = runs[runs.len() - 1].1.grams;
    let step_hours = eval.first().map_or(1.0, |s| s.step_seconds as f64 / 3600.0);
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
        .map(|(&threshold, (&train_cost, &eval_cost))| GridPoint {
            threshold,
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
    fn the_grid_ends_with_never_tainting_and_argmin_takes_the_first_best() {
        let grid = threshold_grid();
        assert_eq!(grid[0], 25.0);
        assert!(grid.last().unwrap().is_infinite());
        assert_eq!(argmin(&[1.0, 2.0, 3.0], &[5.0, 4.0, 4.0]), 2.0);
    }
}
