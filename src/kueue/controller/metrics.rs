//! The green-window check's metrics.

use super::*;

/// The check's metrics, registered once per agent; the leader's controller updates them.
pub struct CheckMetrics {
    pub(super) held: IntGauge,
    pub(super) ready: IntCounterVec,
    pub(super) held_seconds: Histogram,
}

impl CheckMetrics {
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            held: metrics.register(IntGauge::new(
                "kueue_workloads_held",
                "Kueue Workloads whose carbon-kube.io/green-window check this leader keeps Pending.",
            )),
            ready: metrics.register(IntCounterVec::new(
                Opts::new(
                    "kueue_checks_ready_total",
                    "carbon-kube.io/green-window checks set Ready, by reason (greenest_now, \
                     gain_within_error, deadline, no_room, no_forecast, invalid).",
                ),
                &["reason"],
            )),
            held_seconds: metrics.register(Histogram::with_opts(
                HistogramOpts::new(
                    "kueue_hold_seconds",
                    "From a Workload's creation to its carbon-kube.io/green-window check Ready.",
                )
                .buckets(HOLD_BUCKETS.to_vec()),
            )),
        })
    }
}
