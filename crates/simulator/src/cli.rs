//! `carbon-kube-sim`: the replay experiments, their flags and their files.

use std::path::Path;

use crate::SimError;
use crate::experiment::{ClusterConfig, hourly_year, jobs_for, nodes_per_zone, replay, scenario};
use crate::fleet::{self, Dispatch};
use crate::forecast::{ErrorModel, Forecasts};
use crate::paper::{self, any_year, targets};
use crate::trace::{self, Series};
use crate::{report, svg, tune};

mod args;
pub use args::{
    ClusterArgs, Experiment, FleetArgs, ForecastModel, ReproduceArgs, RunArgs, SimulateArgs,
    TuneArgs,
};

pub fn run(args: &SimulateArgs) -> Result<(), SimError> {
    match &args.experiment {
        Experiment::Run(a) => run_policies(a),
        Experiment::Reproduce(a) => reproduce(a),
        Experiment::Tune(a) => run_tune(a),
        Experiment::Fleet(a) => run_fleet(a),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), SimError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| SimError::io(&path, e))
}

fn prepare(out: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(out).map_err(|e| SimError::io(out, e))
}

fn describe(series: &[Series], config: &ClusterConfig) -> String {
    let zones: Vec<String> = series
        .iter()
        .map(|s| {
            if s.filled > 0 {
                format!("{} ({} h filled)", s.zone, s.filled)
            } else {
                s.zone.to_string()
            }
        })
        .collect();
    format!(
        "zones: {}\nnodes: {} × {} vCPU; jobs: {}; forecast error {}; \
         relative taints: minimum spread {} g and {} %, floor {} g; static threshold {} g/kWh\n",
        zones.join(", "),
        config.nodes,
        config.vcpus_per_node,
        config.workload.jobs,
        config.forecast.describe(),
        config.agent.min_spread_grams_per_kwh,
        config.agent.min_spread_percent,
        config.agent.floor_grams_per_kwh,
        config.threshold_grams_per_kwh
    )
}

fn run_policies(args: &RunArgs) -> Result<(), SimError> {
    let config = args.cluster.config()?;
    prepare(&args.out)?;
    let traces = trace::load_dir(&args.traces)?;
    let series = hourly_year(&traces, args.year)?;
    let trained = match args.train_year {
        Some(year) => crate::experiment::train_tuners(&config, &hourly_year(&traces, year)?)?,
        None => Vec::new(),
    };
    let started = std::time::Instant::now();
    let replay = replay(&config, series, &trained)?;
    let rows = report::rows(&replay);
    let mut text = format!(
        "{} {}; {} workload\n{}",
        args.traces.display(),
        args.year,
        args.cluster.workload.name(),
        describe(&replay.series, &config)
    );
    let busy: f64 = replay
        .jobs
        .iter()
        .map(|j| f64::from(j.vcpus) * j.duration as f64)
        .sum();
    let capacity = (config.nodes as u64 * u64::from(config.vcpus_per_node)) as f64
        * replay.series.first().map_or(1, |s| s.grams_per_kwh.len()) as f64;
    text += &format!(
        "mean utilisation {:.1} %; tuner {}; replayed in {:.2} s\n\n",
        100.0 * busy / capacity,
        match (args.train_year, trained.len()) {
            (Some(year), n) if n > 0 =>
                format!("trained on {year} for {n} zones, the others from scratch"),
            _ => "learning from scratch".to_string(),
        },
        started.elapsed().as_secs_f64()
    );
    text += &report::text(&rows);
    print!("{text}");
    write(&args.out, "table.txt", &text)?;
    write(&args.out, "table.csv", &report::csv(&rows))?;
    let title = format!(
        "CO2 saved vs carbon-agnostic baseline, by home zone ({} {})",
        args.traces.display(),
        args.year
    );
    write(
        &args.out,
        "savings_by_zone.svg",
        &svg::savings_by_zone(&replay, &title),
    )?;
    write(
        &args.out,
        "intensity_taints.svg",
        &svg::intensity_and_taints(&replay, args.plot_from_day, args.plot_days),
    )?;
    let json = serde_json::to_string_pretty(&replay.tuners)
        .map_err(|e| SimError::Invalid(e.to_string()))?;
    write(&args.out, "tuner_state.json", &json)
}

/// The traces of `zones` (all when empty); a zone without a trace is an error.
fn only_zones(
    mut traces: Vec<trace::Trace>,
    zones: &[String],
    dir: &Path,
) -> Result<Vec<trace::Trace>, SimError> {
    if !zones.is_empty() {
        for zone in zones {
            if !traces.iter().any(|t| t.zone.to_string() == *zone) {
                return Err(SimError::Invalid(format!(
                    "--zones: no trace for {zone} in {}",
                    dir.display()
                )));
            }
        }
        traces.retain(|t| zones.contains(&t.zone.to_string()));
    }
    Ok(traces)
}

fn nightly_year(args: &ReproduceArgs, year: i16) -> Result<(), SimError> {
    prepare(&args.out)?;
    let traces = only_zones(trace::load_dir(&args.traces)?, &args.zones, &args.traces)?;
    let rows = any_year::table(&traces, year, args.max_window_hours)?;
    let text = format!(
        "Let's Wait Awhile nightly job (01:00 UTC, ±window) on {} {year}, {}-hour lead-in from {}; \
         % saved against 01:00 sharp; forecast error: none, i.i.d. σ = 5 % of the mean, {}\n\n{}",
        args.traces.display(),
        args.max_window_hours,
        year - 1,
        ErrorModel::AR1_PUBLISHED.describe(),
        any_year::text(&rows)
    );
    print!("{text}");
    write(&args.out, &format!("nightly_{year}.txt"), &text)?;
    write(
        &args.out,
        &format!("nightly_{year}.csv"),
        &any_year::csv(&rows),
    )
}

fn reproduce(args: &ReproduceArgs) -> Result<(), SimError> {
    if let Some(year) = args.year {
        return nightly_year(args, year);
    }
    prepare(&args.out)?;
    let series = trace::load_dir(&args.traces)?
        .iter()
        .map(paper::paper_series)
        .collect::<Result<Vec<_>, _>>()?;
    let rows = paper::reproduce(&series)?;
    let comparisons = targets::compare(&targets::load(&args.targets)?, &rows);
    let mut csv = String::from(
        "scenario,zone,window_or_deadline,error,mode,target_pct,ours_pct,difference_pp,within_0.1pp,source\n",
    );
    let mut text = String::new();
    for c in &comparisons {
        let t = &c.target;
        let ours = c
            .ours
            .map_or_else(|| "no data".into(), |o| format!("{o:.4}"));
        let diff = c
            .difference_pp()
            .map_or_else(String::new, |d| format!("{d:+.4}"));
        csv += &format!(
            "{},{},{},{},{},{},{},{},{},\"{}\"\n",
            t.scenario,
            t.zone,
            t.window_or_deadline,
            t.error,
            t.mode,
            t.savings_pct,
            ours,
            diff,
            c.matches(),
            t.source
        );
        text += &format!(
            "{:<3}{:<12}{:<13}{:<5}{:<17}{:>9.4}{:>10}{:>9}  {}\n",
            t.scenario,
            t.zone,
            t.window_or_deadline,
            t.error,
            t.mode,
            t.savings_pct,
            ours,
            diff,
            t.source
        );
    }
    let comparable: Vec<_> = comparisons.iter().filter(|c| c.ours.is_some()).collect();
    let worst = comparable
        .iter()
        .filter_map(|c| c.difference_pp())
        .fold(0.0f64, |m, d| m.max(d.abs()));
    let summary = format!(
        "{} of {} targets with data match within {} pp (largest difference {worst:.4} pp); {} targets have no shipped series (California 2020)\n",
        comparable.iter().filter(|c| c.matches()).count(),
        comparable.len(),
        targets::TOLERANCE_PP,
        comparisons.len() - comparable.len()
    );
    text += &summary;
    print!("{text}");
    write(&args.out, "reproduction.txt", &text)?;
    write(&args.out, "reproduction.csv", &csv)?;
    if comparable.iter().all(|c| c.matches()) {
        Ok(())
    } else {
        Err(SimError::Invalid(summary))
    }
}

fn run_tune(args: &TuneArgs) -> Result<(), SimError> {
    let config = args.cluster.config()?;
    prepare(&args.out)?;
    let traces = trace::load_dir(&args.traces)?;
    let eval = hourly_year(&traces, args.eval_year)?;
    let train = hourly_year(&traces, args.train_year)?;
    // Only zones present in both years take part.
    let keep = |series: Vec<Series>, other: &[Series]| -> Vec<Series> {
        series
            .into_iter()
            .filter(|s| other.iter().any(|o| o.zone == s.zone))
            .collect()
    };
    let (train, eval) = (keep(train.clone(), &eval), keep(eval, &train));
    let result = tune::tune(&config, &train, &eval)?;
    let mut text = format!(
        "train {} → evaluate {}; {}every row: relative taints with the planner; \
         objective = grams CO2 + {} g per vCPU-hour of delay\n\
         best fixed knobs on the training year: {}; on the evaluation year itself: {}\n\n",
        args.train_year,
        args.eval_year,
        describe(&eval, &config),
        config.tuner.delay_cost_grams_per_vcpu_hour,
        tune::describe(&result.best_on_train),
        tune::describe(&result.best_on_eval)
    );
    let rows: Vec<report::Row> = result.rows.iter().map(|(r, _)| r.clone()).collect();
    let table = report::text(&rows);
    for (line, cost) in table
        .lines()
        .zip(std::iter::once(None).chain(result.rows.iter().map(|(_, c)| Some(c))))
    {
        text += &match cost {
            Some(c) => format!("{line}  {:>12.1}\n", c / 1000.0),
            None => format!("{line}  {:>12}\n", "objective_kg"),
        };
    }
    print!("{text}");
    write(&args.out, "tune.txt", &text)?;
    write(&args.out, "tune.csv", &report::csv(&rows))?;
    let mut grid = String::from(
        "max_tainted_fraction,min_spread_g_per_kwh,headroom,margin_h,train_objective_kg,eval_objective_kg\n",
    );
    for p in &result.grid {
        grid += &format!(
            "{},{},{},{},{:.3},{:.3}\n",
            p.knobs.max_tainted_fraction,
            p.knobs.min_spread_grams_per_kwh,
            p.knobs.headroom,
            p.knobs.margin.as_secs() / 3600,
            p.train_cost / 1000.0,
            p.eval_cost / 1000.0
        );
    }
    write(&args.out, "tune_grid.csv", &grid)
}

fn run_fleet(args: &FleetArgs) -> Result<(), SimError> {
    let config = args.cluster.config()?;
    prepare(&args.out)?;
    let traces = only_zones(trace::load_dir(&args.traces)?, &args.zones, &args.traces)?;
    let series = hourly_year(&traces, args.year)?;
    let nodes = nodes_per_zone(config.nodes, series.len());
    let jobs = jobs_for(&config, &series, &nodes);
    let scenario = scenario(&config, &series, nodes, &jobs);
    let forecasts = Forecasts::new(&series, config.forecast, config.forecast_seed);
    let outcomes: Vec<(Dispatch, fleet::FleetOutcome)> = [
        Dispatch::AllAtOnce,
        Dispatch::Greenest,
        Dispatch::GreenestDeferred {
            k_sigma: config.planner.k_sigma,
        },
    ]
    .into_iter()
    .map(|d| (d, fleet::replay(&scenario, &forecasts, d)))
    .collect();
    let baseline = outcomes[0].1.outcome.grams;
    let rows: Vec<report::Row> = outcomes
        .iter()
        .map(|(d, o)| report::row(d.name(), &o.outcome, baseline, baseline, 1.0))
        .collect();
    let mut text = format!(
        "MultiKueue fleet, one worker cluster per zone: {} {}; {} workload\n{}\
         saved vs all-at-once (Kueue's carbon-blind dispatch); no taints in a fleet run\n\n{}\n\
         share of vCPU-hours by cluster (%):\n",
        args.traces.display(),
        args.year,
        args.cluster.workload.name(),
        describe(&series, &config),
        report::text(&rows)
    );
    for (d, o) in &outcomes {
        let total: f64 = o.vcpu_steps_by_zone.iter().sum();
        let shares: Vec<String> = series
            .iter()
            .zip(&o.vcpu_steps_by_zone)
            .map(|(s, v)| format!("{} {:.1}", s.zone, 100.0 * v / total.max(1.0)))
            .collect();
        text += &format!("{:<18}{}\n", d.name(), shares.join(", "));
    }
    print!("{text}");
    write(&args.out, "fleet.txt", &text)?;
    write(&args.out, "fleet.csv", &report::csv(&rows))
}
