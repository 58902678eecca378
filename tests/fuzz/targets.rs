//! Fuzz targets: every provider response parser and the config loader, each
//! taking arbitrary bytes. Shared by the cargo-fuzz targets
//! (`tests/fuzz/fuzz_targets/`, coverage-guided, nightly) and the bounded run
//! on stable in the normal test suite (`tests/fuzz_parsers.rs`).
//!
//! A target must not panic, and whatever a parser accepts must be usable:
//! (each returns whether the input was accepted, for the run's statistics)
//! readings are finite, within the plausible range, for the zone asked,
//! with a sorted forecast; a config the loader accepts does not overflow the
//! deadlines and timers the agent derives from it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use carbon_kube::budget::TaintPolicy;
use carbon_kube::carbon::{ForecastPoint, GridZone, MAX_PLAUSIBLE_GRAMS_PER_KWH, Reading};
use carbon_kube::config::{AgentConfig, agent_args, parse_cli_from};
use carbon_kube::decision::{DwellState, ZoneScore, decide};
use carbon_kube::election::{Observed, evaluate};
use carbon_kube::power::PowerCoefficients;
use carbon_kube::providers::chain::Breaker;
use carbon_kube::providers::{electricity_maps, http, noaa, uk, watttime};
use jiff::Timestamp;

/// A target: arbitrary bytes in, whether the input was accepted out.
pub type Target = fn(&[u8]) -> bool;

/// Every target, by name (the corpus directory and cargo-fuzz target name).
pub const TARGETS: &[(&str, Target)] = &[
    ("em_latest", em_latest),
    ("em_forecast", em_forecast),
    ("watttime", watttime),
    ("uk_national", uk_national),
    ("uk_regional", uk_regional),
    ("noaa_points", noaa_points),
    ("noaa_grid", noaa_grid),
    ("retry_after", retry_after),
    ("valid_time", valid_time),
    ("config_args", config_args),
    ("config_yaml", config_yaml),
];

fn zone(id: &str) -> GridZone {
    GridZone::parse(id).expect("zone")
}

/// The instant the UK and NOAA seeds are about.
fn seed_now() -> Timestamp {
    "2018-01-20T12:10:00Z".parse().expect("timestamp")
}

fn check_value(grams_per_kwh: f64) {
    assert!(
        grams_per_kwh.is_finite() && (0.0..=MAX_PLAUSIBLE_GRAMS_PER_KWH).contains(&grams_per_kwh),
        "accepted an implausible intensity {grams_per_kwh}"
    );
}

fn check_forecast(points: &[ForecastPoint]) {
    for point in points {
        check_value(point.grams_per_kwh);
    }
}

fn check_reading(reading: &Reading, asked: &GridZone) {
    assert_eq!(&reading.zone, asked, "a reading for another zone");
    check_value(reading.grams_per_kwh);
    check_forecast(&reading.forecast);
    assert!(
        reading.forecast.windows(2).all(|w| w[0].at <= w[1].at),
        "forecast not sorted"
    );
    assert!(!reading.source.is_empty());
}

pub fn em_latest(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<electricity_maps::Latest>(data) else {
        return false;
    };
    let de = zone("DE");
    let parsed = electricity_maps::parse_latest(&de, body);
    if let Ok(reading) = &parsed {
        check_reading(reading, &de);
    }
    parsed.is_ok()
}

pub fn em_forecast(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<electricity_maps::ForecastBody>(data) else {
        return false;
    };
    let parsed = electricity_maps::parse_forecast(body);
    if let Ok(points) = &parsed {
        check_forecast(points);
    }
    parsed.is_ok()
}

pub fn watttime(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<watttime::Envelope>(data) else {
        return false;
    };
    let ciso = zone("US-CAL-CISO");
    let parsed = watttime::parse_forecast(&ciso, "CAISO_NORTH", body);
    if let Ok(reading) = &parsed {
        check_reading(reading, &ciso);
        assert!(reading.kind.is_estimated(), "a MOER is a model output");
    }
    parsed.is_ok()
}

pub fn uk_national(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<uk::NationalBody>(data) else {
        return false;
    };
    let gb = zone("GB");
    let parsed = uk::parse_national(&gb, body, seed_now());
    if let Ok(reading) = &parsed {
        check_reading(reading, &gb);
        assert!(reading.observed_at <= seed_now(), "observed in the future");
    }
    parsed.is_ok()
}

pub fn uk_regional(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<uk::RegionalBody>(data) else {
        return false;
    };
    let emids = zone("GB-EMIDS");
    let parsed = uk::parse_regional(&emids, 9, body, seed_now());
    if let Ok(reading) = &parsed {
        check_reading(reading, &emids);
    }
    parsed.is_ok()
}

pub fn noaa_points(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<noaa::PointsBody>(data) else {
        return false;
    };
    let parsed = noaa::grid_link("https://api.weather.gov", body);
    if let Ok(url) = &parsed {
        assert_eq!(url.scheme(), "https", "{url}");
        assert_eq!(url.host_str(), Some("api.weather.gov"), "followed {url}");
        assert_eq!(url.port_or_known_default(), Some(443), "{url}");
    }
    parsed.is_ok()
}

pub fn noaa_grid(data: &[u8]) -> bool {
    let Ok(body) = serde_json::from_slice::<noaa::GridBody>(data) else {
        return false;
    };
    let ciso = zone("US-CAL-CISO");
    let average = 250.0;
    let point = noaa::zone_point(&ciso).expect("CISO point");
    let mut accepted = false;
    for now in [seed_now(), Timestamp::now()] {
        if let Ok(reading) = noaa::estimate(&ciso, average, point, &body, now) {
            check_reading(&reading, &ciso);
            let band = average * noaa::MIN_FACTOR - 1e-9..=average * noaa::MAX_FACTOR + 1e-9;
            assert!(band.contains(&reading.grams_per_kwh), "{reading:?}");
            accepted = true;
        }
    }
    accepted
}

pub fn retry_after(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let now = Timestamp::now();
    let hold = http::parse_retry_after(text, now);
    // Whatever the header says, the breaker takes it without overflowing.
    let mut breaker = Breaker::new(3, Duration::from_secs(300), Duration::from_secs(40));
    breaker.record_failure(std::time::Instant::now(), hold);
    let _ = breaker.admit(std::time::Instant::now());
    hold.is_some()
}

pub fn valid_time(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = noaa::parse_valid_time(text);
    if let Ok((start, end)) = parsed {
        assert!(start < end, "{text:?} gave an empty interval");
    }
    parsed.is_ok()
}

/// Paths that are not regular files (devices, stdin, procfs) would make the
/// loader block on a read no config would make; not what is being fuzzed.
fn names_special_files(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| text.contains(p))
}

/// One argument per line after `carbon-kube agent --node-name n1`.
pub fn config_args(data: &[u8]) -> bool {
    if names_special_files(data) {
        return false;
    }
    let mut args: Vec<OsString> = ["carbon-kube", "agent", "--node-name", "n1"]
        .iter()
        .map(OsString::from)
        .collect();
    args.extend(
        data.split(|b| *b == b'\n')
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    load(args)
}

/// The bytes as the `--config` YAML file.
pub fn config_yaml(data: &[u8]) -> bool {
    if names_special_files(data) {
        return false;
    }
    let path = std::env::temp_dir().join(format!(
        "ck-fuzz-config-{}-{:?}.yaml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("writing the fuzzed config");
    let args = ["carbon-kube", "agent", "--node-name", "n1", "--config"]
        .iter()
        .map(OsString::from)
        .chain([path.clone().into_os_string()])
        .collect();
    let accepted = load(args);
    let _ = std::fs::remove_file(&path);
    accepted
}

/// Parses and validates; whatever is accepted goes through the agent's
/// first uses of it.
fn load(args: Vec<OsString>) -> bool {
    let Ok(cli) = parse_cli_from(args) else {
        return false;
    };
    let Some(agent) = agent_args(&cli) else {
        return false;
    };
    let Ok(config) = AgentConfig::from_args(agent) else {
        return false;
    };
    use_config(&config);
    true
}

fn use_config(config: &AgentConfig) {
    let d = &config.reconciler.decision;
    let poller = &config.poller;
    assert!(d.hysteresis_grams_per_kwh >= 0.0);
    match poller.policy {
        TaintPolicy::Absolute => {
            assert!(d.hysteresis_grams_per_kwh < poller.default_threshold_grams_per_kwh)
        }
        TaintPolicy::Relative => assert!(
            d.hysteresis_grams_per_kwh == 0.0
                || d.hysteresis_grams_per_kwh < poller.min_spread_grams_per_kwh
        ),
    }
    assert!(poller.min_spread_percent >= 0.0 && poller.floor_grams_per_kwh >= 0.0);
    assert!((0.0..=1.0).contains(&poller.max_tainted_fraction));
    assert!(config.election.lease_duration >= Duration::from_secs(3));
    assert!(!config.providers.order.is_empty());

    // Election: deadlines on the monotonic clock.
    let timing = config.election;
    let now = tokio::time::Instant::now();
    let seen = Observed {
        holder: Some("other".into()),
        resource_version: "1".into(),
        seen_at: now,
    };
    let _ = evaluate(Some(&seen), "me", now, timing.lease_duration);
    let _ = timing.must_step_down(now, now + timing.renew_deadline);
    let _ = now + timing.renew_every + timing.max_jitter;
    // Timers and deadlines the agent derives from the settings.
    let std_now = std::time::Instant::now();
    for period in [
        poller.interval,
        config.emissions.sample_interval,
        d.dwell,
        d.max_age,
        config.providers.timeout.saturating_mul(4),
        config.providers.breaker_cooldown,
        config.providers.cache_ttl,
    ] {
        let _ = std_now + period;
    }
    // The decision on a fresh, dirty reading.
    let score = ZoneScore {
        grams_per_kwh: poller.default_threshold_grams_per_kwh + 1.0,
        threshold_grams_per_kwh: poller.default_threshold_grams_per_kwh,
        observed_at: Timestamp::now(),
        taint_allowed: true,
        ranking: None,
    };
    let _ = decide(
        d,
        Some(&score),
        false,
        DwellState::default(),
        Timestamp::now(),
    );
    let _ = PowerCoefficients::for_architecture("x86_64")
        .with_overrides(&config.emissions.power.overrides);
}
