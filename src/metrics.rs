//! The metric catalogue and its registry. Names follow Prometheus conventions:
//! prefix `carbon_kube_`, units in names, counters end in `_total`, and every
//! label has a bounded set of values (zones, providers, outcomes, tuner
//! actions, and the pods on this one node, whose series go when the pod goes).
//! Every series carries the constant label `node`.
//!
//! Each metric's name, help, labels and buckets are in `metrics/catalogue.rs`;
//! the HTTP server that exposes them lives in `metrics/server.rs`.

mod catalogue;
mod heartbeat;
mod server;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Registry, TextEncoder,
};
use tracing::warn;

use crate::carbon::Signal;
use crate::error::Error;
use crate::power::measured::{Breakdown, PartKind};
use crate::providers::Attempt;

pub use heartbeat::{Heartbeat, STALLED_AFTER};
pub use server::{bind, serve};

/// A gauge that is absent from /metrics until first set, so that "no data
/// yet" never reads as a real 0 (a data age of 0 would look perfectly fresh).
pub struct LazyGauge(GaugeVec);

impl LazyGauge {
    pub fn set(&self, value: f64) {
        self.0.with_label_values::<&str>(&[]).set(value);
    }

    pub fn get(&self) -> Option<f64> {
        let present = self.0.collect().iter().any(|f| !f.get_metric().is_empty());
        present.then(|| self.0.with_label_values::<&str>(&[]).get())
    }
}

pub struct Metrics {
    registry: Registry,
    // Grid and node.
    pub zone_intensity: GaugeVec,
    pub node_grid_intensity: LazyGauge,
    pub node_power_watts: Gauge,
    pub node_idle_power_watts: Gauge,
    pub node_emissions_rate: LazyGauge,
    pub node_emitted_grams: Counter,
    pub node_emission_score: LazyGauge,
    pub node_cpu_utilisation: Gauge,
    node_power_parts: GaugeVec,
    node_energy_joules: CounterVec,
    node_grid_info: GaugeVec,
    // Decision and node writes.
    pub threshold: LazyGauge,
    pub tainted: IntGauge,
    pub taint_transitions: IntCounter,
    pub data_age_seconds: LazyGauge,
    pub node_write_errors: IntCounter,
    errors: IntCounterVec,
    // Providers, leader and poller.
    pub provider_requests: CounterVec,
    pub provider_errors: CounterVec,
    pub provider_duration: HistogramVec,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub poll_duration: Histogram,
    // Tuner (leader only).
    tuner_threshold: GaugeVec,
    tuner_reward: GaugeVec,
    tuner_decisions: IntCounterVec,
    // Per-pod attribution.
    pod_power_watts: GaugeVec,
    pod_emissions_rate: GaugeVec,
    pod_emitted_grams: CounterVec,
    pod_energy_joules: CounterVec,
    pub attributed_pods: IntGauge,
    // Deferral (leader) and migration (every agent with --migration).
    pub pods_deferred: IntGauge,
    pub deferral_seconds: Histogram,
    pub deferral_saved_grams: Counter,
    deferral_releases: IntCounterVec,
    deferral_booked: GaugeVec,
    deferral_room: GaugeVec,
    evictions: IntCounterVec,
    pub ready: AtomicBool,
    /// The reconcile loop's, for /healthz.
    pub heartbeat: Heartbeat,
}

impl Metrics {
    /// Counts one chain fetch's provider attempts.
    pub fn record_attempts(&self, attempts: &[Attempt]) {
        for attempt in attempts {
            self.provider_requests
                .with_label_values(&[attempt.provider, attempt.outcome])
                .inc();
            self.provider_duration
                .with_label_values(&[attempt.provider])
                .observe(attempt.seconds);
            if attempt.outcome != "ok" {
                self.provider_errors
                    .with_label_values(&[attempt.provider, attempt.outcome])
                    .inc();
            }
        }
    }

    /// Sets the intensity of `zone`, dropping the series of any other source for it.
    pub fn set_zone_intensity(&self, zone: &str, source: &str, grams_per_kwh: f64) {
        let stale: Vec<String> = label_sets(&self.zone_intensity)
            .into_iter()
            .filter(|labels| labels.get("zone").map(String::as_str) == Some(zone))
            .filter_map(|mut labels| labels.remove("source"))
            .filter(|old| old != source)
            .collect();
        for old in stale {
            let _ = self.zone_intensity.remove_label_values(&[zone, &old]);
        }
        self.zone_intensity
            .with_label_values(&[zone, source])
            .set(grams_per_kwh);
    }

    /// Records leadership. A former leader drops what only the leader keeps
    /// current (every zone's intensity, the tuner's gauges) so that frozen
    /// values do not linger beside the new leader's; its own zone's intensity
    /// comes back with its next reconcile.
    pub fn set_leader(&self, leader: bool) {
        if (self.is_leader.get() == 1) != leader {
            self.leader_changes.inc();
        }
        self.is_leader.set(i64::from(leader));
        if !leader {
            self.zone_intensity.reset();
            self.tuner_threshold.reset();
            self.tuner_reward.reset();
        }
    }

    /// The tuner's threshold for `zone` (leader only).
    pub fn set_tuner_threshold(&self, zone: &str, grams_per_kwh: f64) {
        self.tuner_threshold
            .with_label_values(&[zone])
            .set(grams_per_kwh);
    }

    /// The reward of the tuner's last step for `zone` (leader only).
    pub fn set_tuner_reward(&self, zone: &str, reward: f64) {
        self.tuner_reward.with_label_values(&[zone]).set(reward);
    }

    /// One tuner step; `action` is one of `raise`, `hold`, `lower` (static, so bounded).
    pub fn record_tuner_decision(&self, zone: &str, action: &'static str) {
        self.tuner_decisions
            .with_label_values(&[zone, action])
            .inc();
    }

    /// The node's power by part and source class, at most six series: a
    /// part/class pair that no longer has a figure (a GPU gone, RAPL now
    /// readable) loses its series.
    pub fn set_power_parts(&self, breakdown: &Breakdown) {
        for kind in [PartKind::Cpu, PartKind::Dram, PartKind::Gpu] {
            for measured in [true, false] {
                let present = breakdown
                    .parts
                    .iter()
                    .any(|p| p.kind == kind && p.source.is_measured() == measured);
                let class = if measured { "measured" } else { "modelled" };
                let labels = [kind.as_str(), class];
                if present {
                    self.node_power_parts
                        .with_label_values(&labels)
                        .set(breakdown.watts_of(kind, measured));
                } else {
                    let _ = self.node_power_parts.remove_label_values(&labels);
                }
            }
        }
    }

    /// Adds the node's energy over `elapsed` at `breakdown`'s power, split into
    /// what was measured and what was modelled; the measured series exists only
    /// once something measures.
    pub fn add_node_energy(&self, breakdown: &Breakdown, elapsed: Duration) {
        let watts = |measured| {
            [PartKind::Cpu, PartKind::Dram, PartKind::Gpu]
                .iter()
                .map(|kind| breakdown.watts_of(*kind, measured))
                .sum::<f64>()
        };
        let measured = joules(watts(true), elapsed);
        if measured > 0.0 {
            self.node_energy_joules
                .with_label_values(&["measured"])
                .inc_by(measured);
        }
        self.node_energy_joules
            .with_label_values(&["modelled"])
            .inc_by(joules(watts(false), elapsed));
    }

    /// The grid zone whose intensity prices this node's figures and the signal
    /// type its provider publishes (see [`Signal::of_source`]): one series.
    pub fn set_node_grid(&self, zone: &str, signal: Signal) {
        let labels = [zone, signal.as_str()];
        let current = label_sets(&self.node_grid_info).into_iter().any(|l| {
            l.get("zone").map(String::as_str) == Some(zone)
                && l.get("signal").map(String::as_str) == Some(signal.as_str())
        });
        if !current {
            self.node_grid_info.reset();
            self.node_grid_info.with_label_values(&labels).set(1.0);
        }
    }

    /// A pod's share of the node's power over the last sample (`elapsed`
    /// long), and the grams it emitted meanwhile (`None` while the zone's
    /// intensity is unknown).
    pub fn set_pod(
        &self,
        namespace: &str,
        pod: &str,
        watts: f64,
        elapsed: Duration,
        emissions: Option<PodEmissions>,
    ) {
        let labels = [namespace, pod];
        self.pod_power_watts.with_label_values(&labels).set(watts);
        self.pod_energy_joules
            .with_label_values(&labels)
            .inc_by(joules(watts, elapsed));
        if let Some(e) = emissions {
            self.pod_emissions_rate
                .with_label_values(&labels)
                .set(e.grams_per_hour);
            self.pod_emitted_grams
                .with_label_values(&labels)
                .inc_by(e.grams);
        }
    }

    /// Drops every series of a pod that has left the node.
    pub fn remove_pod(&self, namespace: &str, pod: &str) {
        let labels = [namespace, pod];
        let _ = self.pod_power_watts.remove_label_values(&labels);
        let _ = self.pod_emissions_rate.remove_label_values(&labels);
        let _ = self.pod_emitted_grams.remove_label_values(&labels);
        let _ = self.pod_energy_joules.remove_label_values(&labels);
    }

    /// The planner's ledger after a round, per zone: peak booked vCPUs and room now.
    pub fn set_deferral_ledger(&self, zones: &[(String, f64, f64)]) {
        self.deferral_booked.reset();
        self.deferral_room.reset();
        for (zone, booked, room) in zones {
            self.deferral_booked.with_label_values(&[zone]).set(*booked);
            self.deferral_room.with_label_values(&[zone]).set(*room);
        }
    }

    /// A gated pod released; `reason` is a [`crate::planner::ReleaseReason::label`],
    /// `no_forecast` or `invalid`.
    pub fn record_deferral_release(&self, reason: &'static str) {
        self.deferral_releases.with_label_values(&[reason]).inc();
    }

    /// One error `part` met and will retry, by its [`Error::metric_label`].
    pub fn record_error(&self, part: &'static str, error: &Error) {
        self.errors
            .with_label_values(&[part, error.metric_label()])
            .inc();
    }

    /// One eviction attempt; `outcome` is `evicted`, `blocked` or `failed`.
    pub fn record_eviction(&self, outcome: &'static str) {
        self.evictions.with_label_values(&[outcome]).inc();
    }

    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Emissions of one pod over one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PodEmissions {
    pub grams_per_hour: f64,
    /// Grams emitted during the sample: added to the pod's counter.
    pub grams: f64,
}

/// Energy of `watts` over `elapsed`; what is not a finite non-negative figure
/// adds nothing, as a counter must never go down or become NaN.
fn joules(watts: f64, elapsed: Duration) -> f64 {
    let j = watts * elapsed.as_secs_f64();
    if j.is_finite() && j > 0.0 { j } else { 0.0 }
}

/// The label sets of a vector's current children.
fn label_sets(vector: &impl Collector) -> Vec<HashMap<String, String>> {
    vector
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| {
            metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests;
