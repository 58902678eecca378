//! Every metric's name, help text, labels and buckets, registered once when
//! the agent starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use prometheus::core::Collector;
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry,
};

use super::{Heartbeat, LazyGauge, Metrics};

/// Metric names and label sets are static, so a failure here is a programming
/// error that the unit tests hit first.
struct Catalogue<'a>(&'a Registry);

impl Catalogue<'_> {
    fn add<T: Collector + Clone + 'static>(&self, metric: Result<T, prometheus::Error>) -> T {
        let metric = metric.unwrap_or_else(|e| panic!("invalid metric definition: {e}"));
        if let Err(e) = self.0.register(Box::new(metric.clone())) {
            panic!("metric registration failed: {e}");
        }
        metric
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help))
    }

    fn lazy(&self, name: &str, help: &str) -> LazyGauge {
        LazyGauge(self.add(GaugeVec::new(Opts::new(name, help), &[])))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        self.add(CounterVec::new(Opts::new(name, help), labels))
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn int_counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }
}

const PROVIDER_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const POLL_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const POD_LABELS: &[&str] = &["namespace", "pod"];
/// A minute to two days: deferral windows are hours long.
const DEFERRAL_BUCKETS: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
];

impl Metrics {
    pub fn new(node: &str) -> Arc<Self> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(Some("carbon_kube".into()), Some(labels))
            .unwrap_or_else(|_| Registry::new());
        let c = Catalogue(&registry);
        let metrics = Self {
            zone_intensity: c.gauges(
                "zone_intensity_grams_per_kwh",
                "Carbon intensity of a grid zone in gCO2eq/kWh (the leader reports every zone, other agents their own).",
                &["zone", "source"],
            ),
            node_grid_intensity: c.lazy(
                "node_grid_intensity_grams_per_kwh",
                "Carbon intensity of this node's grid zone used for its emission figures, in gCO2eq/kWh.",
            ),
            node_power_watts: c.gauge(
                "node_power_watts",
                "Power draw of this node in watts, including PUE: measured parts where the hardware reports them, the model elsewhere (node_power_part_watts splits it).",
            ),
            node_idle_power_watts: c.gauge(
                "node_idle_power_watts",
                "Part of the node's power drawn at zero CPU load (idle CPU and memory, with PUE), in watts; never attributed to pods.",
            ),
            node_emissions_rate: c.lazy(
                "node_emissions_grams_per_hour",
                "CO2eq emission rate of this node in grams per hour.",
            ),
            node_emitted_grams: c.add(Counter::new(
                "node_emitted_grams_total",
                "CO2eq emitted by this node since the agent started, in grams.",
            )),
            node_emission_score: c.lazy(
                "node_emission_score_grams_per_vcpu_hour",
                "Marginal CO2eq of one more busy vCPU-hour on this node, in grams.",
            ),
            node_cpu_utilisation: c.gauge(
                "node_cpu_utilisation_ratio",
                "Host CPU utilisation used by the power model (0 to 1).",
            ),
            node_power_parts: c.gauges(
                "node_power_part_watts",
                "The node's power by part (cpu, dram, gpu) and whether the figure is measured or modelled, in watts including PUE; the parts add up to node_power_watts.",
                &["part", "source"],
            ),
            node_energy_joules: c.counters(
                "node_energy_joules_total",
                "Energy drawn by this node since the agent started, in joules including PUE, by whether it was measured or modelled.",
                &["source"],
            ),
            node_grid_info: c.gauges(
                "node_grid_info",
                "Always 1: the grid zone whose intensity prices this node's emissions, and that intensity's signal type (average or marginal).",
                &["zone", "signal"],
            ),
            threshold: c.lazy(
                "threshold_grams_per_kwh",
                "Threshold in force for this node's zone, in gCO2eq/kWh.",
            ),
            tainted: c.int_gauge("node_tainted", "1 while this node carries the carbon taint."),
            taint_transitions: c.int_counter(
                "taint_transitions_total",
                "Times this agent added or removed the carbon taint.",
            ),
            data_age_seconds: c.lazy(
                "data_age_seconds",
                "Age of the carbon data for this node's zone, in seconds.",
            ),
            node_write_errors: c.int_counter(
                "node_write_errors_total",
                "Failed writes of the taint, label or condition to this node.",
            ),
            errors: c.add(IntCounterVec::new(
                Opts::new(
                    "errors_total",
                    "Errors the agent met and will retry, by the part that met them (reconciler, poller, deferral, migration) and their kind (conflict, not_found, forbidden, throttled, server_error, client_error, transport, malformed, kube).",
                ),
                &["part", "kind"],
            )),
            provider_requests: c.counters(
                "provider_requests_total",
                "Carbon API requests by provider and outcome.",
                &["provider", "outcome"],
            ),
            provider_errors: c.counters(
                "provider_errors_total",
                "Failed carbon API requests by provider and outcome.",
                &["provider", "outcome"],
            ),
            provider_duration: c.add(HistogramVec::new(
                HistogramOpts::new(
                    "provider_request_duration_seconds",
                    "Carbon API request latency.",
                )
                .buckets(PROVIDER_BUCKETS.to_vec()),
                &["provider"],
            )),
            is_leader: c.int_gauge("is_leader", "1 while this agent holds the leader Lease."),
            leader_changes: c.int_counter(
                "leader_changes_total",
                "Times this agent gained or lost leadership.",
            ),
            poll_duration: c.add(Histogram::with_opts(
                HistogramOpts::new(
                    "poll_duration_seconds",
                    "Duration of one leader poll of all zones.",
                )
                .buckets(POLL_BUCKETS.to_vec()),
            )),
            tuner_threshold: c.gauges(
                "tuner_threshold_grams_per_kwh",
                "Threshold the tuner chose for a zone, in gCO2eq/kWh (leader only).",
                &["zone"],
            ),
            tuner_reward: c.gauges(
                "tuner_reward",
                "Reward of the tuner's last step for a zone (leader only).",
                &["zone"],
            ),
            tuner_decisions: c.add(IntCounterVec::new(
                Opts::new(
                    "tuner_decisions_total",
                    "Tuner steps by zone and action (raise, hold, lower).",
                ),
                &["zone", "action"],
            )),
            pod_power_watts: c.gauges(
                "pod_power_watts",
                "Share of this node's dynamic power drawn by a pod's CPU use, in watts.",
                POD_LABELS,
            ),
            pod_emissions_rate: c.gauges(
                "pod_emissions_grams_per_hour",
                "CO2eq emission rate of a pod's share of this node's dynamic power, in grams per hour.",
                POD_LABELS,
            ),
            pod_emitted_grams: c.counters(
                "pod_emitted_grams_total",
                "CO2eq emitted by a pod's share of this node's dynamic power, in grams.",
                POD_LABELS,
            ),
            pod_energy_joules: c.counters(
                "pod_energy_joules_total",
                "Energy of a pod's share of this node's dynamic power, in joules including PUE.",
                POD_LABELS,
            ),
            attributed_pods: c.int_gauge(
                "attributed_pods",
                "Pods on this node whose CPU use was attributed in the last sample.",
            ),
            pods_deferred: c.int_gauge(
                "pods_deferred",
                "Pods the leader holds behind the carbon-kube.io/defer scheduling gate (leader only).",
            ),
            deferral_seconds: c.add(Histogram::with_opts(
                HistogramOpts::new(
                    "deferral_seconds",
                    "Time from a gated pod's creation to its release by the leader.",
                )
                .buckets(DEFERRAL_BUCKETS.to_vec()),
            )),
            deferral_saved_grams: c.add(Counter::new(
                "deferral_saved_grams_total",
                "Estimated CO2eq saved by deferral, in grams: each released pod's run as forecast when first held minus its run from release, for its requested vCPUs (positive savings only).",
            )),
            deferral_releases: c.add(IntCounterVec::new(
                Opts::new(
                    "deferral_releases_total",
                    "Gated pods released by reason (greenest_now, gain_within_error, deadline, no_room, no_forecast, invalid).",
                ),
                &["reason"],
            )),
            deferral_booked: c.gauges(
                "deferral_booked_vcpus",
                "Most vCPUs the deferral planner has booked for held pods in any slot ahead, per zone (leader only).",
                &["zone"],
            ),
            deferral_room: c.gauges(
                "deferral_room_vcpus",
                "vCPUs deferred work may still take now per zone: free CPU left by other work times (1 - headroom), less deferred pods running and booked (leader only).",
                &["zone"],
            ),
            evictions: c.add(IntCounterVec::new(
                Opts::new(
                    "evictions_total",
                    "Evictions of opted-in pods off this tainted node by outcome (evicted; blocked by a PodDisruptionBudget; failed).",
                ),
                &["outcome"],
            )),
            ready: AtomicBool::new(false),
            heartbeat: Heartbeat::default(),
            registry: registry.clone(),
        };
        let build = c.gauges("build_info", "Build information; always 1.", &["version"]);
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        Arc::new(metrics)
    }

    /// Registers a metric of a controller that keeps its own (the Kueue check's).
    pub fn register<T: Collector + Clone + 'static>(
        &self,
        metric: Result<T, prometheus::Error>,
    ) -> T {
        Catalogue(&self.registry).add(metric)
    }
}
