//! The cluster replay: nodes in several zones, jobs arriving, a scheduler
//! that places them, and the policy deciding taints or start times.
//!
//! Scheduling follows kube-scheduler's habits where they matter for carbon: a
//! pod goes to the least-allocated node that fits; its home zone comes first
//! (it is its namespace's preferred pool), then the emptiest other zone, unless
//! pinned. Under a taint policy untainted nodes come first, and pods that opted
//! in to waiting (a deadline with slack) do not go to tainted nodes at all until
//! their latest start. Jobs run to completion where they start.

use std::time::Duration;

use crate::agent::{AgentSettings, Agents, TaintRule};
use crate::forecast::Forecasts;
use crate::trace::Series;
use crate::workload::Job;
use carbon_kube_core::carbon::GridZone;
use carbon_kube_core::learner::{Context, EpochCost, Learner};
use carbon_kube_core::planner::{
    self, ExpectedWait, Ledger, PlannerParams, RigidLoad, Step, Waiting, ZoneCapacity,
    ZoneForecast, hour_of_week,
};
use carbon_kube_core::power::{PowerCoefficients, emission_score};
use carbon_kube_core::tuner::{Observation, Tuner};

mod outcome;
mod planned;
pub use outcome::Outcome;
use planned::Planned;

/// What is replayed: aligned series (one per zone), the cluster, the jobs.
pub struct Scenario<'a> {
    pub series: &'a [Series],
    pub nodes: Vec<usize>,
    pub vcpus_per_node: u32,
    pub jobs: &'a [Job],
    pub coefficients: PowerCoefficients,
    pub agent: AgentSettings,
}

impl Scenario<'_> {
    pub fn steps(&self) -> usize {
        self.series.first().map_or(0, |s| s.grams_per_kwh.len())
    }

    fn step_hours(&self) -> f64 {
        self.series
            .first()
            .map_or(1.0, |s| s.step_seconds as f64 / 3600.0)
    }

    /// Grams one busy vCPU emits over steps whose intensities add up to `grams_per_kwh_steps`.
    /// The marginal power of busy vCPUs only: idle power is drawn whatever the policy.
    pub fn grams_per_vcpu_step(&self, grams_per_kwh_steps: f64) -> f64 {
        emission_score(&self.coefficients, 1.0, grams_per_kwh_steps) * self.step_hours()
    }

    fn zones(&self) -> Vec<GridZone> {
        self.series.iter().map(|s| s.zone.clone()).collect()
    }
}

pub enum Policy<'a> {
    /// Carbon-agnostic: start at arrival.
    Baseline,
    /// The agent as shipped: the leader taints the dirtiest zones, up to the
    /// budget, where they are dirtier than the cleanest by the minimum spread.
    Relative,
    /// The absolute policy: one threshold for every zone.
    Static { threshold_grams_per_kwh: f64 },
    /// The agent with the leader's tuner setting each zone's threshold every step.
    Tuned { tuners: &'a mut [Tuner] },
    /// Relative taints (and the planner, when deferring) with the budget, the
    /// minimum spread, the headroom and the margin chosen by the outcome tuner
    /// once per epoch.
    Learned { learner: &'a mut Learner },
}

/// Steps between the outcome tuner's choices: a day of hourly data.
pub const LEARNER_EPOCH_STEPS: usize = 24;

/// Deferral by the leader's planner ([`carbon_kube_core::planner`]): jobs with slack
/// wait behind the gate until the planner releases them, then prefer the zone
/// it booked them in.
#[derive(Debug, Clone)]
pub struct Deferral<'a> {
    pub params: PlannerParams,
    /// What the planner sees of each zone's future, as issued at each step
    /// (the value at the current step is replaced by the truth, as the live
    /// CarbonScore carries the measured intensity).
    pub forecast: &'a Forecasts,
    /// σ of the forecast error per zone and step of horizon, g/kWh.
    pub sigma: &'a [Vec<f64>],
}

/// Weeks the learned non-deferred load per hour of week remembers.
const RIGID_MEMORY_WEEKS: u32 = 4;

struct Cluster {
    free: Vec<Vec<u32>>,
    free_total: Vec<u64>,
    /// Busy vCPUs by the zone they run in and the zone they were submitted to.
    running: Vec<Vec<u64>>,
    /// Jobs finishing at each step: zone, node, home zone, vCPUs.
    ends: Vec<Vec<(usize, usize, usize, u32)>>,
}

enum Placement {
    Placed(usize, usize),
    /// Would fit on a tainted node, but the pod waits for an untainted one.
    HeldByTaint,
    NoRoom,
}

impl Cluster {
    fn new(scenario: &Scenario) -> Self {
        let zones = scenario.nodes.len();
        let longest = scenario.jobs.iter().map(|j| j.duration).max().unwrap_or(0);
        Self {
            free: scenario
                .nodes
                .iter()
                .map(|&n| vec![scenario.vcpus_per_node; n])
                .collect(),
            free_total: scenario
                .nodes
                .iter()
                .map(|&n| n as u64 * u64::from(scenario.vcpus_per_node))
                .collect(),
            running: vec![vec![0; zones]; zones],
            ends: vec![Vec::new(); scenario.steps() + longest + 1],
        }
    }

    /// Least-allocated node of `zone` that fits `vcpus`.
    fn node_for(&self, zone: usize, vcpus: u32) -> Option<usize> {
        let (node, free) = self.free[zone]
            .iter()
            .enumerate()
            .max_by_key(|&(i, f)| (*f, std::cmp::Reverse(i)))?;
        (*free >= vcpus).then_some(node)
    }

    /// `preferred`: the zone tried first (the home zone, or where the planner booked the job).
    fn place(
        &self,
        job: &Job,
        preferred: usize,
        now: usize,
        tainted: Option<&[bool]>,
    ) -> Placement {
        let mut zones: Vec<usize> = if job.pinned {
            vec![job.home]
        } else {
            let mut others: Vec<usize> = (0..self.free.len()).filter(|&z| z != preferred).collect();
            others.sort_by_key(|&z| {
                std::cmp::Reverse(self.free_total[z] * 1000 / (self.free[z].len().max(1) as u64))
            });
            std::iter::once(preferred).chain(others).collect()
        };
        let Some(tainted) = tainted else {
            return zones
                .iter()
                .find_map(|&z| self.node_for(z, job.vcpus).map(|n| Placement::Placed(z, n)))
                .unwrap_or(Placement::NoRoom);
        };
        // Untainted first (stable, so home and emptiness order are kept within each group).
        zones.sort_by_key(|&z| tainted[z]);
        let waits_for_green = job.flexible() && now < job.latest_start();
        for &z in &zones {
            if let Some(node) = self.node_for(z, job.vcpus) {
                if tainted[z] && waits_for_green {
                    return Placement::HeldByTaint;
                }
                return Placement::Placed(z, node);
            }
        }
        Placement::NoRoom
    }

    fn start(&mut self, job: &Job, zone: usize, node: usize, now: usize) {
        self.free[zone][node] -= job.vcpus;
        self.free_total[zone] -= u64::from(job.vcpus);
        self.running[zone][job.home] += u64::from(job.vcpus);
        self.ends[now + job.duration].push((zone, node, job.home, job.vcpus));
    }

    fn finish(&mut self, now: usize) {
        for (zone, node, home, vcpus) in std::mem::take(&mut self.ends[now]) {
            self.free[zone][node] += vcpus;
            self.free_total[zone] += u64::from(vcpus);
            self.running[zone][home] -= u64::from(vcpus);
        }
    }
}

/// Replays the scenario under one taint policy, without deferral.
pub fn run(scenario: &Scenario, policy: Policy) -> Outcome {
    run_with(scenario, policy, None)
}

/// Replays the scenario under one taint policy and, when given, the deferral planner.
pub fn run_with(scenario: &Scenario, mut policy: Policy, deferral: Option<&Deferral>) -> Outcome {
    let steps = scenario.steps();
    let zones = scenario.series.len();
    let step = Duration::from_secs(
        scenario
            .series
            .first()
            .map_or(3600, |s| s.step_seconds.max(1) as u64),
    );
    let mut outcome = Outcome::empty(scenario);
    let mut cluster = Cluster::new(scenario);
    let mut agents = Agents::new(
        scenario.agent.clone(),
        scenario.zones(),
        scenario.nodes.clone(),
    );
    let mut thresholds: Vec<f64> = match &policy {
        Policy::Static {
            threshold_grams_per_kwh,
        } => vec![*threshold_grams_per_kwh; zones],
        Policy::Tuned { tuners } => tuners.iter().map(Tuner::threshold).collect(),
        Policy::Baseline | Policy::Relative | Policy::Learned { .. } => {
            vec![f64::INFINITY; zones]
        }
    };
    let uses_taints = !matches!(policy, Policy::Baseline);
    let total_nodes: u64 = scenario.nodes.iter().map(|&n| n as u64).sum();
    let mut planned = deferral.map(|deferral| Planned::new(deferral, scenario.jobs.len(), zones));
    // Jobs the scheduler sees: index and the zone it tries first.
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut next_job = 0;
    let mut epoch: Option<EpochCost> = None;
    let mut waiting_vcpus = 0u64;
    let mut held_vcpus = 0u64;
    for t in 0..steps {
        cluster.finish(t);
        let intensity: Vec<f64> = scenario.series.iter().map(|s| s.grams_per_kwh[t]).collect();
        if let Policy::Learned { learner } = &mut policy {
            if t % LEARNER_EPOCH_STEPS == 0 {
                let busy: u64 = cluster.running.iter().flatten().sum();
                let (min, max, sum) = intensity.iter().fold(
                    (f64::INFINITY, f64::NEG_INFINITY, 0.0),
                    |(lo, hi, sum), &g| (lo.min(g), hi.max(g), sum + g),
                );
                let mean = sum / zones.max(1) as f64;
                let capacity = total_nodes * u64::from(scenario.vcpus_per_node);
                let demand = (busy + held_vcpus + waiting_vcpus).max(1);
                let knobs = learner.step(
                    epoch.take(),
                    Context {
                        relative_spread: (max - min) / mean.max(1e-9),
                        utilisation: busy as f64 / capacity.max(1) as f64,
                        waiting_share: (held_vcpus + waiting_vcpus) as f64 / demand as f64,
                    },
                );
                agents.set_relative(knobs.max_tainted_fraction, knobs.min_spread_grams_per_kwh);
                if let Some(planned) = &mut planned {
                    planned.params.headroom = knobs.headroom;
                    planned.params.margin = knobs.margin;
                }
            }
        }
        let tainted: Vec<bool> = if uses_taints {
            let rule = match policy {
                Policy::Relative | Policy::Learned { .. } => TaintRule::Relative,
                _ => TaintRule::Absolute {
                    thresholds: &thresholds,
                },
            };
            agents
                .step(scenario.series[0].at(t), step, &intensity, rule)
                .to_vec()
        } else {
            vec![false; zones]
        };
        while let Some(job) = scenario.jobs.get(next_job).filter(|j| j.arrival <= t) {
            match &mut planned {
                Some(planned) if job.flexible() => planned.waiting.push(next_job),
                _ => pending.push((next_job, job.home)),
            }
            next_job += 1;
        }
        if let Some(planned) = &mut planned {
            for (index, zone) in planned.step(scenario, &cluster, t, &intensity) {
                let job = &scenario.jobs[index];
                pending.push((index, zone.unwrap_or(job.home)));
            }
        }
        let mut held = vec![0u64; zones];
        pending.retain(|&(index, preferred)| {
            let job = &scenario.jobs[index];
            match cluster.place(job, preferred, t, uses_taints.then_some(tainted.as_slice())) {
                Placement::Placed(zone, node) => {
                    cluster.start(job, zone, node, t);
                    outcome.record_start(index, job, t);
                    if let Some(planned) = &mut planned {
                        planned.started(index, zone, t, job);
                    }
                    false
                }
                Placement::HeldByTaint => {
                    held[job.home] += u64::from(job.vcpus);
                    true
                }
                Placement::NoRoom => true,
            }
        });
        held_vcpus = held.iter().sum();
        waiting_vcpus = planned.as_ref().map_or(0, |p| {
            p.waiting
                .iter()
                .map(|&i| u64::from(scenario.jobs[i].vcpus))
                .sum()
        });
        let before = outcome.grams;
        for z in 0..zones {
            let per_vcpu = scenario.grams_per_vcpu_step(intensity[z]);
            for home in 0..zones {
                outcome.add_emissions(home, per_vcpu * cluster.running[z][home] as f64);
            }
            outcome.tainted[z].push(tainted[z]);
            outcome.thresholds[z].push(thresholds[z]);
            if tainted[z] {
                outcome.tainted_node_steps += scenario.nodes[z] as u64;
            }
        }
        outcome.node_steps += total_nodes;
        if matches!(policy, Policy::Learned { .. }) {
            let busy: u64 = cluster.running.iter().flatten().sum();
            let mean = intensity
                .iter()
                .zip(&scenario.nodes)
                .map(|(i, &n)| i * n as f64)
                .sum::<f64>()
                / total_nodes.max(1) as f64;
            let cost = epoch.get_or_insert(EpochCost {
                emitted_grams: 0.0,
                delayed_vcpu_hours: 0.0,
                at_mean_grams: 0.0,
            });
            cost.emitted_grams += outcome.grams - before;
            cost.delayed_vcpu_hours += (held_vcpus + waiting_vcpus) as f64 * scenario.step_hours();
            cost.at_mean_grams += scenario.grams_per_vcpu_step(mean) * busy as f64;
        }
        if let Policy::Tuned { tuners } = &mut policy {
            let cluster_mean = intensity
                .iter()
                .zip(&scenario.nodes)
                .map(|(i, &n)| i * n as f64)
                .sum::<f64>()
                / total_nodes.max(1) as f64;
            for (z, tuner) in tuners.iter_mut().enumerate() {
                let running: u64 = cluster.running[z].iter().sum();
                let observation = Observation {
                    grams_per_kwh: intensity[z],
                    cluster_grams_per_kwh: cluster_mean,
                    emitted_grams: scenario.grams_per_vcpu_step(intensity[z]) * running as f64,
                    delayed_vcpu_hours: held[z] as f64 * scenario.step_hours(),
                    pending_share: held[z] as f64 / (held[z] + running).max(1) as f64,
                };
                thresholds[z] = tuner.step(&observation);
            }
        }
    }
    let never = pending
        .into_iter()
        .map(|(index, _)| index)
        .chain(planned.into_iter().flat_map(|p| p.waiting));
    for index in never {
        let job = &scenario.jobs[index];
        outcome.record_start(index, job, steps.max(job.latest_start() + 1));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::ErrorModel;
    use carbon_kube_core::power::PowerCoefficients;

    fn series(zone: &str, values: &[f64]) -> Series {
        Series::hourly_for_tests(zone, values)
    }

    fn job(arrival: usize, slack: usize, home: usize, pinned: bool) -> Job {
        Job {
            arrival,
            duration: 2,
            vcpus: 1,
            slack,
            home,
            pinned,
        }
    }

    fn scenario<'a>(series: &'a [Series], jobs: &'a [Job]) -> Scenario<'a> {
        Scenario {
            series,
            nodes: vec![1; series.len()],
            vcpus_per_node: 4,
            jobs,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            agent: AgentSettings::default(),
        }
    }

    #[test]
    fn static_taints_move_free_jobs_and_hold_pinned_flexible_ones() {
        let s = [
            series("DIRTY", &[500.0, 500.0, 100.0, 100.0, 100.0, 100.0]),
            series("CLEAN", &[50.0; 6]),
        ];
        let jobs = [job(0, 0, 0, false), job(0, 3, 0, true), job(0, 0, 0, true)];
        let sc = scenario(&s, &jobs);
        let base = run(&sc, Policy::Baseline);
        let tainted = run(
            &sc,
            Policy::Static {
                threshold_grams_per_kwh: 300.0,
            },
        );
        assert_eq!(base.delays, [0, 0, 0]);
        // Free job to CLEAN; the flexible pinned job waits two steps for DIRTY to clear;
        // the inflexible pinned one runs at once on the tainted node.
        assert_eq!(tainted.delays, [0, 2, 0]);
        assert_eq!(tainted.deadline_misses, 0);
        let k = sc.grams_per_vcpu_step(1.0);
        assert!((base.grams - k * (3.0 * 1000.0)).abs() < 1e-9);
        assert!((tainted.grams - k * (100.0 + 200.0 + 1000.0)).abs() < 1e-9);
        assert_eq!(tainted.tainted[0][..3], [true, true, false]);
        assert_eq!(tainted.tainted_node_steps, 2);
    }

    #[test]
    fn deferral_follows_the_forecast_and_the_oracle_bounds_everything() {
        let s = [series("A", &[400.0, 300.0, 100.0, 100.0, 300.0, 300.0])];
        let jobs = [job(0, 3, 0, true), job(1, 0, 0, true)];
        let sc = scenario(&s, &jobs);
        let truth = [crate::plan::Prefix::new(&s[0].grams_per_kwh)];
        let forecast = Forecasts::new(
            &s,
            ErrorModel::Iid {
                sigma_fraction: 0.0,
            },
            0,
        );
        let deferral = Deferral {
            params: PlannerParams {
                headroom: 0.0,
                margin: Duration::ZERO,
                k_sigma: 0.0,
            },
            forecast: &forecast,
            sigma: &[vec![0.0]],
        };
        let deferred = run_with(&sc, Policy::Baseline, Some(&deferral));
        assert_eq!(deferred.delays, [2, 0]);
        let oracle = crate::plan::oracle(&sc, &truth);
        assert!(oracle.grams <= deferred.grams + 1e-9);
        assert!(deferred.grams < run(&sc, Policy::Baseline).grams);
    }

    #[test]
    fn a_full_cluster_queues_and_late_jobs_miss_their_deadline() {
        let s = [series("A", &[100.0; 4])];
        let big = Job {
            arrival: 0,
            duration: 3,
            vcpus: 4,
            slack: 0,
            home: 0,
            pinned: true,
        };
        let jobs = [
            big,
            Job {
                arrival: 0,
                duration: 1,
                vcpus: 1,
                slack: 1,
                home: 0,
                pinned: true,
            },
        ];
        let out = run(&scenario(&s, &jobs), Policy::Baseline);
        assert_eq!(out.delays, [0, 3]);
        assert_eq!(out.deadline_misses, 1);
    }

    #[test]
    fn the_outcome_tuner_chooses_once_a_day_and_its_relative_taints_move_work() {
        let days = 3;
        let s = [
            series("DIRTY", &vec![500.0; 24 * days]),
            series("CLEAN", &vec![50.0; 24 * days]),
        ];
        let jobs: Vec<Job> = (0..24 * days).map(|t| job(t, 0, 0, false)).collect();
        let sc = scenario(&s, &jobs);
        let mut learner = Learner::new(carbon_kube_core::learner::LearnerParams {
            exploration: 0.0,
            delay_cost_grams_per_vcpu_hour: 0.0,
            seed: 1,
        });
        let learned = run(
            &sc,
            Policy::Learned {
                learner: &mut learner,
            },
        );
        assert_eq!(learner.state().epochs, days as u64);
        // Day one runs the middle values (half the nodes: the dirty zone's
        // one); later days try the untried ones first, a budget of 0.3 among them.
        assert!(learned.tainted[0][..24].iter().all(|&t| t));
        assert!(
            !learned.tainted[1].iter().any(|&t| t),
            "the clean zone never"
        );
        assert!(learned.grams < run(&sc, Policy::Baseline).grams);
    }
}
