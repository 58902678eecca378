use std::ffi::OsString;

use super::*;
use crate::providers::ProviderKind;
use crate::taint::TaintEffect;
use crate::zones::Cloud;

fn agent(extra: &[&str]) -> Result<AgentConfig, String> {
    let mut args: Vec<OsString> = ["carbon-kube", "agent", "--node-name", "n1"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(extra.iter().map(OsString::from));
    let cli = parse_cli_from(args).map_err(|e| e.to_string())?;
    AgentConfig::from_args(agent_args(&cli).unwrap()).map_err(|e| e.to_string())
}

/// A scratch directory of this test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ck-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn defaults_are_valid_and_each_part_gets_its_own() {
    let cfg = agent(&[]).unwrap();
    let poller = &cfg.poller;
    assert_eq!(poller.default_threshold_grams_per_kwh, 300.0);
    assert_eq!(poller.interval, Duration::from_secs(300));
    assert_eq!(poller.policy, TaintPolicy::Relative);
    assert_eq!(
        (
            poller.min_spread_grams_per_kwh,
            poller.min_spread_percent,
            poller.floor_grams_per_kwh
        ),
        (50.0, 20.0, 0.0)
    );
    assert_eq!(poller.rank_window, cfg.reconciler.decision.dwell);
    assert_eq!(cfg.reconciler.decision.dwell, Duration::from_secs(600));
    assert_eq!(cfg.reconciler.decision.max_age, Duration::from_secs(5400));
    assert_eq!(cfg.reconciler.taint_effect, TaintEffect::PreferNoSchedule);
    assert_eq!(cfg.identity, "n1");
    assert_eq!(cfg.election.lease_duration, Duration::from_secs(15));
    assert_eq!(cfg.providers.order.len(), 5);
    assert_eq!(cfg.providers.timeout, Duration::from_secs(10));
    assert_eq!(cfg.providers.max_response_bytes, 1 << 20);
    // A cached reading never outlives half a poll.
    assert_eq!(cfg.providers.cache_ttl, Duration::from_secs(60));
    assert_eq!(cfg.emissions.sample_interval, Duration::from_secs(15));
    assert_eq!(cfg.emissions.power.cloud, None);
    let relative = agent(&["--min-spread=0", "--hysteresis=0", "--taint-floor=150"]).unwrap();
    assert_eq!(relative.poller.floor_grams_per_kwh, 150.0);
    let absolute = agent(&["--policy", "absolute", "--tuner"]).unwrap();
    assert!(absolute.poller.tuner.is_some());
    let short = agent(&["--poll-interval=1m"]).unwrap();
    assert_eq!(short.providers.cache_ttl, Duration::from_secs(30));
}

#[test]
fn typed_flags_parse_durations_sizes_and_enums() {
    let cfg = agent(&[
        "--dwell=0s",
        "--max-age=1h30m",
        "--deferral-margin=90",
        "--max-response-bytes=512Ki",
        "--taint-effect=NoSchedule",
        "--cloud=gcp",
        "--lease-duration=1.5m",
    ])
    .unwrap();
    assert_eq!(cfg.reconciler.decision.dwell, Duration::ZERO);
    assert_eq!(cfg.reconciler.decision.max_age, Duration::from_secs(5400));
    let deferral = cfg.deferral.as_ref().unwrap();
    assert_eq!(deferral.round.planner.margin, Duration::from_secs(90));
    assert_eq!(deferral.max_age, Duration::from_secs(5400));
    assert_eq!(cfg.providers.max_response_bytes, 512 << 10);
    assert_eq!(cfg.reconciler.taint_effect, TaintEffect::NoSchedule);
    assert_eq!(cfg.emissions.power.cloud, Some(Cloud::Gcp));
    assert_eq!(cfg.election.lease_duration, Duration::from_secs(90));
    // clap names the flag and the grammar says what is wrong.
    let cases: [(&[&str], &str); 7] = [
        (&["--dwell", "5 parsecs"], "unknown unit"),
        (&["--max-age=0s"], "must be longer than zero"),
        (&["--poll-interval=-1s"], "must not be negative"),
        (&["--sample-interval=8761h"], "longer than a year"),
        (&["--max-response-bytes=1.5"], "not a whole number of bytes"),
        (&["--taint-effect=NoExecute"], "NoExecute"),
        (&["--cloud=ibm"], "ibm"),
    ];
    for (args, needle) in cases {
        let err = agent(args).unwrap_err();
        let flag = args[0].split('=').next().unwrap();
        assert!(
            err.contains(flag) && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn bad_values_name_the_flag_and_the_reason() {
    let cases: [(&[&str], &str); 22] = [
        (&["--hysteresis", "400"], "--hysteresis"),
        (&["--deferral-headroom", "1"], "--deferral-headroom"),
        (&["--deferral-k-sigma=-1"], "--deferral-k-sigma"),
        (&["--deferral-margin", "soon"], "--deferral-margin"),
        (
            &["--deferral-forecast-error", "2"],
            "--deferral-forecast-error",
        ),
        // Checked with deferral off too: turning it on later cannot break the start.
        (
            &["--deferral=false", "--deferral-headroom", "1"],
            "--deferral-headroom",
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
        (&["--poll-concurrency=0"], "--poll-concurrency"),
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
        (&["--pue=0.9"], "--pue: 0.9 must be between 1 and 3"),
        (
            &["--min-watts-per-vcpu=3", "--max-watts-per-vcpu=2"],
            "--max-watts-per-vcpu: 2 must be at least min_watts_per_vcpu (3)",
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
    let deferral = cfg.deferral.as_ref().unwrap();
    assert!(cfg.migration.is_none());
    assert_eq!(
        deferral.round.planner,
        crate::planner::PlannerParams::default()
    );
    assert_eq!(deferral.round.forecast_error, 0.05);
    assert_eq!(deferral.identity, "n1");
    assert!(cfg.kueue.is_none());
    // Kueue's checks are planned as deferred pods are, even with the gate off.
    let kueue = agent(&["--kueue-green-window", "--deferral=false"]).unwrap();
    assert!(kueue.deferral.is_none());
    assert_eq!(kueue.kueue.unwrap().round, deferral.round);
    let cfg = agent(&[
        "--deferral=false",
        "--migration",
        "--migrate-after=5m",
        "--max-evictions-per-hour=2",
        "--identity=pod-1",
    ])
    .unwrap();
    assert!(cfg.deferral.is_none());
    let migration = cfg.migration.unwrap();
    assert_eq!(migration.migrate_after, Duration::from_secs(300));
    assert_eq!(migration.max_evictions_per_hour, 2);
    assert_eq!(migration.identity, "pod-1");
    assert_eq!(migration.hysteresis_grams_per_kwh, 20.0);
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
    let dir = Scratch::new("config");
    let path = dir.file(
        "agent.yaml",
        "threshold: 250\nhysteresis: 30\nproviders: [static]\ndwell: 5m\npolicy: absolute\n",
    );
    let cfg = agent(&["--config", &path, "--hysteresis", "10"]).unwrap();
    assert_eq!(cfg.poller.default_threshold_grams_per_kwh, 250.0);
    assert_eq!(cfg.reconciler.decision.hysteresis_grams_per_kwh, 10.0);
    assert_eq!(cfg.reconciler.decision.dwell, Duration::from_secs(300));
    assert_eq!(cfg.providers.order, vec![ProviderKind::Static]);

    // A bad value in the file is parsed by the flag's own parser, and named.
    for (text, needle) in [
        ("treshold: 250\n", "unknown setting \"treshold\""),
        ("dwell: soon\n", "--dwell"),
        ("taint-effect: NoExecute\n", "--taint-effect"),
        (
            "policy: absolute\nhysteresis: 400\n",
            "--hysteresis: 400 must be below --threshold",
        ),
        (
            "providers: {a: 1}\n",
            "providers must be a scalar or a list",
        ),
        ("- threshold\n", "is not a YAML map"),
    ] {
        let path = dir.file("bad.yaml", text);
        let err = agent(&["--config", &path]).unwrap_err();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let err = agent(&["--config", "/nonexistent/agent.yaml"]).unwrap_err();
    assert!(err.contains("cannot read /nonexistent/agent.yaml"), "{err}");
}

#[test]
fn secrets_come_from_files_and_never_print() {
    let dir = Scratch::new("secret");
    let path = dir.file("token", "sekrit-token\n");
    let cfg = agent(&["--electricity-maps-token-file", &path]).unwrap();
    assert!(!format!("{cfg:?}").contains("sekrit"));
    let err = agent(&["--electricity-maps-token-file", "/nonexistent/token"]).unwrap_err();
    assert!(err.contains("--electricity-maps-token-file"), "{err}");
}

#[test]
fn help_shows_every_default_as_before() {
    use clap::CommandFactory;
    let mut command = crate::cli::Cli::command();
    let agent = command.find_subcommand_mut("agent").unwrap();
    let help = agent.render_long_help().to_string();
    for shown in [
        "[default: 10m]",
        "[default: 90m]",
        "[default: 5m]",
        "[default: 15s]",
        "[default: 2h]",
        "[default: 30m]",
        "[default: 10s]",
        "[default: 1048576]",
        "[default: PreferNoSchedule]",
        "[env: CARBON_KUBE_CLOUD=]",
        "[possible values: aws, gcp, azure]",
    ] {
        assert!(help.contains(shown), "{shown} missing from:\n{help}");
    }
}
