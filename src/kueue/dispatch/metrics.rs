//! The dispatcher's metrics.

use super::*;

pub struct DispatchMetrics {
    pub(super) dispatched: IntCounterVec,
}

impl DispatchMetrics {
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            dispatched: metrics.register(IntCounterVec::new(
                Opts::new(
                    "kueue_dispatched_total",
                    "MultiKueue Workloads nominated by carbon-kube.io/greenest, by worker cluster \
                     and reason (greenest, or all when data was missing).",
                ),
                &["cluster", "reason"],
            )),
        })
    }
}
