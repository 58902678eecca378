//! Every agent's emissions loop: sample the host, apply the power model and
//! the zone's intensity, and publish power, emission rate, grams emitted and
//! the node's emission score.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::attribution::Attribution;
use crate::host::HostSampler;
use crate::metrics::Metrics;
use crate::power::{self, EmissionCounter, PowerCoefficients, PowerOverrides};
use crate::zones::Cloud;

pub struct EmissionsLoop {
    sampler: HostSampler,
    coefficients: PowerCoefficients,
    interval: Duration,
    metrics: Arc<Metrics>,
    attribution: Option<Attribution>,
}

impl EmissionsLoop {
    /// Picks coefficients for this host's CPU and applies the operator's overrides;
    /// a bad override fails the start with the field named.
    pub fn new(
        overrides: &PowerOverrides,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut sampler = HostSampler::new()?;
        let host = sampler.sample();
        // AWS's PUE and averages unless overridden: the cloud this project deploys to.
        let coefficients = host
            .coefficients(Cloud::Aws)
            .with_overrides(overrides)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        tracing::info!(cpu = %host.cpu_brand, vcpus = host.vcpus, ?coefficients, "power model ready");
        Ok(Self {
            sampler,
            coefficients,
            interval,
            metrics,
            attribution: None,
        })
    }

    /// Also shares the node's dynamic power out to its pods, each sample.
    pub fn with_attribution(mut self, attribution: Attribution) -> Self {
        self.attribution = Some(attribution);
        self
    }

    pub async fn run(
        mut self,
        intensity: watch::Receiver<Option<f64>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut counter = EmissionCounter::new();
        let mut ticker = tokio::time::interval(self.interval);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let host = self.sampler.sample();
            let watts = power::node_watts(
                &self.coefficients,
                host.vcpus,
                host.cpu_utilisation,
                host.memory_total_gb,
            );
            let elapsed = last.elapsed();
            last = Instant::now();
            self.metrics.node_power_watts.set(watts);
            self.metrics.node_cpu_utilisation.set(host.cpu_utilisation);
            let idle = power::node_watts(&self.coefficients, host.vcpus, 0.0, host.memory_total_gb);
            self.metrics.node_idle_power_watts.set(idle);
            if let Some(attribution) = &mut self.attribution {
                let busy_vcpus = host.cpu_utilisation * host.vcpus;
                attribution.sample(&self.coefficients, busy_vcpus, *intensity.borrow());
            }
            let Some(grams_per_kwh) = *intensity.borrow() else {
                continue;
            };
            self.metrics.node_grid_intensity.set(grams_per_kwh);
            self.metrics
                .node_emissions_rate
                .set(power::grams_per_hour(watts, grams_per_kwh));
            self.metrics.node_emission_score.set(power::emission_score(
                &self.coefficients,
                host.cpu_utilisation,
                grams_per_kwh,
            ));
            let grams = counter.add(watts, grams_per_kwh, elapsed);
            self.metrics.node_emitted_grams.inc_by(grams);
        }
    }
}
