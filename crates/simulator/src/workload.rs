//! Jobs for the cluster replay, and a seeded synthetic generator.

use crate::numpy_rng::NumpyRng;

/// One batch pod, in simulator steps (hours for the shipped traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub arrival: usize,
    pub duration: usize,
    pub vcpus: u32,
    /// Steps the job may wait and still meet its deadline; 0 = must start at once.
    pub slack: usize,
    /// The zone the job is submitted to (its namespace's preferred node pool).
    pub home: usize,
    /// Must run in its home zone (data locality, a zonal volume).
    pub pinned: bool,
}

impl Job {
    pub fn flexible(&self) -> bool {
        self.slack > 0
    }

    /// Last start that still meets the deadline.
    pub fn latest_start(&self) -> usize {
        self.arrival + self.slack
    }
}

/// When jobs arrive, by hour of the week (steps are hours from a midnight UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Any hour, `weight` times as likely in weekday working hours (08–18 UTC).
    WorkingWeek { weight: f64 },
    /// Only at this hour of every day (a CronJob).
    Daily { hour: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadParams {
    pub jobs: usize,
    pub seed: u64,
    pub arrivals: Arrivals,
    pub mean_duration_steps: f64,
    pub max_duration_steps: usize,
    /// Share of jobs that opt in to waiting for greener power.
    pub flexible_share: f64,
    /// A flexible job's slack is uniform in min..=max.
    pub min_slack_steps: usize,
    pub max_slack_steps: usize,
    pub pinned_share: f64,
}

/// Workload scenarios: which kind of work a cluster runs decides whether waiting pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// Long batch jobs (geometric, mean 8 h, up to 72 h), half of them may wait up to
    /// 24 h, arrivals twice as likely in working hours: the default.
    Batch,
    /// Let's Wait Awhile's nightly jobs: every job starts from a CronJob at 01:00 UTC,
    /// runs an hour, and may wait up to 8 h (the paper's ±8 h, forward only).
    Nightly,
    /// CI-like: one-hour jobs, mostly in weekday working hours (8 ×); a third (main-branch
    /// builds, scheduled suites) may wait up to 6 h, the rest have someone waiting.
    Ci,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Nightly => "nightly",
            Self::Ci => "ci",
        }
    }

    pub fn params(self) -> WorkloadParams {
        match self {
            Self::Batch => WorkloadParams {
                jobs: 60_000,
                seed: 42,
                arrivals: Arrivals::WorkingWeek { weight: 2.0 },
                mean_duration_steps: 8.0,
                max_duration_steps: 72,
                flexible_share: 0.5,
                min_slack_steps: 1,
                max_slack_steps: 24,
                pinned_share: 0.3,
            },
            // About 55 jobs a night, ~200 vCPUs at 01:00: the night fits a 512-vCPU cluster.
            Self::Nightly => WorkloadParams {
                jobs: 20_000,
                arrivals: Arrivals::Daily { hour: 1 },
                mean_duration_steps: 1.0,
                max_duration_steps: 1,
                flexible_share: 1.0,
                min_slack_steps: 8,
                max_slack_steps: 8,
                ..Self::Batch.params()
            },
            Self::Ci => WorkloadParams {
                jobs: 150_000,
                arrivals: Arrivals::WorkingWeek { weight: 8.0 },
                mean_duration_steps: 1.0,
                max_duration_steps: 1,
                flexible_share: 1.0 / 3.0,
                min_slack_steps: 1,
                max_slack_steps: 6,
                pinned_share: 0.1,
                ..Self::Batch.params()
            },
        }
    }
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadKind::Batch.params()
    }
}

/// Pod sizes and their weights: mostly small pods, some large ones.
const VCPU_SIZES: [(u32, f64); 5] = [(1, 0.3), (2, 0.3), (4, 0.2), (8, 0.15), (16, 0.05)];

/// Jobs sorted by arrival. Arrivals follow [`Arrivals`]; durations are
/// geometric around the mean; home zones follow node counts.
/// Every job's deadline falls within the `steps` simulated, so no policy is
/// credited for pushing work past the end of the trace.
pub fn generate(
    params: &WorkloadParams,
    steps: usize,
    zone_nodes: &[usize],
    first_weekday: usize,
) -> Vec<Job> {
    let mut rng = NumpyRng::new(params.seed);
    let busy = |step: usize| {
        let weekday = (first_weekday + step / 24) % 7;
        let hour = step % 24;
        match params.arrivals {
            Arrivals::WorkingWeek { weight } if weekday < 5 && (8..18).contains(&hour) => weight,
            Arrivals::WorkingWeek { .. } => 1.0,
            Arrivals::Daily { hour: at } => f64::from(u8::from(hour == at)),
        }
    };
    let horizon = steps
        .saturating_sub(params.max_duration_steps + params.max_slack_steps)
        .max(1);
    let arrival_cdf = cumulative((0..horizon).map(busy));
    let zone_cdf = cumulative(zone_nodes.iter().map(|&n| n as f64));
    let size_cdf = cumulative(VCPU_SIZES.iter().map(|&(_, w)| w));
    let mut jobs: Vec<Job> = (0..params.jobs)
        .map(|_| {
            let arrival = pick(&arrival_cdf, rng.next_f64());
            // Geometric with the requested mean, at least one step.
            let p = 1.0 / params.mean_duration_steps.max(1.0);
            let duration = (1.0 + ((1.0 - rng.next_f64()).ln() / (1.0 - p).ln()).floor()) as usize;
            let flexible = rng.next_f64() < params.flexible_share;
            let slack = if flexible {
                let min = params
                    .min_slack_steps
                    .clamp(1, params.max_slack_steps.max(1));
                min + rng.below((params.max_slack_steps.max(1) + 1 - min) as u32) as usize
            } else {
                0
            };
            Job {
                arrival,
                duration: duration.clamp(1, params.max_duration_steps.max(1)),
                vcpus: VCPU_SIZES[pick(&size_cdf, rng.next_f64())].0,
                slack: slack.min(params.max_slack_steps),
                home: pick(&zone_cdf, rng.next_f64()),
                pinned: rng.next_f64() < params.pinned_share,
            }
        })
        .collect();
    jobs.sort_by_key(|j| j.arrival);
    jobs
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

/// Index whose cumulative weight first exceeds `u` × total.
fn pick(cdf: &[f64], u: f64) -> usize {
    let target = u * cdf.last().copied().unwrap_or(0.0);
    cdf.partition_point(|&c| c <= target)
        .min(cdf.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sorted_and_inside_the_horizon() {
        let params = WorkloadParams {
            jobs: 5_000,
            ..WorkloadParams::default()
        };
        let a = generate(&params, 8760, &[2, 2, 4], 0);
        assert_eq!(a, generate(&params, 8760, &[2, 2, 4], 0));
        assert_ne!(
            a,
            generate(
                &WorkloadParams {
                    seed: 7,
                    ..params.clone()
                },
                8760,
                &[2, 2, 4],
                0
            )
        );
        assert!(a.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        assert!(a.iter().all(|j| j.latest_start() + j.duration <= 8760));
        let flexible = a.iter().filter(|j| j.flexible()).count() as f64 / 5_000.0;
        assert!((flexible - 0.5).abs() < 0.03, "{flexible}");
        let mean = a.iter().map(|j| j.duration as f64).sum::<f64>() / 5_000.0;
        assert!((mean - 8.0).abs() < 0.5, "{mean}");
        let big_zone = a.iter().filter(|j| j.home == 2).count() as f64 / 5_000.0;
        assert!((big_zone - 0.5).abs() < 0.03, "{big_zone}");
    }

    #[test]
    fn nightly_jobs_start_at_one_and_may_wait_eight_hours() {
        let params = WorkloadKind::Nightly.params();
        let jobs = generate(&params, 8760, &[4, 4], 5);
        assert_eq!(jobs.len(), 20_000);
        assert!(jobs.iter().all(|j| j.arrival % 24 == 1));
        assert!(jobs.iter().all(|j| j.duration == 1 && j.slack == 8));
        // Every night of the year gets some: about 55 a night.
        let nights: std::collections::BTreeSet<usize> =
            jobs.iter().map(|j| j.arrival / 24).collect();
        assert!(nights.len() > 360, "{}", nights.len());
    }

    #[test]
    fn ci_jobs_are_short_and_crowd_into_working_hours() {
        let params = WorkloadKind::Ci.params();
        // The trace starts on a Monday.
        let jobs = generate(&params, 8760, &[4, 4], 0);
        assert!(jobs.iter().all(|j| j.duration == 1 && j.slack <= 6));
        let working = jobs
            .iter()
            .filter(|j| (j.arrival / 24) % 7 < 5 && (8..18).contains(&(j.arrival % 24)))
            .count() as f64
            / jobs.len() as f64;
        // 50 of 168 hours a week at 8 × weight: 400 / 518 of the jobs.
        assert!((working - 400.0 / 518.0).abs() < 0.01, "{working}");
        let flexible = jobs.iter().filter(|j| j.flexible()).count() as f64 / jobs.len() as f64;
        assert!((flexible - 1.0 / 3.0).abs() < 0.01, "{flexible}");
    }

    #[test]
    fn pick_follows_the_weights() {
        let cdf = cumulative([1.0, 0.0, 3.0].into_iter());
        assert_eq!(pick(&cdf, 0.0), 0);
        assert_eq!(pick(&cdf, 0.24), 0);
        assert_eq!(pick(&cdf, 0.26), 2);
        assert_eq!(pick(&cdf, 0.999), 2);
    }
}
