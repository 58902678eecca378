//! What a replay reports for one policy.

use super::Scenario;
use crate::workload::Job;

/// What happened to the jobs under one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub grams: f64,
    /// Emissions of the jobs submitted to each zone, wherever they ran.
    pub grams_by_home: Vec<f64>,
    /// Steps each job waited; jobs never started count up to the end of the trace.
    pub delays: Vec<usize>,
    pub delay_vcpu_hours: f64,
    pub deadline_misses: usize,
    pub tainted_node_steps: u64,
    pub node_steps: u64,
    /// Per zone, per step.
    pub tainted: Vec<Vec<bool>>,
    pub thresholds: Vec<Vec<f64>>,
}

impl Outcome {
    pub fn empty(scenario: &Scenario) -> Self {
        let zones = scenario.series.len();
        Self {
            grams: 0.0,
            grams_by_home: vec![0.0; zones],
            delays: vec![0; scenario.jobs.len()],
            delay_vcpu_hours: 0.0,
            deadline_misses: 0,
            tainted_node_steps: 0,
            node_steps: 0,
            tainted: vec![Vec::new(); zones],
            thresholds: vec![Vec::new(); zones],
        }
    }

    pub fn record_start(&mut self, index: usize, job: &Job, start: usize) {
        let delay = start.saturating_sub(job.arrival);
        self.delays[index] = delay;
        self.delay_vcpu_hours += (delay * job.vcpus as usize) as f64;
        if start > job.latest_start() {
            self.deadline_misses += 1;
        }
    }

    pub fn add_emissions(&mut self, home: usize, grams: f64) {
        self.grams += grams;
        self.grams_by_home[home] += grams;
    }
}
