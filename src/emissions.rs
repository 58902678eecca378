//! Every agent's emissions loop: sample the host and the power meters, apply
//! the power model to what nothing measures and the zone's intensity, and
//! publish power (by part and source), emission rate, grams emitted and the
//! node's emission score.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::attribution::Attribution;
use crate::cli::PowerArgs;
use crate::error::ConfigError;
use crate::host::HostSampler;
use crate::meters::{self, MeterSample, MeterSettings, Meters};
use crate::metrics::Metrics;
use crate::power::measured::{Breakdown, ModelInputs};
use crate::power::{
    self, CloudSource, EmissionCounter, HostSample, PowerCoefficients, PowerError, PowerOverrides,
    cloud_of_node,
};
use crate::zones::Cloud;

/// How every agent measures its node and its pods.
#[derive(Debug, Clone)]
pub struct EmissionsSettings {
    pub sample_interval: Duration,
    /// The host's cgroup mount, for per-pod attribution.
    pub cgroup_root: PathBuf,
    pub power: PowerSettings,
    pub meters: MeterSettings,
}

/// The operator's say in the node's power model.
#[derive(Debug, Clone, Default)]
pub struct PowerSettings {
    /// `--cloud`; `None`: from the node.
    pub cloud: Option<Cloud>,
    pub overrides: PowerOverrides,
}

/// The node's one power model, decided at start and used by emissions,
/// attribution and deferral alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodePower {
    pub coefficients: PowerCoefficients,
    pub cloud: Cloud,
    pub cloud_source: CloudSource,
}

impl PowerSettings {
    /// `--cloud` and the coefficient overrides, each checked on its own here
    /// and against the host's CPU in [`Self::node_power`].
    pub fn from_args(args: &PowerArgs) -> Result<Self, ConfigError> {
        let overrides = PowerOverrides {
            min_watts_per_vcpu: args.min_watts_per_vcpu,
            max_watts_per_vcpu: args.max_watts_per_vcpu,
            memory_watts_per_gb: args.memory_watts_per_gb,
            pue: args.pue,
        };
        overrides.validate().map_err(Self::config_error)?;
        Ok(Self {
            cloud: args.cloud,
            overrides,
        })
    }

    /// The model for this host's CPU (brand → micro-architecture, else its
    /// architecture) in the node's cloud (see [`cloud_of_node`]), with the
    /// overrides applied. An override that does not fit is an error that
    /// names its flag, never a silent fallback.
    pub fn node_power(
        &self,
        host: &HostSample,
        provider_id: Option<&str>,
        region_label: Option<&str>,
    ) -> Result<NodePower, ConfigError> {
        let (cloud, cloud_source) = cloud_of_node(self.cloud, provider_id, region_label);
        let coefficients = host
            .coefficients(cloud)
            .with_overrides(&self.overrides)
            .map_err(Self::config_error)?;
        Ok(NodePower {
            coefficients,
            cloud,
            cloud_source,
        })
    }

    /// A power error as the flag to fix: `pue` is `--pue`, `min_watts_per_vcpu`
    /// is `--min-watts-per-vcpu`.
    pub fn config_error(error: PowerError) -> ConfigError {
        match error {
            PowerError::InvalidCoefficient {
                field,
                value,
                reason,
            } => ConfigError::new(&field.replace('_', "-"), format!("{value} {reason}")),
            other => ConfigError::new("config", other.to_string()),
        }
    }
}

pub struct EmissionsLoop {
    sampler: HostSampler,
    meters: Meters,
    coefficients: PowerCoefficients,
    interval: Duration,
    metrics: Arc<Metrics>,
    attribution: Option<Attribution>,
    /// What the node condition says of the power figures.
    power_note: watch::Sender<String>,
}

impl EmissionsLoop {
    /// `sampler` is the one the node's model was decided from: its first
    /// sample starts the first utilisation interval.
    pub fn new(
        sampler: HostSampler,
        coefficients: PowerCoefficients,
        settings: &EmissionsSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sampler,
            meters: Meters::new(settings.meters.clone()),
            coefficients,
            interval: settings.sample_interval,
            metrics,
            attribution: None,
            // Empty until the first sample: the condition then says nothing of power
            // rather than claim a model the meters may be about to replace.
            power_note: watch::channel(String::new()).0,
        }
    }

    /// The sentence on power for the node condition, kept current.
    pub fn power_note(&self) -> watch::Receiver<String> {
        self.power_note.subscribe()
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
            let meter = self.meters.read().await;
            let breakdown = breakdown(&host, &meter, &self.coefficients);
            let watts = breakdown.total_watts();
            let elapsed = last.elapsed();
            last = Instant::now();
            self.metrics.node_power_watts.set(watts);
            self.metrics.set_power_parts(&breakdown);
            self.metrics.add_node_energy(&breakdown, elapsed);
            // After the metrics, so whoever sees the note sees the figures it describes.
            self.power_note.send_if_modified(|note| {
                let now = power_note(&meter);
                let changed = *note != now;
                *note = now;
                changed
            });
            self.metrics.node_cpu_utilisation.set(host.cpu_utilisation);
            self.metrics
                .node_idle_power_watts
                .set(breakdown.idle_watts());
            let per_vcpu = breakdown.watts_per_busy_vcpu(&self.coefficients);
            if let Some(attribution) = &mut self.attribution {
                let busy_vcpus = host.cpu_utilisation * host.vcpus;
                let gpus = meter
                    .pod_gpu_watts
                    .iter()
                    .map(|(pod, w)| (pod.clone(), w * breakdown.pue))
                    .collect();
                attribution.sample(per_vcpu, busy_vcpus, &gpus, *intensity.borrow());
            }
            let Some(grams_per_kwh) = *intensity.borrow() else {
                continue;
            };
            self.metrics.node_grid_intensity.set(grams_per_kwh);
            self.metrics
                .node_emissions_rate
                .set(power::grams_per_hour(watts, grams_per_kwh));
            self.metrics
                .node_emission_score
                .set(power::grams_per_hour(per_vcpu, grams_per_kwh));
            let grams = counter.add(watts, grams_per_kwh, elapsed);
            self.metrics.node_emitted_grams.inc_by(grams);
        }
    }
}

fn breakdown(host: &HostSample, meter: &MeterSample, c: &PowerCoefficients) -> Breakdown {
    let model = ModelInputs {
        vcpus: host.vcpus,
        cpu_utilisation: host.cpu_utilisation,
        memory_gb: host.memory_total_gb,
    };
    Breakdown::combine(&meter.parts, model, c)
}

/// `Power: measured by rapl, dcgm-exporter; …`, or modelled.
pub fn power_note(meter: &MeterSample) -> String {
    if meter.sources.is_empty() {
        "Power: modelled (CCF coefficients × CPU utilisation; no power meter found).".into()
    } else {
        format!(
            "Power: measured by {}; what they do not cover is modelled (CCF).",
            meters::describe(&meter.sources)
        )
    }
}

/// `carbon-kube power`: one sample of this host's breakdown, each figure with
/// its source, under the model `--cloud` (else AWS) and the overrides give.
/// Two reads `span` apart, as energy counters and CPU utilisation are differences.
pub async fn print_sample(
    power: &PowerSettings,
    settings: &MeterSettings,
    span: Duration,
) -> anyhow::Result<String> {
    let mut sampler = HostSampler::new()?;
    let coefficients = power
        .node_power(&sampler.sample(), None, None)?
        .coefficients;
    let mut meters = Meters::new(settings.clone());
    meters.read().await;
    tokio::time::sleep(span.max(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL)).await;
    let host = sampler.sample();
    let meter = meters.read().await;
    let b = breakdown(&host, &meter, &coefficients);
    let mut out = format!("{:<6} {:<40} {:>10}  source\n", "part", "device", "watts");
    for part in &b.parts {
        out.push_str(&format!(
            "{:<6} {:<40} {:>10.2}  {} ({})\n",
            part.kind.as_str(),
            part.device,
            part.watts,
            part.source,
            part.source.class()
        ));
    }
    out.push_str(&format!(
        "total {:.2} W with PUE {} ({} vCPUs at {:.0} % busy); {:.0} % measured\n{}\n",
        b.total_watts(),
        b.pue,
        host.vcpus,
        host.cpu_utilisation * 100.0,
        b.measured_share() * 100.0,
        power_note(&meter)
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meters::testing::FakeSys;
    use crate::testing::sample;

    async fn next_note(note: &mut watch::Receiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), note.changed())
            .await
            .expect("the note changes within 10 s")
            .unwrap();
        note.borrow().clone()
    }

    #[tokio::test]
    async fn the_loop_publishes_measured_parts_says_so_and_falls_back() {
        let sys = FakeSys::new("emissions");
        sys.write("class/hwmon/hwmon0/name", "amdgpu");
        sys.write("class/hwmon/hwmon0/power1_average", "95000000");
        let settings = EmissionsSettings {
            sample_interval: Duration::from_millis(20),
            cgroup_root: PathBuf::new(),
            power: PowerSettings::default(),
            meters: MeterSettings {
                sysfs_root: sys.root.clone(),
                dcgm_url: None,
                nvidia_smi: None,
            },
        };
        let c = PowerCoefficients {
            min_watts_per_vcpu: 1.0,
            max_watts_per_vcpu: 4.0,
            memory_watts_per_gb: 0.5,
            pue: 1.2,
        };
        let metrics = Metrics::new("n");
        let emissions =
            EmissionsLoop::new(HostSampler::new().unwrap(), c, &settings, metrics.clone());
        let mut note = emissions.power_note();
        assert_eq!(*note.borrow(), "", "nothing said before the first sample");
        let (_intensity_tx, intensity) = watch::channel(Some(400.0));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(emissions.run(intensity, shutdown));

        let measured = next_note(&mut note).await;
        assert!(
            measured.starts_with("Power: measured by hwmon;"),
            "{measured}"
        );
        let text = metrics.encode();
        let part = |text: &str, part: &str, source: &str| {
            let labels = [format!("part=\"{part}\""), format!("source=\"{source}\"")];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            sample(text, "carbon_kube_node_power_part_watts", &labels)
        };
        assert_eq!(part(&text, "gpu", "measured"), Some(95.0 * 1.2), "{text}");
        assert!(part(&text, "cpu", "modelled").is_some(), "{text}");
        assert_eq!(part(&text, "cpu", "measured"), None, "{text}");
        let node = sample(&text, "carbon_kube_node_power_watts", &[]).unwrap();
        let parts: f64 = ["cpu", "dram", "gpu"]
            .iter()
            .filter_map(|p| part(&text, p, "modelled").or(part(&text, p, "measured")))
            .sum();
        assert!((node - parts).abs() < 1e-6 * node, "{text}");

        // The sensor becomes unreadable: its series goes, the note says modelled.
        sys.replace_with_dir("class/hwmon/hwmon0/power1_average");
        let modelled = next_note(&mut note).await;
        assert!(modelled.starts_with("Power: modelled"), "{modelled}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = metrics.encode();
        assert_eq!(part(&text, "gpu", "measured"), None, "{text}");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    fn host(brand: &str, arch: &'static str) -> HostSample {
        HostSample {
            vcpus: 4.0,
            cpu_utilisation: 0.0,
            memory_used_gb: 1.0,
            memory_total_gb: 8.0,
            cpu_brand: brand.into(),
            arch,
        }
    }

    #[test]
    fn the_node_gets_one_model_from_its_cpu_and_cloud() {
        let settings = PowerSettings::default();
        // An unknown CPU on GCP: GCP's PUE and median watts, not AWS's.
        let gcp = settings
            .node_power(
                &host("Intel(R) Xeon(R) CPU @ 2.20GHz", "x86_64"),
                Some("gce://p/z/n"),
                None,
            )
            .unwrap();
        assert_eq!(
            (gcp.cloud, gcp.cloud_source),
            (Cloud::Gcp, CloudSource::ProviderId)
        );
        assert_eq!(
            gcp.coefficients,
            PowerCoefficients::for_cloud(Cloud::Gcp, "x86_64")
        );
        // The brand names the micro-architecture; the region label the cloud.
        let azure = settings
            .node_power(
                &host("AMD EPYC 7R13 Processor", "x86_64"),
                None,
                Some("westeurope"),
            )
            .unwrap();
        assert_eq!(
            azure.coefficients,
            PowerCoefficients::for_cloud(Cloud::Azure, "AMD EPYC 3rd Gen")
        );
        // The flag wins over what the node says.
        let flagged = PowerSettings {
            cloud: Some(Cloud::Aws),
            ..Default::default()
        }
        .node_power(&host("Neoverse-N1", "aarch64"), Some("gce://p/z/n"), None)
        .unwrap();
        assert_eq!(
            (flagged.cloud, flagged.cloud_source),
            (Cloud::Aws, CloudSource::Flag)
        );
        assert_eq!(flagged.coefficients.max_watts_per_vcpu, 1.69);
    }

    #[test]
    fn an_override_that_does_not_fit_the_host_names_its_flag() {
        // Graviton2's full load is 1.69 W: an idle figure of 3 W cannot be right.
        let settings = PowerSettings {
            overrides: PowerOverrides {
                min_watts_per_vcpu: Some(3.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = settings
            .node_power(&host("Neoverse-N1", "aarch64"), None, None)
            .unwrap_err();
        assert_eq!(err.field, "min-watts-per-vcpu", "{err}");
        assert!(
            err.to_string()
                .starts_with("invalid configuration: --min-watts-per-vcpu: 3 must not exceed"),
            "{err}"
        );
        // The same override fits a host whose full load is higher.
        assert!(
            settings
                .node_power(
                    &host("Intel(R) Xeon(R) Platinum 8259CL", "x86_64"),
                    None,
                    None
                )
                .is_ok()
        );
    }
}
