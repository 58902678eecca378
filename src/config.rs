//! The agent's settings, typed once: clap parses and types each flag
//! (`cli.rs`, with the `--config` file below flags and environment,
//! `config/file.rs`); [`AgentConfig::from_args`] checks what one flag cannot
//! check alone and hands each part of the agent its own settings. Every error
//! names the flag and says why.

mod file;
mod providers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::budget::TaintPolicy;
use crate::carbon::GridZone;
use crate::cli::AgentArgs;
use crate::decision::DecisionParams;
use crate::deferral::controller::DeferralSettings;
use crate::deferral::round::RoundSettings;
use crate::election::Timing;
use crate::emissions::{EmissionsSettings, PowerSettings};
use crate::kueue::dispatch::DispatchSettings;
use crate::meters::MeterSettings;
use crate::migration::controller::MigrationSettings;
use crate::planner::PlannerParams;
use crate::poller::PollerSettings;
use crate::providers::ProvidersConfig;
use crate::reconcile::ReconcilerSettings;
use crate::tuner::TunerParams;

pub use crate::error::ConfigError;
pub use file::{agent_args, parse_cli, parse_cli_from};
pub use providers::providers_config;

/// Everything the agent needs, validated, grouped by the part that uses it.
#[derive(Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// This agent in the leader Lease and in events.
    pub identity: String,
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    /// Another cluster's kubeconfig: its CarbonScores go first in the chain.
    pub shared_scores_kubeconfig: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    pub election: Timing,
    pub providers: ProvidersConfig,
    pub poller: PollerSettings,
    pub reconciler: ReconcilerSettings,
    pub emissions: EmissionsSettings,
    /// `None` with `--deferral=false`.
    pub deferral: Option<DeferralSettings>,
    /// `Some` with `--migration`.
    pub migration: Option<MigrationSettings>,
    /// `Some` with `--kueue-green-window`: the leader plans Kueue's
    /// carbon-kube.io/green-window checks as it plans deferred pods.
    pub kueue: Option<DeferralSettings>,
    /// `Some` with `--kueue-dispatcher`: the leader nominates MultiKueue workers as
    /// carbon-kube.io/greenest.
    pub kueue_dispatcher: Option<DispatchSettings>,
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

fn positive(field: &str, value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(invalid(field, format!("{value} must be a positive number")))
    }
}

fn not_negative(field: &str, value: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("{value} must be a number of at least 0"),
        ))
    }
}

impl AgentConfig {
    pub fn from_args(args: &AgentArgs) -> Result<Self, ConfigError> {
        let node_name = args
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "node-name",
                    "required (set NODE_NAME from the downward API spec.nodeName)",
                )
            })?;
        let identity = args.identity.clone().unwrap_or_else(|| node_name.clone());
        let default_zone = args
            .default_zone
            .as_deref()
            .filter(|z| !z.is_empty())
            .map(GridZone::parse)
            .transpose()
            .map_err(|e| invalid("default-zone", e))?;
        let decision = DecisionParams {
            hysteresis_grams_per_kwh: args.hysteresis,
            dwell: args.dwell,
            max_age: args.max_age,
        };
        let poller = poller_settings(args, default_zone.clone())?;
        if args.lease_duration < Duration::from_secs(3) {
            return Err(invalid(
                "lease-duration",
                "must be at least 3s so the leader can renew in time",
            ));
        }
        let mut providers = providers_config(&args.providers)?;
        // A cached reading must never outlive a poll, or the leader would write it twice.
        providers.cache_ttl = providers.cache_ttl.min(poller.interval / 2);
        let power = PowerSettings::from_args(&args.power)?;
        // Checked even when off, so that turning it on cannot reveal a bad value.
        let deferral = deferral_settings(args, &decision, &default_zone, &identity)?;
        if args.max_evictions_per_hour == 0 {
            return Err(invalid(
                "max-evictions-per-hour",
                "must be at least 1 (turn --migration off to evict nothing)",
            ));
        }
        let migration = args.migration.then(|| MigrationSettings {
            migrate_after: args.migrate_after,
            max_evictions_per_hour: args.max_evictions_per_hour,
            hysteresis_grams_per_kwh: decision.hysteresis_grams_per_kwh,
            max_age: decision.max_age,
            default_zone: default_zone.clone(),
            identity: identity.clone(),
        });
        Ok(Self {
            election: Timing::new(args.lease_duration),
            providers,
            poller,
            reconciler: ReconcilerSettings {
                default_zone,
                decision,
                taint_effect: args.taint_effect,
            },
            emissions: EmissionsSettings {
                sample_interval: args.sample_interval,
                cgroup_root: args.cgroup_root.clone(),
                power,
                meters: MeterSettings::from_args(&args.meters)?,
            },
            kueue: args.kueue_green_window.then(|| deferral.clone()),
            kueue_dispatcher: args.kueue_dispatcher.then(|| DispatchSettings {
                kueue_namespace: args.kueue_namespace.clone(),
                max_age: deferral.max_age,
                widen_after: args.kueue_widen_after,
            }),
            deferral: args.deferral.then_some(deferral),
            migration,
            metrics_addr: args.metrics_addr,
            namespace: args.namespace.clone(),
            kubeconfig: args.kubeconfig.clone(),
            shared_scores_kubeconfig: args.shared_scores_kubeconfig.clone(),
            identity,
            node_name,
        })
    }
}

/// The leader's policy: which zones to taint, and how often to look.
fn poller_settings(
    args: &AgentArgs,
    default_zone: Option<GridZone>,
) -> Result<PollerSettings, ConfigError> {
    let threshold = positive("threshold", args.threshold)?;
    let hysteresis = args.hysteresis;
    let min_spread = not_negative("min-spread", args.min_spread)?;
    let min_spread_percent = not_negative("min-spread-percent", args.min_spread_percent)?;
    let floor = not_negative("taint-floor", args.taint_floor)?;
    if !hysteresis.is_finite() || hysteresis < 0.0 {
        return Err(invalid(
            "hysteresis",
            format!("{hysteresis} must be at least 0"),
        ));
    }
    match args.policy {
        TaintPolicy::Absolute if hysteresis >= threshold => {
            return Err(invalid(
                "hysteresis",
                format!("{hysteresis} must be below --threshold ({threshold})"),
            ));
        }
        TaintPolicy::Absolute if floor > 0.0 => {
            return Err(invalid(
                "taint-floor",
                "applies to --policy relative only (under absolute, --threshold is the line)",
            ));
        }
        // A tainted zone must be able to lose its taint while still dirtier than the cleanest.
        TaintPolicy::Relative if hysteresis > 0.0 && hysteresis >= min_spread => {
            return Err(invalid(
                "hysteresis",
                format!(
                    "{hysteresis} must be below --min-spread ({min_spread}) under --policy relative, or a tainted zone would never lose its taint"
                ),
            ));
        }
        TaintPolicy::Relative if args.tuner => {
            return Err(invalid(
                "tuner",
                "tunes the absolute threshold: use it with --policy absolute",
            ));
        }
        _ => {}
    }
    if !(0.0..=1.0).contains(&args.max_tainted_fraction) {
        return Err(invalid(
            "max-tainted-fraction",
            format!("{} must be between 0 and 1", args.max_tainted_fraction),
        ));
    }
    if args.poll_concurrency == 0 {
        return Err(invalid("poll-concurrency", "must be at least 1"));
    }
    let tuner = args
        .tuner
        .then(|| tuner_params(args, threshold))
        .transpose()?;
    Ok(PollerSettings {
        interval: args.poll_interval,
        concurrency: args.poll_concurrency,
        default_zone,
        default_threshold_grams_per_kwh: threshold,
        hysteresis_grams_per_kwh: hysteresis,
        max_tainted_fraction: args.max_tainted_fraction,
        tuner,
        policy: args.policy,
        min_spread_grams_per_kwh: min_spread,
        min_spread_percent,
        floor_grams_per_kwh: floor,
        rank_window: args.dwell,
    })
}

/// The tuner's bounds, starting from the configured threshold.
fn tuner_params(args: &AgentArgs, threshold: f64) -> Result<TunerParams, ConfigError> {
    let min = positive("tuner-min-threshold", args.tuner_min_threshold)?;
    let max = positive("tuner-max-threshold", args.tuner_max_threshold)?;
    if !(min..=max).contains(&threshold) {
        return Err(invalid(
            "threshold",
            format!(
                "{threshold} must lie between --tuner-min-threshold ({min}) and --tuner-max-threshold ({max})"
            ),
        ));
    }
    Ok(TunerParams {
        min_threshold_grams_per_kwh: min,
        max_threshold_grams_per_kwh: max,
        initial_threshold_grams_per_kwh: threshold,
        ..Default::default()
    })
}

fn deferral_settings(
    args: &AgentArgs,
    decision: &DecisionParams,
    default_zone: &Option<GridZone>,
    identity: &str,
) -> Result<DeferralSettings, ConfigError> {
    let round = RoundSettings {
        planner: PlannerParams {
            headroom: args.deferral_headroom,
            margin: args.deferral_margin,
            k_sigma: args.deferral_k_sigma,
        },
        forecast_error: args.deferral_forecast_error,
    };
    round
        .planner
        .validate()
        .map_err(|(flag, why)| invalid(flag, why))?;
    let error = args.deferral_forecast_error;
    if !(error.is_finite() && (0.0..=1.0).contains(&error)) {
        return Err(invalid(
            "deferral-forecast-error",
            format!("{error} must be between 0 and 1"),
        ));
    }
    Ok(DeferralSettings {
        max_age: decision.max_age,
        round,
        default_zone: default_zone.clone(),
        identity: identity.to_string(),
    })
}

#[cfg(test)]
mod tests;
