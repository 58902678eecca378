//! One replay of every policy on the same year, cluster and jobs.

use jiff::Timestamp;
use jiff::civil::date;
use jiff::tz::TimeZone;

use crate::SimError;
use crate::agent::AgentSettings;
use crate::bound::{self, Reach};
use crate::engine::{Deferral, Outcome, Policy, Scenario, run, run_with};
use crate::forecast::{ErrorModel, Forecasts};
use crate::plan::{Prefix, oracle};
use crate::trace::{Series, Trace};
use crate::workload::{Job, WorkloadParams, generate};
use carbon_kube_core::carbon::GridZone;
use carbon_kube_core::planner::PlannerParams;
use carbon_kube_core::power::PowerCoefficients;
use carbon_kube_core::tuner::{Tuner, TunerParams, TunerState};

const HOUR_SECONDS: i64 = 3600;
/// A zone must have readings for most of the year to take part.
const MIN_COVERAGE: f64 = 0.95;

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub vcpus_per_node: u32,
    pub workload: WorkloadParams,
    pub agent: AgentSettings,
    pub threshold_grams_per_kwh: f64,
    pub tuner: TunerParams,
    /// How wrong the deferral policy's forecasts are.
    pub forecast: ErrorModel,
    pub forecast_seed: u64,
    pub coefficients: PowerCoefficients,
    /// The deferral planner's knobs (the leader's defaults unless set).
    pub planner: PlannerParams,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nodes: 32,
            vcpus_per_node: 16,
            workload: WorkloadParams::default(),
            agent: AgentSettings::default(),
            threshold_grams_per_kwh: 300.0,
            tuner: TunerParams::default(),
            forecast: ErrorModel::Iid {
                sigma_fraction: 0.05,
            },
            forecast_seed: 0,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            planner: PlannerParams::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyName {
    Baseline,
    Relative,
    Static,
    Tuned,
    Deferral,
    TaintsAndDeferral,
    /// Best feasible offline schedule, time shifts only ([`bound::Reach::TimeOnly`]).
    TemporalBound,
    /// Best feasible offline schedule, zones and times ([`bound::Reach::SpaceAndTime`]).
    CapacityBound,
    /// Every job at its cheapest zone and start, capacity ignored.
    Oracle,
}

impl PolicyName {
    /// The online policies first, then the offline references, loosest last.
    pub const ALL: [Self; 9] = [
        Self::Baseline,
        Self::Relative,
        Self::Static,
        Self::Tuned,
        Self::Deferral,
        Self::TaintsAndDeferral,
        Self::TemporalBound,
        Self::CapacityBound,
        Self::Oracle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Relative => "relative-taints",
            Self::Static => "static-threshold",
            Self::Tuned => "tuned-threshold",
            Self::Deferral => "forecast-deferral",
            Self::TaintsAndDeferral => "relative-taints+planner",
            Self::TemporalBound => "temporal-only-schedule",
            Self::CapacityBound => "capacity-aware-schedule",
            Self::Oracle => "oracle-bound",
        }
    }
}

/// A year's replay: the inputs and every policy's outcome.
pub struct Replay {
    pub series: Vec<Series>,
    pub nodes: Vec<usize>,
    pub jobs: Vec<Job>,
    pub outcomes: Vec<(PolicyName, Outcome)>,
    pub tuners: Vec<(GridZone, TunerState)>,
}

impl Replay {
    pub fn outcome(&self, name: PolicyName) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
    }
}

/// Hourly series for the calendar year `year` of every trace that covers it.
pub fn hourly_year(traces: &[Trace], year: i16) -> Result<Vec<Series>, SimError> {
    let first = date(year, 1, 1);
    let start: Timestamp = first
        .to_zoned(TimeZone::UTC)
        .map_err(|e| SimError::Invalid(format!("year {year}: {e}")))?
        .timestamp();
    let hours = first.days_in_year() as usize * 24;
    let mut series = Vec::new();
    for trace in traces {
        let Ok(s) = trace.on_grid(start, HOUR_SECONDS, hours) else {
            continue;
        };
        if (hours - s.filled) as f64 >= MIN_COVERAGE * hours as f64 {
            series.push(s);
        }
    }
    if series.is_empty() {
        return Err(SimError::Invalid(format!("no trace covers {year}")));
    }
    Ok(series)
}

/// Nodes spread evenly over the zones, the remainder to the first ones.
pub fn nodes_per_zone(total: usize, zones: usize) -> Vec<usize> {
    (0..zones)
        .map(|z| total / zones + usize::from(z < total % zones))
        .collect()
}

pub fn jobs_for(config: &ClusterConfig, series: &[Series], nodes: &[usize]) -> Vec<Job> {
    let steps = series.first().map_or(0, |s| s.grams_per_kwh.len());
    let first_weekday = series.first().map_or(0, |s| {
        s.start
            .to_zoned(TimeZone::UTC)
            .weekday()
            .to_monday_zero_offset() as usize
    });
    generate(&config.workload, steps, nodes, first_weekday)
}

pub fn scenario<'a>(
    config: &ClusterConfig,
    series: &'a [Series],
    nodes: Vec<usize>,
    jobs: &'a [Job],
) -> Scenario<'a> {
    Scenario {
        series,
        nodes,
        vcpus_per_node: config.vcpus_per_node,
        jobs,
        coefficients: config.coefficients,
        agent: config.agent.clone(),
    }
}

/// One tuner per zone of `series`: continued from the zone's entry in `states`, else fresh.
pub fn tuners(
    config: &ClusterConfig,
    series: &[Series],
    states: &[(GridZone, TunerState)],
) -> Result<Vec<Tuner>, SimError> {
    series
        .iter()
        .enumerate()
        .map(|(z, s)| {
            let params = TunerParams {
                seed: config.tuner.seed + z as u64,
                ..config.tuner.clone()
            };
            match states.iter().find(|(zone, _)| *zone == s.zone) {
                Some((_, state)) => Tuner::from_state(params, state.clone())
                    .map_err(|e| SimError::Invalid(e.to_string())),
                None => Ok(Tuner::new(params)),
            }
        })
        .collect()
}

fn states(series: &[Series], tuners: &[Tuner]) -> Vec<(GridZone, TunerState)> {
    series
        .iter()
        .map(|s| s.zone.clone())
        .zip(tuners.iter().map(|t| t.state().clone()))
        .collect()
}

/// Runs the tuned policy alone and returns what each zone's tuner learned.
pub fn train_tuners(
    config: &ClusterConfig,
    series: &[Series],
) -> Result<Vec<(GridZone, TunerState)>, SimError> {
    let nodes = nodes_per_zone(config.nodes, series.len());
    let jobs = jobs_for(config, series, &nodes);
    let sc = scenario(config, series, nodes, &jobs);
    let mut learners = tuners(config, series, &[])?;
    run(
        &sc,
        Policy::Tuned {
            tuners: &mut learners,
        },
    );
    Ok(states(series, &learners))
}

/// What the planner sees of each zone: the forecast (the truth plus the
/// configured error) and the σ of its error, which the planner assumes.
pub fn forecasts(config: &ClusterConfig, series: &[Series]) -> (Forecasts, Vec<Vec<f64>>) {
    let forecast = Forecasts::new(series, config.forecast, config.forecast_seed);
    // The planner assumes the error model the forecast was drawn from, by horizon.
    let sigma = series
        .iter()
        .map(|s| {
            let horizon = config.workload.max_slack_steps + config.workload.max_duration_steps + 1;
            (0..horizon.max(1))
                .map(|h| config.forecast.sigma_at(h) * s.mean())
                .collect()
        })
        .collect();
    (forecast, sigma)
}

/// Every policy on one year. The tuned policy continues from `tuner_states`
/// where they have the zone (trained on another year), else learns from scratch.
pub fn replay(
    config: &ClusterConfig,
    series: Vec<Series>,
    tuner_states: &[(GridZone, TunerState)],
) -> Result<Replay, SimError> {
    let nodes = nodes_per_zone(config.nodes, series.len());
    let jobs = jobs_for(config, &series, &nodes);
    let sc = scenario(config, &series, nodes.clone(), &jobs);
    let truth: Vec<Prefix> = series
        .iter()
        .map(|s| Prefix::new(&s.grams_per_kwh))
        .collect();
    let (forecast, sigma) = forecasts(config, &series);
    let deferral = Deferral {
        params: config.planner,
        forecast: &forecast,
        sigma: &sigma,
    };
    let mut learners = tuners(config, &series, tuner_states)?;
    let outcomes = vec![
        (PolicyName::Baseline, run(&sc, Policy::Baseline)),
        (PolicyName::Relative, run(&sc, Policy::Relative)),
        (
            PolicyName::Static,
            run(
                &sc,
                Policy::Static {
                    threshold_grams_per_kwh: config.threshold_grams_per_kwh,
                },
            ),
        ),
        (
            PolicyName::Tuned,
            run(
                &sc,
                Policy::Tuned {
                    tuners: &mut learners,
                },
            ),
        ),
        (
            PolicyName::Deferral,
            run_with(&sc, Policy::Baseline, Some(&deferral)),
        ),
        (
            PolicyName::TaintsAndDeferral,
            // With the default taint policy.
            run_with(&sc, Policy::Relative, Some(&deferral)),
        ),
        (
            PolicyName::TemporalBound,
            bound::schedule(&sc, Reach::TimeOnly).outcome,
        ),
        (
            PolicyName::CapacityBound,
            bound::schedule(&sc, Reach::SpaceAndTime).outcome,
        ),
        (PolicyName::Oracle, oracle(&sc, &truth)),
    ];
    let tuners = states(&series, &learners);
    Ok(Replay {
        series,
        nodes,
        jobs,
        outcomes,
        tuners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_spread_evenly() {
        assert_eq!(nodes_per_zone(10, 3), [4, 3, 3]);
        assert_eq!(nodes_per_zone(2, 3), [1, 1, 0]);
    }

    #[test]
    fn years_are_cut_from_the_traces_that_cover_them() {
        let zone = carbon_kube_core::carbon::GridZone::parse("X").unwrap();
        let start: Timestamp = "2021-01-01T00:00:00Z".parse().unwrap();
        let points = (0..8760)
            .map(|h| (start + jiff::SignedDuration::from_hours(h), 100.0))
            .collect();
        let traces = [Trace { zone, points }];
        assert_eq!(
            hourly_year(&traces, 2021).unwrap()[0].grams_per_kwh.len(),
            8760
        );
        assert!(hourly_year(&traces, 2022).is_err());
    }

    #[test]
    fn every_policy_runs_and_the_oracle_is_lowest() {
        let start: Timestamp = "2022-01-01T00:00:00Z".parse().unwrap();
        let wave = |z: usize| -> Vec<f64> {
            (0..24 * 21)
                .map(|h| 200.0 + 150.0 * ((h + 7 * z) as f64 / 3.8).sin())
                .collect()
        };
        let series: Vec<Series> = (0..3)
            .map(|z| Series {
                zone: carbon_kube_core::carbon::GridZone::parse(&format!("Z{z}")).unwrap(),
                start,
                step_seconds: 3600,
                grams_per_kwh: wave(z),
                filled: 0,
            })
            .collect();
        let config = ClusterConfig {
            nodes: 6,
            workload: WorkloadParams {
                jobs: 300,
                max_duration_steps: 12,
                ..WorkloadParams::default()
            },
            threshold_grams_per_kwh: 250.0,
            ..ClusterConfig::default()
        };
        let replay = replay(&config, series, &[]).unwrap();
        let grams = |n| replay.outcome(n).unwrap().grams;
        for name in PolicyName::ALL {
            assert!(
                grams(PolicyName::Oracle) <= grams(name) + 1e-6,
                "{}",
                name.as_str()
            );
        }
        assert!(grams(PolicyName::Relative) < grams(PolicyName::Baseline));
        assert!(grams(PolicyName::Static) < grams(PolicyName::Baseline));
        assert!(grams(PolicyName::Deferral) < grams(PolicyName::Baseline));
        assert_eq!(replay.tuners.len(), 3);
        // The capacity-aware schedule beats every online policy here, and moving in
        // space as well as time beats time alone.
        let online = PolicyName::ALL
            .into_iter()
            .take_while(|&n| n != PolicyName::CapacityBound);
        for name in online {
            assert!(
                grams(PolicyName::CapacityBound) < grams(name),
                "{}",
                name.as_str()
            );
        }
        assert!(grams(PolicyName::TemporalBound) < grams(PolicyName::Baseline));
    }
}
