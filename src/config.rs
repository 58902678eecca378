//! Turns command-line flags, environment and the optional config file into
//! validated settings. Every error names the flag and says why.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::carbon::GridZone;
use crate::cli::{AgentArgs, Cli, Command, ProviderArgs, TaintEffect, TaintPolicy};
use crate::decision::DecisionParams;
use crate::duration;
use crate::providers::{ProviderKind, ProvidersConfig, Secret};

/// A setting that cannot be used, with the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: --{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Everything the agent needs, validated.
#[derive(Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub namespace: String,
    pub identity: String,
    pub kubeconfig: Option<std::path::PathBuf>,
    pub default_zone: Option<GridZone>,
    pub default_threshold_grams_per_kwh: f64,
    pub decision: DecisionParams,
    pub taint_effect: TaintEffect,
    pub max_tainted_fraction: f64,
    pub policy: TaintPolicy,
    pub min_spread_grams_per_kwh: f64,
    pub min_spread_percent: f64,
    pub floor_grams_per_kwh: f64,
    pub tuner: Option<crate::tuner::TunerParams>,
    pub poll_interval: Duration,
    pub poll_concurrency: usize,
    pub lease_duration: Duration,
    pub sample_interval: Duration,
    pub metrics_addr: std::net::SocketAddr,
    pub providers: ProvidersConfig,
    pub power: crate::power::PowerOverrides,
    pub cgroup_root: std::path::PathBuf,
    /// The leader releases gated pods at their greenest start with room (`--deferral`).
    pub deferral: bool,
    /// The deferral planner's knobs (`--deferral-*`).
    pub deferral_planner: crate::deferral::round::RoundSettings,
    /// The leader decides Kueue's carbon-kube.io/green-window checks (`--kueue-green-window`).
    pub kueue_green_window: bool,
    /// Every agent moves opted-in pods off its tainted node (`--migration`).
    pub migration: bool,
    pub migrate_after: Duration,
    pub max_evictions_per_hour: u32,
}

/// Parses the command line, folding in `--config FILE` below flags and environment.
pub fn parse_cli() -> Result<Cli, clap::Error> {
    parse_cli_from(std::env::args_os().collect())
}

pub fn parse_cli_from(mut args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(&args)?;
    if let Some(("agent", sub)) = matches.subcommand() {
        if let Some(path) = sub.get_one::<std::path::PathBuf>("config") {
            let extra = file_args(path, sub).map_err(|e| {
                Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string())
            })?;
            args.extend(extra);
            let matches = Cli::command().try_get_matches_from(&args)?;
            return Cli::from_arg_matches(&matches);
        }
    }
    Cli::from_arg_matches(&matches)
}

/// Flags for the settings in a config file that neither a flag nor the environment set.
fn file_args(path: &Path, matches: &clap::ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("config", format!("cannot read {}: {e}", path.display())))?;
    let entries: BTreeMap<String, yaml_serde::Value> =
        yaml_serde::from_str(&text).map_err(|e| {
            invalid(
                "config",
                format!("{} is not a YAML map: {e}", path.display()),
            )
        })?;
    let known: Vec<String> = Cli::command()
        .find_subcommand("agent")
        .map(|agent| {
            agent
                .get_arguments()
                .map(|a| a.get_id().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (key, value) in entries {
        let id = key.replace('-', "_");
        if !known.contains(&id) || id == "config" {
            return Err(invalid(
                "config",
                format!("{}: unknown setting {key:?}", path.display()),
            ));
        }
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let text = match value {
            yaml_serde::Value::Sequence(items) => items
                .iter()
                .map(scalar_text)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            other => scalar_text(&other),
        }
        .ok_or_else(|| {
            invalid(
                "config",
                format!("{}: {key} must be a scalar or a list", path.display()),
            )
        })?;
        out.push(OsString::from(format!("--{}={text}", id.replace('_', "-"))));
    }
    Ok(out)
}

fn scalar_text(value: &yaml_serde::Value) -> Option<String> {
    match value {
        yaml_serde::Value::String(s) => Some(s.clone()),
        yaml_serde::Value::Number(n) => Some(n.to_string()),
        yaml_serde::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses `90s`, `5m`, `1h`, `250ms`, `1h30m` or plain seconds.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    duration::parse_flag(text).map_err(|why| invalid(field, format!("{:?} {why}", text.trim())))
}

/// Like [`parse_duration`], for periods where zero would mean a busy loop.
pub fn parse_period(field: &str, text: &str) -> Result<Duration, ConfigError> {
    match parse_duration(field, text)? {
        Duration::ZERO => Err(invalid(
            field,
            format!("{text:?} must be greater than zero"),
        )),
        period => Ok(period),
    }
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
        let default_zone = args
            .default_zone
            .as_deref()
            .filter(|z| !z.is_empty())
            .map(GridZone::parse)
            .transpose()
            .map_err(|e| invalid("default-zone", e))?;
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
        let tuner = args
            .tuner
            .then(|| tuner_params(args, threshold))
            .transpose()?;
        let deferral_planner = crate::deferral::round::RoundSettings {
            planner: crate::planner::PlannerParams {
                headroom: args.deferral_headroom,
                margin: parse_duration("deferral-margin", &args.deferral_margin)?,
                k_sigma: args.deferral_k_sigma,
            },
            forecast_error: args.deferral_forecast_error,
        };
        deferral_planner
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
        if args.poll_concurrency == 0 {
            return Err(invalid("poll-concurrency", "must be at least 1"));
        }
        let lease_duration = parse_period("lease-duration", &args.lease_duration)?;
        if lease_duration < Duration::from_secs(3) {
            return Err(invalid(
                "lease-duration",
                "must be at least 3s so the leader can renew in time",
            ));
        }
        let poll_interval = parse_period("poll-interval", &args.poll_interval)?;
        if args.max_evictions_per_hour == 0 {
            return Err(invalid(
                "max-evictions-per-hour",
                "must be at least 1 (turn --migration off to evict nothing)",
            ));
        }
        let mut providers = providers_config(&args.providers)?;
        // A cached reading must never outlive a poll, or the leader would write it twice.
        providers.cache_ttl = providers.cache_ttl.min(poll_interval / 2);
        Ok(Self {
            identity: args.identity.clone().unwrap_or_else(|| node_name.clone()),
            node_name,
            namespace: args.namespace.clone(),
            kubeconfig: args.kubeconfig.clone(),
            default_zone,
            default_threshold_grams_per_kwh: threshold,
            decision: DecisionParams {
                hysteresis_grams_per_kwh: hysteresis,
                dwell: parse_duration("dwell", &args.dwell)?,
                max_age: parse_period("max-age", &args.max_age)?,
            },
            taint_effect: args.taint_effect,
            max_tainted_fraction: args.max_tainted_fraction,
            policy: args.policy,
            min_spread_grams_per_kwh: min_spread,
            min_spread_percent,
            floor_grams_per_kwh: floor,
            tuner,
            poll_interval,
            poll_concurrency: args.poll_concurrency,
            lease_duration,
            sample_interval: parse_period("sample-interval", &args.sample_interval)?,
            metrics_addr: args.metrics_addr,
            providers,
            cgroup_root: args.cgroup_root.clone(),
            deferral: args.deferral,
            deferral_planner,
            kueue_green_window: args.kueue_green_window,
            migration: args.migration,
            migrate_after: parse_duration("migrate-after", &args.migrate_after)?,
            max_evictions_per_hour: args.max_evictions_per_hour,
            power: crate::power::PowerOverrides {
                min_watts_per_vcpu: args.power.min_watts_per_vcpu,
                max_watts_per_vcpu: args.power.max_watts_per_vcpu,
                memory_watts_per_gb: args.power.memory_watts_per_gb,
                pue: args.power.pue,
            },
        })
    }
}

/// The tuner's bounds, starting from the configured threshold.
fn tuner_params(
    args: &AgentArgs,
    threshold: f64,
) -> Result<crate::tuner::TunerParams, ConfigError> {
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
    Ok(crate::tuner::TunerParams {
        min_threshold_grams_per_kwh: min,
        max_threshold_grams_per_kwh: max,
        initial_threshold_grams_per_kwh: threshold,
        ..Default::default()
    })
}

/// Reads a secret from a file (preferred) or a value from the environment.
fn secret(
    field: &str,
    file: Option<&Path>,
    value: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    match (file, value) {
        (Some(path), _) => Secret::from_file(path)
            .map(Some)
            .map_err(|e| invalid(field, e.to_string())),
        (None, Some(v)) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim().to_string()))),
        _ => Ok(None),
    }
}

fn zone_map<T: std::str::FromStr>(
    field: &str,
    entries: &[String],
) -> Result<BTreeMap<GridZone, T>, ConfigError> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (zone, value) = entry
                .split_once('=')
                .ok_or_else(|| invalid(field, format!("{entry:?} must look like ZONE=VALUE")))?;
            let zone = GridZone::parse(zone).map_err(|e| invalid(field, e))?;
            let value = value.trim().parse().map_err(|_| {
                invalid(
                    field,
                    format!("{entry:?}: cannot parse the value {value:?}"),
                )
            })?;
            Ok((zone, value))
        })
        .collect()
}

pub fn providers_config(args: &ProviderArgs) -> Result<ProvidersConfig, ConfigError> {
    let order = args
        .providers
        .iter()
        .map(|name| name.trim().parse::<ProviderKind>().map_err(|_| {
            invalid("providers", format!("unknown provider {name:?} (known: electricity-maps, watttime, uk-carbon-intensity, noaa, static)"))
        }))
        .collect::<Result<Vec<_>, _>>()?;
    if order.is_empty() {
        return Err(invalid("providers", "list at least one provider"));
    }
    for (field, url) in [
        ("electricity-maps-url", &args.electricity_maps_url),
        ("watttime-url", &args.watttime_url),
        ("uk-carbon-intensity-url", &args.uk_carbon_intensity_url),
        ("noaa-url", &args.noaa_url),
    ] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(field, format!("{url:?} must be an http(s) URL")));
        }
    }
    if args.max_response_bytes < 1024 {
        return Err(invalid("max-response-bytes", "must be at least 1024"));
    }
    if args.breaker_failures == 0 {
        return Err(invalid("breaker-failures", "must be at least 1"));
    }
    Ok(ProvidersConfig {
        order,
        electricity_maps_url: args.electricity_maps_url.trim_end_matches('/').to_string(),
        electricity_maps_token: secret(
            "electricity-maps-token-file",
            args.electricity_maps_token_file.as_deref(),
            args.electricity_maps_token.as_deref(),
        )?,
        watttime_url: args.watttime_url.trim_end_matches('/').to_string(),
        watttime_username: args.watttime_username.clone().filter(|u| !u.is_empty()),
        watttime_password: secret(
            "watttime-password-file",
            args.watttime_password_file.as_deref(),
            args.watttime_password.as_deref(),
        )?,
        watttime_regions: zone_map("watttime-regions", &args.watttime_regions)?,
        uk_url: args
            .uk_carbon_intensity_url
            .trim_end_matches('/')
            .to_string(),
        uk_regions: zone_map("uk-regions", &args.uk_regions)?,
        noaa_url: args.noaa_url.trim_end_matches('/').to_string(),
        timeout: parse_period("provider-timeout", &args.provider_timeout)?,
        max_response_bytes: args.max_response_bytes,
        breaker_failures: args.breaker_failures,
        breaker_cooldown: parse_period("breaker-cooldown", &args.breaker_cooldown)?,
        cache_ttl: Duration::from_secs(60),
    })
}

/// The agent settings from a parsed command line, for tests and `main`.
pub fn agent_args(cli: &Cli) -> Option<&AgentArgs> {
    match &cli.command {
        Command::Agent(args) => Some(args),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(extra: &[&str]) -> Result<AgentConfig, String> {
        let mut args: Vec<OsString> = ["carbon-kube", "agent", "--node-name", "n1"]
            .iter()
            .map(OsString::from)
            .collect();
        args.extend(extra.iter().map(OsString::from));
        let cli = parse_cli_from(args).map_err(|e| e.to_string())?;
        AgentConfig::from_args(agent_args(&cli).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = agent(&[]).unwrap();
        assert_eq!(cfg.default_threshold_grams_per_kwh, 300.0);
        assert_eq!(cfg.decision.dwell, Duration::from_secs(600));
        assert_eq!(cfg.poll_interval, Duration::from_secs(300));
        assert_eq!(cfg.identity, "n1");
        assert_eq!(cfg.providers.order.len(), 5);
        assert_eq!(cfg.policy, TaintPolicy::Relative);
        assert_eq!(
            (
                cfg.min_spread_grams_per_kwh,
                cfg.min_spread_percent,
                cfg.floor_grams_per_kwh
            ),
            (50.0, 20.0, 0.0)
        );
        let relative = agent(&["--min-spread=0", "--hysteresis=0", "--taint-floor=150"]).unwrap();
        assert_eq!(relative.floor_grams_per_kwh, 150.0);
        let absolute = agent(&["--policy", "absolute", "--tuner"]).unwrap();
        assert!(absolute.tuner.is_some());
    }

    #[test]
    fn durations_parse_with_units() {
        for (text, seconds) in [
            ("250ms", 0.25),
            ("90", 90.0),
            ("1.5h", 5400.0),
            ("1h30m", 5400.0),
            ("8760h", 365.0 * 24.0 * 3600.0),
        ] {
            assert_eq!(
                parse_duration("x", text).unwrap(),
                Duration::from_secs_f64(seconds),
                "{text}"
            );
        }
        for (text, needle) in [
            ("5 parsecs", "--x"),
            ("5 parsecs", "unknown unit"),
            ("-1s", "must not be negative"),
        ] {
            let err = parse_duration("x", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        // Found by tests/fuzz_parsers.rs: these panicked in Duration::from_secs_f64
        // or overflowed the lease deadline.
        for huge in [
            "99999999999999999999",
            "1e30",
            "9999999999999999999h",
            "8761h",
        ] {
            assert!(parse_duration("x", huge).is_err(), "{huge}");
        }
        assert!(
            parse_period("x", "0s")
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
        assert_eq!(
            agent(&["--dwell", "0s"]).unwrap().decision.dwell,
            Duration::ZERO
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_the_reason() {
        let cases: [(&[&str], &str); 18] = [
            (&["--hysteresis", "400"], "--hysteresis"),
            (&["--deferral-headroom", "1"], "--deferral-headroom"),
            (&["--deferral-k-sigma=-1"], "--deferral-k-sigma"),
            (&["--deferral-margin", "soon"], "--deferral-margin"),
            (
                &["--deferral-forecast-error", "2"],
                "--deferral-forecast-error",
            ),
            (
                &["--policy=absolute", "--hysteresis", "400"],
                "below --threshold",
            ),
            (&["--hysteresis=50"], "below --min-spread (50)"),
            (&["--min-spread=-1"], "--min-spread:"),
            (&["--min-spread-percent=NaN"], "--min-spread-percent"),
            (
                &["--policy=absolute", "--taint-floor=100"],
                "--taint-floor: applies to --policy relative only",
            ),
            (&["--tuner"], "--tuner: tunes the absolute threshold"),
            (&["--threshold=-5"], "--threshold"),
            (&["--max-tainted-fraction", "1.5"], "--max-tainted-fraction"),
            (
                &["--providers", "electricity-maps,carrier-pigeon"],
                "carrier-pigeon",
            ),
            (&["--default-zone", "DE/FR"], "--default-zone"),
            (&["--watttime-regions", "US-CAL-CISO"], "ZONE=VALUE"),
            (&["--lease-duration", "1s"], "--lease-duration"),
            (
                &[
                    "--policy=absolute",
                    "--tuner",
                    "--tuner-max-threshold",
                    "200",
                ],
                "--threshold",
            ),
        ];
        for (args, needle) in cases {
            let err = agent(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn shifting_flags_default_and_validate() {
        let cfg = agent(&[]).unwrap();
        assert!(cfg.deferral && !cfg.migration);
        assert_eq!(
            cfg.deferral_planner.planner,
            crate::planner::PlannerParams::default()
        );
        assert_eq!(cfg.deferral_planner.forecast_error, 0.05);
        assert_eq!(cfg.migrate_after, Duration::from_secs(1800));
        assert_eq!(cfg.max_evictions_per_hour, 6);
        let cfg = agent(&[
            "--deferral=false",
            "--migration",
            "--migrate-after=5m",
            "--max-evictions-per-hour=2",
        ])
        .unwrap();
        assert!(!cfg.deferral && cfg.migration);
        assert_eq!(cfg.migrate_after, Duration::from_secs(300));
        assert_eq!(cfg.max_evictions_per_hour, 2);
        let err = agent(&["--max-evictions-per-hour=0"]).unwrap_err();
        assert!(err.contains("--max-evictions-per-hour"), "{err}");
        let err = agent(&["--migrate-after=soon"]).unwrap_err();
        assert!(err.contains("--migrate-after"), "{err}");
    }

    #[test]
    fn missing_node_name_is_explained() {
        let cli = parse_cli_from(vec!["carbon-kube".into(), "agent".into()]).unwrap();
        // NODE_NAME may be set in the environment of whoever runs the tests.
        if std::env::var_os("NODE_NAME").is_none() {
            let err = AgentConfig::from_args(agent_args(&cli).unwrap()).unwrap_err();
            assert!(err.to_string().contains("NODE_NAME"));
        }
    }

    #[test]
    fn config_file_sits_below_flags() {
        let dir = std::env::temp_dir().join(format!("ck-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(
            &path,
            "threshold: 250\nhysteresis: 30\nproviders: [static]\n",
        )
        .unwrap();
        let cfg = agent(&["--config", path.to_str().unwrap(), "--hysteresis", "10"]).unwrap();
        assert_eq!(cfg.default_threshold_grams_per_kwh, 250.0);
        assert_eq!(cfg.decision.hysteresis_grams_per_kwh, 10.0);
        assert_eq!(cfg.providers.order, vec![ProviderKind::Static]);

        std::fs::write(&path, "treshold: 250\n").unwrap();
        let err = agent(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("unknown setting \"treshold\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = std::env::temp_dir().join(format!("ck-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "sekrit-token\n").unwrap();
        let cfg = agent(&["--electricity-maps-token-file", path.to_str().unwrap()]).unwrap();
        assert!(!format!("{cfg:?}").contains("sekrit"));
        let err = agent(&["--electricity-maps-token-file", "/nonexistent/token"]).unwrap_err();
        assert!(err.contains("--electricity-maps-token-file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
