//! Command line: every flag has an environment variable and a visible default,
//! and is typed as it is parsed (durations, sizes, enums). Checks across flags,
//! and the settings each part of the agent gets, live in `config.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::Targets;

use crate::accounting::GroupBy;
pub use crate::budget::TaintPolicy;
use crate::budget::{DEFAULT_MIN_SPREAD_GRAMS_PER_KWH, DEFAULT_MIN_SPREAD_PERCENT};
use crate::duration::{parse_flag as duration, parse_period as period};
pub use crate::taint::TaintEffect;
use crate::zones::Cloud;

mod providers;
pub use providers::ProviderArgs;

#[derive(Debug, Parser)]
#[command(
    name = "carbon-kube",
    version,
    about = "Carbon-aware Kubernetes node agent",
    long_about = "Carbon-aware Kubernetes node agent.\n\n\
        Runs on every node (DaemonSet). The agents elect a leader that polls carbon-intensity \
        APIs once per grid zone for the whole cluster and writes CarbonScore objects; each agent \
        taints its own node while its zone's grid is dirty and exports per-node CO2 metrics."
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "CARBON_KUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter: a level, then `target=level` pairs (e.g. `info,carbon_kube=debug`).
    #[arg(long, env = "CARBON_KUBE_LOG", default_value = "info", global = true, value_parser = log_filter)]
    pub log: Targets,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (what the DaemonSet runs).
    Agent(Box<AgentArgs>),
    /// Print the CarbonScore CustomResourceDefinition as YAML.
    Crd,
    /// Print the GreenWindowConfig CustomResourceDefinition (Kueue AdmissionCheck parameters) as YAML.
    KueueCrd,
    /// Fetch one zone's intensity through the provider chain and print it (for debugging keys and zones).
    Intensity(Box<IntensityArgs>),
    /// Remove carbon-kube's taint, label and condition from every node (the uninstall hook).
    Cleanup(CleanupArgs),
    /// Print one sample of this node's power (CPU, DRAM, GPUs), each figure with its source.
    Power(Box<PowerSampleArgs>),
    /// Energy, CO2e (location-based) and the saving of carbon-aware placement over a range, by
    /// namespace, node or zone, from the agents' counters in Prometheus; prints a table and
    /// writes CSV.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Prometheus that scrapes the agents, e.g. http://prometheus.monitoring:9090.
    #[arg(long, value_parser = prometheus_url)]
    pub prometheus: String,

    /// Start of the range, on a whole hour: a date (2026-10-01, midnight UTC) or an RFC 3339 time.
    #[arg(long, value_parser = report_time)]
    pub from: jiff::Timestamp,

    /// End of the range (exclusive), as --from.
    #[arg(long, value_parser = report_time)]
    pub to: jiff::Timestamp,

    /// How rows are grouped.
    #[arg(long, value_enum, default_value = "namespace")]
    pub by: GroupBy,

    /// CSV file to write.
    #[arg(long, default_value = "carbon-kube-report.csv")]
    pub csv: PathBuf,
}

fn report_time(text: &str) -> Result<jiff::Timestamp, String> {
    crate::report::parse_time(text)
}

fn prometheus_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "{text:?} is not an http(s) URL, e.g. http://prometheus:9090"
        )),
    }
}

#[derive(Debug, Args)]
pub struct PowerSampleArgs {
    #[command(flatten)]
    pub meters: MeterArgs,

    #[command(flatten)]
    pub power: PowerArgs,
}

/// Where measured power is read; what none of these measures stays modelled.
#[derive(Debug, Clone, Args)]
pub struct MeterArgs {
    /// Where sysfs is mounted: RAPL energy counters under class/powercap, hwmon power
    /// sensors under class/hwmon (in a pod: the host's /sys, mounted read-only).
    #[arg(long, env = "CARBON_KUBE_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: PathBuf,

    /// This node's dcgm-exporter metrics URL (NVIDIA GPU power per GPU and pod), e.g.
    /// http://10.0.0.5:9400/metrics; empty: not scraped.
    #[arg(long, env = "CARBON_KUBE_DCGM_URL", default_value = "")]
    pub dcgm_url: String,

    /// nvidia-smi to run for GPU power when dcgm-exporter gives none (a name on PATH or a
    /// path); empty: never run.
    #[arg(long, env = "CARBON_KUBE_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: String,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Kubeconfig file; without it, in-cluster configuration (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Give up (exit 1) if marks remain after this long.
    #[arg(long, value_parser = period, default_value = "2m")]
    pub timeout: Duration,

    /// Wait this long after a pass that cleaned something, then check again.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub settle: Duration,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML file of agent settings, keyed by flag name (e.g. `threshold: 250`).
    /// Flags and environment variables override it.
    #[arg(long, env = "CARBON_KUBE_CONFIG")]
    pub config: Option<PathBuf>,

    /// This agent's Node (set from the downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Namespace holding the leader Lease and the API-key Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "carbon-kube")]
    pub namespace: String,

    /// Identity in the leader Lease (defaults to the pod name, else the node name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Kubeconfig file; without it, in-cluster configuration (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig (a mounted Secret) of a cluster whose CarbonScores the leader reads first,
    /// with read-only access there, so that a fleet polls each zone once; data missing there
    /// or older than --max-age falls through to this agent's own providers.
    #[arg(long, env = "CARBON_KUBE_SHARED_SCORES_KUBECONFIG")]
    pub shared_scores_kubeconfig: Option<PathBuf>,

    /// Grid zone used when a node has neither the grid-zone label nor a known region label.
    #[arg(long, env = "CARBON_KUBE_DEFAULT_ZONE")]
    pub default_zone: Option<String>,

    /// How the leader picks the zones to taint: `relative` ranks the zones and taints the
    /// dirtiest, up to the budget, where they are dirtier than the cleanest zone by the
    /// minimum spread; `absolute` taints zones above --threshold.
    #[arg(long, env = "CARBON_KUBE_POLICY", value_enum, default_value_t = TaintPolicy::Relative)]
    pub policy: TaintPolicy,

    /// Relative policy: a zone is tainted only when dirtier than the cleanest zone by at
    /// least this (gCO2/kWh)…
    #[arg(long, env = "CARBON_KUBE_MIN_SPREAD", default_value_t = DEFAULT_MIN_SPREAD_GRAMS_PER_KWH)]
    pub min_spread: f64,

    /// …and by at least this share of the cleanest zone's intensity (per cent).
    #[arg(long, env = "CARBON_KUBE_MIN_SPREAD_PERCENT", default_value_t = DEFAULT_MIN_SPREAD_PERCENT)]
    pub min_spread_percent: f64,

    /// Relative policy: never taint a zone below this intensity (gCO2/kWh; 0 = no floor).
    #[arg(long, env = "CARBON_KUBE_TAINT_FLOOR", default_value_t = 0.0)]
    pub taint_floor: f64,

    /// Absolute policy: intensity (gCO2/kWh) above which nodes are tainted, until the
    /// tuner changes it.
    #[arg(long, env = "CARBON_KUBE_THRESHOLD", default_value_t = 300.0)]
    pub threshold: f64,

    /// Absolute policy: a tainted node is untainted only when intensity falls below
    /// threshold minus this. Relative policy: a tainted zone is untainted only when its
    /// spread falls below the minimum minus this, and another zone takes its place in the
    /// budget only when dirtier by more than this (gCO2/kWh).
    #[arg(long, env = "CARBON_KUBE_HYSTERESIS", default_value_t = 20.0)]
    pub hysteresis: f64,

    /// How long intensity must stay above the threshold before tainting.
    #[arg(long, env = "CARBON_KUBE_DWELL", value_parser = duration, default_value = "10m")]
    pub dwell: Duration,

    /// Carbon data older than this is ignored and the taint removed (availability wins).
    #[arg(long, env = "CARBON_KUBE_MAX_AGE", value_parser = period, default_value = "90m")]
    pub max_age: Duration,

    /// Effect of the carbon taint.
    #[arg(long, env = "CARBON_KUBE_TAINT_EFFECT", value_enum, default_value_t = TaintEffect::PreferNoSchedule)]
    pub taint_effect: TaintEffect,

    /// Largest share of the cluster's nodes that may carry the carbon taint at once (0 to 1).
    #[arg(long, env = "CARBON_KUBE_MAX_TAINTED_FRACTION", default_value_t = 0.5)]
    pub max_tainted_fraction: f64,

    /// Let the leader tune each zone's threshold (absolute policy only; Q-learning,
    /// experimental: in the simulator it does not beat a well-chosen static threshold).
    #[arg(long, env = "CARBON_KUBE_TUNER", default_value_t = false)]
    pub tuner: bool,

    /// Lowest threshold the tuner may set (gCO2/kWh).
    #[arg(long, env = "CARBON_KUBE_TUNER_MIN_THRESHOLD", default_value_t = 50.0)]
    pub tuner_min_threshold: f64,

    /// Highest threshold the tuner may set (gCO2/kWh).
    #[arg(long, env = "CARBON_KUBE_TUNER_MAX_THRESHOLD", default_value_t = 800.0)]
    pub tuner_max_threshold: f64,

    /// How often the leader polls the carbon APIs (once per zone).
    #[arg(long, env = "CARBON_KUBE_POLL_INTERVAL", value_parser = period, default_value = "5m")]
    pub poll_interval: Duration,

    /// Zones the leader fetches at the same time.
    #[arg(long, env = "CARBON_KUBE_POLL_CONCURRENCY", default_value_t = 4)]
    pub poll_concurrency: usize,

    /// Leader Lease duration; a follower takes over this long after the last renewal.
    #[arg(long, env = "CARBON_KUBE_LEASE_DURATION", value_parser = period, default_value = "15s")]
    pub lease_duration: Duration,

    /// How often host CPU and memory are sampled for the power model.
    #[arg(long, env = "CARBON_KUBE_SAMPLE_INTERVAL", value_parser = period, default_value = "15s")]
    pub sample_interval: Duration,

    /// The host's cgroup mount, v2 or v1 (then its cpuacct hierarchy is read), for
    /// per-pod power and CO2 (in a pod: mount the host's /sys/fs/cgroup read-only and
    /// point this at it). Without a kubepods cgroup under it, per-pod attribution is off.
    #[arg(
        long,
        env = "CARBON_KUBE_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup_root: PathBuf,

    /// Leader: hold pods gated by `carbon-kube.io/defer` and release each at the greenest
    /// forecast start that has free CPU before its `carbon-kube.io/latest-start` (needs pods
    /// get/list/watch/patch).
    #[arg(long, env = "CARBON_KUBE_DEFERRAL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub deferral: bool,

    /// Deferral planner: share of the free CPU (what other work leaves) that deferred pods
    /// never book, kept for arrivals the learned load did not foresee; 0 to below 1.
    #[arg(long, env = "CARBON_KUBE_DEFERRAL_HEADROOM", default_value_t = 0.2)]
    pub deferral_headroom: f64,

    /// Deferral planner: the last part of each pod's window that is never booked; a pod is
    /// released once less than this (plus the recent wait to be scheduled) is left.
    #[arg(long, env = "CARBON_KUBE_DEFERRAL_MARGIN", value_parser = duration, default_value = "2h")]
    pub deferral_margin: Duration,

    /// Deferral planner: hold a pod only when the forecast gain exceeds this many σ of the
    /// forecast error.
    #[arg(long, env = "CARBON_KUBE_DEFERRAL_K_SIGMA", default_value_t = 1.0)]
    pub deferral_k_sigma: f64,

    /// Deferral planner: σ of the forecast error assumed, as a fraction of the forecast's mean.
    #[arg(
        long,
        env = "CARBON_KUBE_DEFERRAL_FORECAST_ERROR",
        default_value_t = 0.05
    )]
    pub deferral_forecast_error: f64,

    /// Leader: decide Kueue AdmissionChecks with controllerName `carbon-kube.io/green-window`
    /// by the deferral planner (needs Kueue's CRDs, the GreenWindowConfig CRD and RBAC for
    /// workloads and admissionchecks; see `carbon-kube kueue-crd`).
    #[arg(long, env = "CARBON_KUBE_KUEUE_GREEN_WINDOW", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub kueue_green_window: bool,

    /// Leader of a MultiKueue manager cluster: nominate, for each Workload, the worker cluster
    /// whose zone (label `carbon-kube.io/grid-zone` on its MultiKueueCluster) is greenest over
    /// the job's duration; Kueue's `multiKueue.dispatcherName` must be `carbon-kube.io/greenest`.
    #[arg(long, env = "CARBON_KUBE_KUEUE_DISPATCHER", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub kueue_dispatcher: bool,

    /// With --kueue-dispatcher: a Workload no worker has admitted this long after its
    /// nomination (the greenest has no room) is offered to the next greenest too, one more
    /// worker each time this passes again, until every worker is nominated.
    #[arg(long, env = "CARBON_KUBE_KUEUE_WIDEN_AFTER", value_parser = period, default_value = "5m")]
    pub kueue_widen_after: Duration,

    /// With --kueue-dispatcher: Kueue's namespace, where the MultiKueueClusters' kubeconfig
    /// Secrets are; the leader reads each worker's own CarbonScore for its zone with them.
    #[arg(
        long,
        env = "CARBON_KUBE_KUEUE_NAMESPACE",
        default_value = "kueue-system"
    )]
    pub kueue_namespace: String,

    /// Every agent: evict pods labelled `carbon-kube.io/migrate=true` off its own node once it
    /// has carried the carbon taint for --migrate-after and a greener untainted zone exists
    /// (needs pods list/watch and pods/eviction create).
    #[arg(long, env = "CARBON_KUBE_MIGRATION", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub migration: bool,

    /// How long a node must have carried the carbon taint before its opted-in pods are moved.
    #[arg(long, env = "CARBON_KUBE_MIGRATE_AFTER", value_parser = duration, default_value = "30m")]
    pub migrate_after: Duration,

    /// Most evictions one agent makes in any hour (PDB-refused attempts do not count).
    #[arg(long, env = "CARBON_KUBE_MAX_EVICTIONS_PER_HOUR", default_value_t = 6)]
    pub max_evictions_per_hour: u32,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "CARBON_KUBE_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub providers: ProviderArgs,

    #[command(flatten)]
    pub power: PowerArgs,

    #[command(flatten)]
    pub meters: MeterArgs,
}

#[derive(Debug, Args)]
pub struct IntensityArgs {
    /// Grid zone (Electricity Maps zone id, e.g. DE or US-CAL-CISO).
    #[arg(long)]
    pub zone: String,

    #[command(flatten)]
    pub providers: ProviderArgs,
}

/// The node's power model: Cloud Carbon Footprint's coefficients for its CPU and
/// cloud, and the operator's overrides of them.
#[derive(Debug, Clone, Args)]
pub struct PowerArgs {
    /// Cloud of this node, for its PUE and the averages used when the CPU is unknown;
    /// without it, the node's providerID, else its region label, else aws.
    #[arg(long, env = "CARBON_KUBE_CLOUD", value_enum)]
    pub cloud: Option<Cloud>,

    /// Watts per vCPU at idle.
    #[arg(long, env = "CARBON_KUBE_MIN_WATTS_PER_VCPU")]
    pub min_watts_per_vcpu: Option<f64>,

    /// Watts per vCPU at full load.
    #[arg(long, env = "CARBON_KUBE_MAX_WATTS_PER_VCPU")]
    pub max_watts_per_vcpu: Option<f64>,

    /// Watts per GB of memory.
    #[arg(long, env = "CARBON_KUBE_MEMORY_WATTS_PER_GB")]
    pub memory_watts_per_gb: Option<f64>,

    /// Power usage effectiveness of the data centre (1 or more).
    #[arg(long, env = "CARBON_KUBE_PUE")]
    pub pue: Option<f64>,
}

/// `--log`: tracing's `Targets` syntax, checked at start rather than falling
/// back to a default (the regex-based `EnvFilter` is not linked: README,
/// Performance).
fn log_filter(text: &str) -> Result<Targets, String> {
    text.parse().map_err(|e| {
        format!("{e}: expected a level, then target=level pairs, e.g. info,carbon_kube=debug")
    })
}
