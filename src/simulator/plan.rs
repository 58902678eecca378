//! Choosing when (and where) a job should run from a series: the deferral
//! policy plans on the forecast, the oracle on the truth.

use super::engine::{Outcome, Scenario};

// The deferral policy itself lives in `crate::deferral`, shared with the
// leader's live deferral of gated pods: one implementation, two callers.
pub use crate::deferral::{Prefix, cheapest_start};

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
