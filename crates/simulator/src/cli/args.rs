//! The simulator's flags, and how they become a cluster configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::SimError;
use crate::agent::AgentSettings;
use crate::experiment::ClusterConfig;
use crate::forecast::ErrorModel;
use crate::workload::{WorkloadKind, WorkloadParams};
use carbon_kube_core::budget::{DEFAULT_MIN_SPREAD_GRAMS_PER_KWH, DEFAULT_MIN_SPREAD_PERCENT};
use carbon_kube_core::decision::DecisionParams;
use carbon_kube_core::duration;
use carbon_kube_core::planner::PlannerParams;
use carbon_kube_core::power::PowerCoefficients;
use carbon_kube_core::tuner::TunerParams;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(subcommand)]
    pub experiment: Experiment,
}

#[derive(Debug, Subcommand)]
pub enum Experiment {
    /// Replay every policy on one year of traces; write the table (text, CSV) and SVG plots.
    Run(Box<RunArgs>),
    /// Reproduce Let's Wait Awhile (Middleware '21) and compare with the published numbers.
    Reproduce(ReproduceArgs),
    /// Train the outcome tuner on one year, evaluate on another, against the best fixed knobs.
    Tune(Box<TuneArgs>),
    /// A MultiKueue fleet, one worker cluster per zone: Kueue's all-at-once dispatch against
    /// the greenest dispatcher (and greenest with deferral); write fleet.txt and fleet.csv.
    Fleet(Box<FleetArgs>),
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Folder of normalised traces, one zone (one worker cluster) per file.
    #[arg(long, default_value = "benches/data/electricitymaps")]
    pub traces: PathBuf,
    #[arg(long, default_value_t = 2022)]
    pub year: i16,
    /// Only these zones (comma-separated); default every trace covering the year.
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
    /// The fleet's nodes (--nodes) are spread evenly over the clusters.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Folder for fleet.txt and fleet.csv.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of normalised traces (`zone,timestamp_utc,g_co2_per_kwh`), one zone per file.
    #[arg(long, default_value = "benches/data/eia930-sustaindc_2022")]
    pub traces: PathBuf,
    /// Calendar year to replay (hourly).
    #[arg(long, default_value_t = 2022)]
    pub year: i16,
    /// Train the tuner on this year first (same zones), instead of learning from scratch.
    #[arg(long)]
    pub train_year: Option<i16>,
    /// Day of the year where the intensity plot starts.
    #[arg(long, default_value_t = 14)]
    pub plot_from_day: usize,
    /// Days shown in the intensity plot.
    #[arg(long, default_value_t = 14)]
    pub plot_days: usize,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Folder for table.txt, table.csv, savings_by_zone.svg, intensity_taints.svg, tuner_state.json.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Folder of normalised traces covering both years.
    #[arg(long, default_value = "benches/data/electricitymaps")]
    pub traces: PathBuf,
    #[arg(long, default_value_t = 2021)]
    pub train_year: i16,
    #[arg(long, default_value_t = 2022)]
    pub eval_year: i16,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Folder for tune.txt, tune.csv and tune_grid.csv.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// Folder with the DE, GB and FR 2020 series of Let's Wait Awhile; with --year, any
    /// folder of hourly traces.
    #[arg(long, default_value = "benches/data/lets-wait-awhile_2020")]
    pub traces: PathBuf,
    /// The numbers to match.
    #[arg(long, default_value = "benches/data/lets_wait_awhile_targets.csv")]
    pub targets: PathBuf,
    /// Instead of the paper's 2020 comparison, run its nightly experiment on this calendar
    /// year of hourly data: the first night's window reads the previous year's last hours.
    #[arg(long)]
    pub year: Option<i16>,
    /// With --year: only these zones (comma-separated); default every trace in the folder.
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
    /// With --year: the widest window, ±hours around 01:00 (also the lead-in's length).
    #[arg(long, default_value_t = 8)]
    pub max_window_hours: usize,
    /// Folder for reproduction.csv and reproduction.txt (with --year: nightly_YEAR.csv, .txt).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForecastModel {
    Iid,
    Ar1,
}

/// The cluster, the workload, the agent and the tuner of a replay.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Nodes in the cluster, spread evenly over the zones.
    #[arg(long, default_value_t = 32)]
    pub nodes: usize,
    #[arg(long, default_value_t = 16)]
    pub vcpus_per_node: u32,
    /// The kind of work: long batch jobs, nightly CronJobs or CI-like short jobs;
    /// the flags below override its settings.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Batch)]
    pub workload: WorkloadKind,
    /// Jobs in the year [batch 60000, nightly 20000, ci 150000].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Seed of the synthetic workload.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Mean job duration [batch 8, nightly and ci 1].
    #[arg(long)]
    pub mean_duration_hours: Option<f64>,
    /// Share of jobs that opt in to waiting for greener power [batch 0.5, nightly 1, ci 0.33].
    #[arg(long)]
    pub flexible_share: Option<f64>,
    /// A flexible job's longest slack, hours [batch 24, nightly 8, ci 6].
    #[arg(long)]
    pub max_slack_hours: Option<usize>,
    /// Share of jobs that must run in their home zone [batch and nightly 0.3, ci 0.1].
    #[arg(long)]
    pub pinned_share: Option<f64>,
    /// Relative policy: taint only zones dirtier than the cleanest by at least this (gCO2/kWh)…
    #[arg(long, default_value_t = DEFAULT_MIN_SPREAD_GRAMS_PER_KWH)]
    pub min_spread: f64,
    /// …and by at least this share of the cleanest zone's intensity (per cent).
    #[arg(long, default_value_t = DEFAULT_MIN_SPREAD_PERCENT)]
    pub min_spread_percent: f64,
    /// Relative policy: never taint below this intensity (gCO2/kWh; 0 = no floor).
    #[arg(long, default_value_t = 0.0)]
    pub taint_floor: f64,
    /// Static taint threshold (gCO2/kWh), and the tuner's starting point.
    #[arg(long, default_value_t = 300.0)]
    pub threshold: f64,
    #[arg(long, default_value_t = 20.0)]
    pub hysteresis: f64,
    #[arg(long, default_value = "10m", value_parser = duration::parse_flag)]
    pub dwell: Duration,
    #[arg(long, default_value_t = 0.5)]
    pub max_tainted_fraction: f64,
    /// Forecast error model: `iid` (Let's Wait Awhile's, σ = --forecast-error, the same at
    /// every horizon) or `ar1` (autocorrelated, growing with the horizon; see --ar1-*).
    #[arg(long, value_enum, default_value_t = ForecastModel::Iid)]
    pub forecast_model: ForecastModel,
    /// i.i.d. forecast error σ as a fraction of each zone's mean (0 = perfect forecast).
    #[arg(long, default_value_t = 0.05)]
    pub forecast_error: f64,
    /// AR(1) error σ one step ahead, as a fraction of each zone's mean.
    #[arg(long, default_value_t = 0.03)]
    pub ar1_step_error: f64,
    /// AR(1) error persistence φ in [0, 1): σ at 24 h is about 4 × the one-step σ at 0.98.
    #[arg(long, default_value_t = 0.98)]
    pub ar1_phi: f64,
    #[arg(long, default_value_t = 0)]
    pub forecast_seed: u64,
    /// Deferral planner: share of the free CPU deferred work never books.
    #[arg(long, default_value_t = PlannerParams::default().headroom)]
    pub deferral_headroom: f64,
    /// Deferral planner: the last part of each window never booked.
    #[arg(long, default_value = "2h", value_parser = duration::parse_flag)]
    pub deferral_margin: Duration,
    /// Deferral planner: hold only for a forecast gain above this many σ of the forecast error.
    #[arg(long, default_value_t = PlannerParams::default().k_sigma)]
    pub deferral_k_sigma: f64,
    /// Grams of CO2 one vCPU-hour of delay is worth (the tuner's latency penalty).
    #[arg(long, default_value_t = 0.05)]
    pub delay_cost: f64,
    #[arg(long, default_value_t = 0.05)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 0.05)]
    pub exploration: f64,
    #[arg(long, default_value_t = 1)]
    pub tuner_seed: u64,
}

impl ClusterArgs {
    pub fn workload(&self) -> WorkloadParams {
        let preset = self.workload.params();
        let mean_duration_steps = self
            .mean_duration_hours
            .unwrap_or(preset.mean_duration_steps);
        let max_slack_steps = self.max_slack_hours.unwrap_or(preset.max_slack_steps);
        WorkloadParams {
            jobs: self.jobs.unwrap_or(preset.jobs),
            seed: self.seed,
            // A longer mean than the preset's needs room: durations are capped at 9 × the mean.
            max_duration_steps: self
                .mean_duration_hours
                .map_or(preset.max_duration_steps, |m| {
                    preset.max_duration_steps.max((9.0 * m) as usize)
                }),
            mean_duration_steps,
            flexible_share: self.flexible_share.unwrap_or(preset.flexible_share),
            min_slack_steps: preset.min_slack_steps.min(max_slack_steps),
            max_slack_steps,
            pinned_share: self.pinned_share.unwrap_or(preset.pinned_share),
            ..preset
        }
    }

    pub fn config(&self) -> Result<ClusterConfig, SimError> {
        let invalid = |m: String| SimError::Invalid(m);
        let workload = self.workload();
        if self.nodes == 0 || self.vcpus_per_node == 0 {
            return Err(invalid(
                "--nodes and --vcpus-per-node must be at least 1".into(),
            ));
        }
        for (name, share) in [
            ("--flexible-share", workload.flexible_share),
            ("--pinned-share", workload.pinned_share),
            ("--max-tainted-fraction", self.max_tainted_fraction),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(invalid(format!("{name} must be between 0 and 1")));
            }
        }
        if ![self.min_spread, self.min_spread_percent, self.taint_floor]
            .iter()
            .all(|v| *v >= 0.0)
        {
            return Err(invalid(
                "--min-spread, --min-spread-percent and --taint-floor must be ≥ 0".into(),
            ));
        }
        if !(self.forecast_error >= 0.0
            && self.threshold > 0.0
            && workload.mean_duration_steps >= 1.0)
        {
            return Err(invalid(
                "--forecast-error must be ≥ 0, --threshold > 0, --mean-duration-hours ≥ 1".into(),
            ));
        }
        if !(self.ar1_step_error >= 0.0 && (0.0..1.0).contains(&self.ar1_phi)) {
            return Err(invalid(
                "--ar1-step-error must be ≥ 0 and --ar1-phi in [0, 1)".into(),
            ));
        }
        let planner = PlannerParams {
            headroom: self.deferral_headroom,
            margin: self.deferral_margin,
            k_sigma: self.deferral_k_sigma,
        };
        planner
            .validate()
            .map_err(|(flag, why)| invalid(format!("--{flag}: {why}")))?;
        Ok(ClusterConfig {
            nodes: self.nodes,
            vcpus_per_node: self.vcpus_per_node,
            workload,
            agent: AgentSettings {
                decision: DecisionParams {
                    hysteresis_grams_per_kwh: self.hysteresis,
                    dwell: self.dwell,
                    // Replayed data is always fresh: staleness never triggers.
                    max_age: std::time::Duration::from_secs(90 * 60),
                },
                max_tainted_fraction: self.max_tainted_fraction,
                min_spread_grams_per_kwh: self.min_spread,
                min_spread_percent: self.min_spread_percent,
                floor_grams_per_kwh: self.taint_floor,
            },
            threshold_grams_per_kwh: self.threshold,
            tuner: TunerParams {
                initial_threshold_grams_per_kwh: self.threshold,
                learning_rate: self.learning_rate,
                exploration: self.exploration,
                delay_cost_grams_per_vcpu_hour: self.delay_cost,
                seed: self.tuner_seed,
                ..TunerParams::default()
            },
            forecast: match self.forecast_model {
                ForecastModel::Iid => ErrorModel::Iid {
                    sigma_fraction: self.forecast_error,
                },
                ForecastModel::Ar1 => ErrorModel::Ar1 {
                    step_fraction: self.ar1_step_error,
                    phi: self.ar1_phi,
                },
            },
            forecast_seed: self.forecast_seed,
            coefficients: PowerCoefficients::for_architecture("unknown"),
            planner,
        })
    }
}
