//! The oracle: when and where each job would run knowing the future. (The
//! deferral policy is the leader's planner, `carbon_kube_core::planner`.)

use crate::engine::{Outcome, Scenario};

/// Running totals of a series, so any window's sum is two lookups.
#[derive(Debug, Clone)]
pub struct Prefix(Vec<f64>);

impl Prefix {
    pub fn new(values: &[f64]) -> Self {
        let mut sums = Vec::with_capacity(values.len() + 1);
        sums.push(0.0);
        let mut total = 0.0;
        for v in values {
            total += v;
            sums.push(total);
        }
        Self(sums)
    }

    pub fn len(&self) -> usize {
        self.0.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn window(&self, start: usize, len: usize) -> f64 {
        self.0[start + len] - self.0[start]
    }
}

/// The start in `earliest..=latest` with the lowest total over `duration`
/// (earliest on ties), kept inside the series; and that total.
pub fn cheapest_start(
    prefix: &Prefix,
    earliest: usize,
    latest: usize,
    duration: usize,
) -> (usize, f64) {
    let last = latest
        .min(prefix.len().saturating_sub(duration))
        .max(earliest);
    let mut best = (earliest, f64::INFINITY);
    for start in earliest..=last {
        let total = prefix.window(start, duration.min(prefix.len() - start));
        if total < best.1 {
            best = (start, total);
        }
    }
    best
}

/// The lower bound: every job at its cheapest zone and start within its window,
/// knowing the future exactly, with capacity relaxed. No schedule that runs
/// each job in one piece and meets every window emits less.
pub fn oracle(scenario: &Scenario, truth: &[Prefix]) -> Outcome {
    let mut outcome = Outcome::empty(scenario);
    for (index, job) in scenario.jobs.iter().enumerate() {
        let zones: Vec<usize> = if job.pinned {
            vec![job.home]
        } else {
            (0..truth.len()).collect()
        };
        let (start, total) = zones
            .into_iter()
            .map(|z| cheapest_start(&truth[z], job.arrival, job.latest_start(), job.duration))
            .fold((job.arrival, f64::INFINITY), |best, c| {
                if c.1 < best.1 { c } else { best }
            });
        outcome.record_start(index, job, start);
        outcome.add_emissions(
            job.home,
            f64::from(job.vcpus) * scenario.grams_per_vcpu_step(total),
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheapest_window_earliest_on_ties_and_inside_the_series() {
        let p = Prefix::new(&[5.0, 1.0, 1.0, 5.0, 1.0, 1.0]);
        assert_eq!(p.window(1, 2), 2.0);
        assert_eq!(cheapest_start(&p, 0, 10, 2), (1, 2.0));
        assert_eq!(cheapest_start(&p, 2, 10, 2), (4, 2.0));
        assert_eq!(cheapest_start(&p, 0, 0, 2), (0, 6.0));
    }
}
