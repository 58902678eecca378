//! A MultiKueue fleet: one manager dispatching batch jobs to worker clusters,
//! each in one grid zone, under Kueue's carbon-blind dispatch or the
//! `carbon-kube.io/greenest` dispatcher's rule (`src/kueue/dispatch.rs`).
//!
//! Each worker is one pool of vCPUs (its nodes' total): the question is which
//! cluster a job goes to, not which node. The manager's queue is
//! BestEffortFIFO: every step each waiting job, oldest first, is dispatched if
//! some worker has room for it. Jobs run to completion where they start.

use crate::engine::{Outcome, Scenario};
use crate::forecast::Forecasts;

/// How the manager picks a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dispatch {
    /// Kueue's default all-at-once: the job is copied to every worker and the
    /// first to admit it wins. Carbon-blind: modelled as the next worker with
    /// room in round-robin order, so no zone is favoured.
    AllAtOnce,
    /// The greenest dispatcher: among workers with room, the one whose zone's
    /// forecast (as issued now) has the lowest mean over the job's duration.
    Greenest,
    /// Greenest, and a job with slack waits while some zone's forecast later in
    /// its window beats the best start now by more than the planner's k σ of the
    /// forecast error at that horizon.
    GreenestDeferred { k_sigma: f64 },
}

impl Dispatch {
    pub fn name(self) -> &'static str {
        match self {
            Self::AllAtOnce => "all-at-once",
            Self::Greenest => "greenest",
            Self::GreenestDeferred { .. } => "greenest+deferral",
        }
    }
}

/// What a fleet replay reports: the engine's outcome (by home zone = by the
/// zone the job ran in) and the vCPU-steps each worker ran.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetOutcome {
    pub outcome: Outcome,
    pub vcpu_steps_by_zone: Vec<f64>,
}

/// One zone's forecast issued at a step, as prefix sums for window means.
struct Issued {
    prefix: Vec<f64>,
}

impl Issued {
    fn new(values: &[f64]) -> Self {
        let mut prefix = vec![0.0];
        for v in values {
            prefix.push(prefix.last().copied().unwrap_or(0.0) + v);
        }
        Self { prefix }
    }

    /// Mean over `from..from + len`, cut at the forecast's end; `None` past it.
    fn mean(&self, from: usize, len: usize) -> Option<f64> {
        let n = self.prefix.len() - 1;
        let end = (from + len).min(n);
        (from < end).then(|| (self.prefix[end] - self.prefix[from]) / (end - from) as f64)
    }
}

/// Replays `scenario.jobs` on one worker per zone of `scenario.series`, each
/// with `scenario.nodes[z] × vcpus_per_node` vCPUs.
pub fn replay(scenario: &Scenario, forecast: &Forecasts, dispatch: Dispatch) -> FleetOutcome {
    let zones = scenario.series.len();
    let steps = scenario.steps();
    let jobs = scenario.jobs;
    let mut free: Vec<u64> = scenario
        .nodes
        .iter()
        .map(|&n| n as u64 * u64::from(scenario.vcpus_per_node))
        .collect();
    let horizon = jobs.iter().map(|j| j.slack + j.duration).max().unwrap_or(1);
    let means: Vec<f64> = scenario.series.iter().map(|s| s.mean()).collect();
    let mut ends: Vec<Vec<(usize, u64)>> = vec![Vec::new(); steps + horizon + 1];
    let mut outcome = Outcome::empty(scenario);
    let mut by_zone = vec![0.0; zones];
    let mut started = vec![false; jobs.len()];
    let mut queue: Vec<usize> = Vec::new();
    let mut next_job = 0;
    let mut round_robin = 0;
    for now in 0..steps {
        for (zone, vcpus) in std::mem::take(&mut ends[now]) {
            free[zone] += vcpus;
        }
        while next_job < jobs.len() && jobs[next_job].arrival <= now {
            queue.push(next_job);
            next_job += 1;
        }
        if queue.is_empty() {
            continue;
        }
        let issued: Vec<Issued> = match dispatch {
            Dispatch::AllAtOnce => Vec::new(),
            _ => (0..zones)
                .map(|z| Issued::new(&forecast.issued(z, now, horizon)))
                .collect(),
        };
        queue.retain(|&index| {
            let job = &jobs[index];
            let vcpus = u64::from(job.vcpus);
            let room = |z: &usize| free[*z] >= vcpus;
            let greenest_now = || {
                (0..zones).filter(room).min_by(|&a, &b| {
                    let m = |z: usize| issued[z].mean(0, job.duration).unwrap_or(f64::MAX);
                    m(a).total_cmp(&m(b))
                })
            };
            let zone = match dispatch {
                Dispatch::AllAtOnce => (0..zones)
                    .map(|k| (round_robin + k) % zones)
                    .find(|z| room(z))
                    .inspect(|&z| round_robin = (z + 1) % zones),
                Dispatch::Greenest => greenest_now(),
                Dispatch::GreenestDeferred { k_sigma } => {
                    let best = greenest_now();
                    let now_mean = best.and_then(|z| issued[z].mean(0, job.duration));
                    let later_wins = now < job.latest_start()
                        && (1..=job.latest_start() - now).any(|wait| {
                            (0..zones).any(|z| {
                                let sigma = k_sigma
                                    * forecast.model().sigma_at(wait + job.duration)
                                    * means[z];
                                match (issued[z].mean(wait, job.duration), now_mean) {
                                    (Some(later), Some(now_mean)) => later + sigma < now_mean,
                                    (Some(_), None) => true,
                                    (None, _) => false,
                                }
                            })
                        });
                    if later_wins { None } else { best }
                }
            };
            let Some(zone) = zone else {
                return true;
            };
            free[zone] -= vcpus;
            let last = ends.len() - 1;
            ends[(now + job.duration).min(last)].push((zone, vcpus));
            let truth = &scenario.series[zone].grams_per_kwh;
            let intensity: f64 = truth[now..(now + job.duration).min(steps)].iter().sum();
            outcome.add_emissions(zone, vcpus as f64 * scenario.grams_per_vcpu_step(intensity));
            outcome.record_start(index, job, now);
            by_zone[zone] += (vcpus as usize * job.duration) as f64;
            started[index] = true;
            false
        });
    }
    // Jobs never dispatched wait until the end of the trace and miss their deadline.
    for (index, job) in jobs.iter().enumerate().filter(|(i, _)| !started[*i]) {
        outcome.record_start(index, job, steps.max(job.latest_start() + 1));
    }
    FleetOutcome {
        outcome,
        vcpu_steps_by_zone: by_zone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{ClusterConfig, jobs_for, scenario};
    use crate::forecast::ErrorModel;
    use crate::trace::Series;
    use crate::workload::Job;

    /// A job that must start as soon as it arrives.
    fn rigid(arrival: usize, duration: usize, vcpus: u32) -> Job {
        Job {
            arrival,
            duration,
            vcpus,
            slack: 0,
            home: 0,
            pinned: false,
        }
    }

    fn series(zones: &[(&str, Vec<f64>)]) -> Vec<Series> {
        zones
            .iter()
            .map(|(z, v)| Series::hourly_for_tests(z, v))
            .collect()
    }

    fn run(series: &[Series], nodes: Vec<usize>, jobs: &[Job], d: Dispatch) -> FleetOutcome {
        let config = ClusterConfig {
            vcpus_per_node: 4,
            ..ClusterConfig::default()
        };
        let forecast = Forecasts::new(series, ErrorModel::AR1_PUBLISHED, 3);
        replay(&scenario(&config, series, nodes, jobs), &forecast, d)
    }

    #[test]
    fn greenest_never_picks_a_full_cluster() {
        let s = series(&[("FR", vec![100.0; 20]), ("DE", vec![500.0; 20])]);
        let jobs = [rigid(0, 2, 4), rigid(0, 2, 4), rigid(0, 2, 4)];
        let out = run(&s, vec![1, 1], &jobs, Dispatch::Greenest);
        // FR is full after the first job: the second goes to DE, the third waits for FR.
        assert_eq!(out.outcome.delays, vec![0, 0, 2]);
        assert_eq!(out.vcpu_steps_by_zone, vec![16.0, 8.0]);
        assert_eq!(out.outcome.deadline_misses, 1);
    }

    #[test]
    fn with_identical_traces_dispatch_does_not_change_the_grams() {
        let values: Vec<f64> = (0..24 * 60)
            .map(|h| 200.0 + (h % 24) as f64 * 10.0)
            .collect();
        let s = series(&[
            ("FR", values.clone()),
            ("DE", values.clone()),
            ("ES", values),
        ]);
        let config = ClusterConfig::default();
        let jobs = jobs_for(&config, &s, &[1, 1, 1])
            .into_iter()
            .take(2_000)
            .collect::<Vec<_>>();
        let blind = run(&s, vec![100, 100, 100], &jobs, Dispatch::AllAtOnce);
        let green = run(&s, vec![100, 100, 100], &jobs, Dispatch::Greenest);
        assert!(blind.vcpu_steps_by_zone.iter().all(|&v| v > 0.0));
        let (a, b) = (blind.outcome.grams, green.outcome.grams);
        assert!(a > 0.0 && (a - b).abs() < 1e-9 * a, "{a} vs {b}");
    }

    #[test]
    fn one_cleaner_zone_takes_everything_while_it_has_room() {
        let noisy = |base: f64| -> Vec<f64> {
            (0..200)
                .map(|h| base + 40.0 * ((h * 7 % 11) as f64 / 11.0))
                .collect()
        };
        let s = series(&[
            ("DE", noisy(400.0)),
            ("NO", noisy(30.0)),
            ("ES", noisy(250.0)),
        ]);
        let jobs: Vec<Job> = (0..100).map(|i| rigid(i, 3, 2)).collect();
        // NO holds 16 vCPUs, the load needs 6: it never fills.
        let green = run(&s, vec![4, 4, 4], &jobs, Dispatch::Greenest);
        assert_eq!(green.vcpu_steps_by_zone, vec![0.0, 600.0, 0.0]);
        let blind = run(&s, vec![4, 4, 4], &jobs, Dispatch::AllAtOnce);
        assert!(blind.vcpu_steps_by_zone.iter().all(|&v| v > 0.0));
        assert!(green.outcome.grams < 0.5 * blind.outcome.grams);
        // NO holds 4 vCPUs, two of the three jobs running at a time: every third job
        // (i % 3 == 2) finds it full and spills to ES, the next greenest.
        let tight = run(&s, vec![1, 1, 1], &jobs, Dispatch::Greenest);
        assert_eq!(tight.vcpu_steps_by_zone, vec![0.0, 67.0 * 6.0, 33.0 * 6.0]);
        assert_eq!(tight.outcome.deadline_misses, 0);
    }

    #[test]
    fn deferral_waits_for_a_clearly_greener_hour_within_the_slack_only() {
        let mut values = vec![500.0; 48];
        values[10] = 50.0;
        let s = series(&[("DE", values)]);
        let flexible = Job {
            slack: 12,
            ..rigid(2, 1, 1)
        };
        let jobs = [
            flexible,
            rigid(2, 1, 1),
            Job {
                slack: 5,
                ..flexible
            },
        ];
        let out = run(
            &s,
            vec![1],
            &jobs,
            Dispatch::GreenestDeferred { k_sigma: 1.0 },
        );
        // The 50 g hour is at step 10: the first job waits 8 steps for it, the rigid one
        // starts at once, the third cannot reach it and starts by its latest start.
        assert_eq!(out.outcome.delays[..2], [8, 0]);
        assert!(out.outcome.delays[2] <= 5);
        assert_eq!(out.outcome.deadline_misses, 0);
    }
}
