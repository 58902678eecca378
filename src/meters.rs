//! Measured power, from whatever this node exposes, tried in order: RAPL
//! energy counters, hwmon power sensors, the node's dcgm-exporter, then
//! `nvidia-smi`. What none of them measures stays the model's
//! ([`crate::power::measured::Breakdown`]).

mod gpu;
mod hwmon;
mod rapl;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::attribution::PodKey;
use crate::cli::MeterArgs;
use crate::error::ConfigError;
use crate::power::measured::{Part, PartKind, Source};

pub use gpu::{GpuPower, parse_dcgm, parse_nvidia_smi};

/// Where to look, from `--sysfs-root`, `--dcgm-url` and `--nvidia-smi`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterSettings {
    pub sysfs_root: PathBuf,
    pub dcgm_url: Option<String>,
    pub nvidia_smi: Option<String>,
}

impl MeterSettings {
    /// Empty `--dcgm-url` and `--nvidia-smi` turn those sources off; a URL
    /// that is not http(s) is an error naming the flag.
    pub fn from_args(args: &MeterArgs) -> Result<Self, ConfigError> {
        let dcgm_url = match args.dcgm_url.trim() {
            "" => None,
            url => match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(url.to_string()),
                Ok(parsed) => {
                    let reason = format!("scheme {} is not http or https", parsed.scheme());
                    return Err(ConfigError::new("dcgm-url", reason));
                }
                Err(e) => {
                    let reason = format!("{url:?} is not a URL: {e}");
                    return Err(ConfigError::new("dcgm-url", reason));
                }
            },
        };
        Ok(Self {
            sysfs_root: args.sysfs_root.clone(),
            dcgm_url,
            nvidia_smi: Some(args.nvidia_smi.trim().to_string()).filter(|p| !p.is_empty()),
        })
    }
}

/// Both GPU sources are on this node (dcgm-exporter) or this host (nvidia-smi):
/// an answer slower than this is a hung exporter or driver.
const GPU_TIMEOUT: Duration = Duration::from_secs(5);

/// One read of every source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeterSample {
    pub parts: Vec<Part>,
    /// GPU watts (before PUE) of the pods dcgm-exporter maps GPUs to.
    pub pod_gpu_watts: BTreeMap<PodKey, f64>,
    /// Sources that answered, even if only with a baseline (RAPL's first read).
    pub sources: BTreeSet<Source>,
}

pub struct Meters {
    settings: MeterSettings,
    rapl: rapl::Rapl,
    http: Option<reqwest::Client>,
    /// Sources last logged, so a change is said once and a steady state never again.
    logged: Option<BTreeSet<Source>>,
    warned: BTreeSet<&'static str>,
}

impl Meters {
    pub fn new(settings: MeterSettings) -> Self {
        let http = match settings
            .dcgm_url
            .as_ref()
            .map(|_| gpu::http_client(GPU_TIMEOUT))
        {
            Some(Ok(client)) => Some(client),
            Some(Err(e)) => {
                warn!(error = %e, "dcgm-exporter client failed to build; GPUs from nvidia-smi only");
                None
            }
            None => None,
        };
        Self {
            rapl: rapl::Rapl::new(&settings.sysfs_root),
            settings,
            http,
            logged: None,
            warned: BTreeSet::new(),
        }
    }

    pub async fn read(&mut self) -> MeterSample {
        let mut sample = MeterSample::default();
        let rapl = self.rapl.read(Instant::now());
        if rapl.readable > 0 {
            sample.sources.insert(Source::Rapl);
        }
        if !rapl.unreadable.is_empty() {
            self.warn_once(
                "rapl",
                &format!(
                    "RAPL energy counters present but unreadable ({}): root-only since Linux 5.10; the chart's power.rapl.enabled runs the agent as root to read them",
                    rapl.unreadable.join(", ")
                ),
            );
        }
        sample.parts.extend(rapl.parts);
        let hwmon = hwmon::read(&self.settings.sysfs_root);
        if !hwmon.is_empty() {
            sample.sources.insert(Source::Hwmon);
        }
        sample.parts.extend(hwmon);
        let (source, gpus) = self.gpus().await;
        for gpu in gpus {
            sample.sources.insert(source);
            if let Some(pod) = gpu.pod {
                *sample.pod_gpu_watts.entry(pod).or_insert(0.0) += gpu.watts;
            }
            sample.parts.push(Part {
                kind: PartKind::Gpu,
                device: gpu.id,
                watts: gpu.watts,
                source,
            });
        }
        self.log_sources(&sample.sources);
        sample
    }

    /// dcgm-exporter's GPUs, else nvidia-smi's (the same GPUs, so never both).
    async fn gpus(&mut self) -> (Source, Vec<GpuPower>) {
        if let (Some(client), Some(url)) = (&self.http, &self.settings.dcgm_url) {
            match gpu::scrape_dcgm(client, url).await {
                Ok(gpus) if !gpus.is_empty() => {
                    self.warned.remove("dcgm");
                    return (Source::Dcgm, gpus);
                }
                Ok(_) => {}
                Err(e) => self.warn_once("dcgm", &format!("dcgm-exporter at {url}: {e}")),
            }
        }
        let Some(program) = &self.settings.nvidia_smi else {
            return (Source::NvidiaSmi, Vec::new());
        };
        match gpu::run_nvidia_smi(program, GPU_TIMEOUT).await {
            Ok(gpus) => {
                self.warned.remove("nvidia-smi");
                (Source::NvidiaSmi, gpus)
            }
            // Most nodes have no NVIDIA tools: not a fault.
            Err(gpu::GpuError::NotFound) => (Source::NvidiaSmi, Vec::new()),
            Err(e) => {
                self.warn_once("nvidia-smi", &format!("{program}: {e}"));
                (Source::NvidiaSmi, Vec::new())
            }
        }
    }

    fn warn_once(&mut self, key: &'static str, message: &str) {
        if self.warned.insert(key) {
            warn!("{message}");
        }
    }

    fn log_sources(&mut self, sources: &BTreeSet<Source>) {
        if self.logged.as_ref() == Some(sources) {
            return;
        }
        if sources.is_empty() {
            info!(
                "no power meter found (RAPL, hwmon, dcgm-exporter, nvidia-smi): node power is the CCF model's estimate"
            );
        } else {
            info!(sources = %describe(sources), "measured power found; what these do not cover stays modelled");
        }
        self.logged = Some(sources.clone());
    }
}

/// `rapl, dcgm-exporter`, or `none`.
pub fn describe(sources: &BTreeSet<Source>) -> String {
    if sources.is_empty() {
        return "none".into();
    }
    sources
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
