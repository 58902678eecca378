use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::StatusCode;

use super::*;
use crate::testing::sample;

#[test]
fn exposition_has_the_catalogue_with_node_label() {
    let metrics = Metrics::new("node-a");
    metrics.set_zone_intensity("DE", "electricity-maps", 412.0);
    metrics.record_attempts(&[
        Attempt {
            provider: "electricity-maps",
            outcome: "timeout",
            seconds: 10.0,
        },
        Attempt {
            provider: "static",
            outcome: "ok",
            seconds: 0.0,
        },
    ]);
    let text = metrics.encode();
    let de = [
        "node=\"node-a\"",
        "zone=\"DE\"",
        "source=\"electricity-maps\"",
    ];
    assert_eq!(
        sample(&text, "carbon_kube_zone_intensity_grams_per_kwh", &de),
        Some(412.0),
        "{text}"
    );
    let timeout = ["outcome=\"timeout\"", "provider=\"electricity-maps\""];
    assert_eq!(
        sample(&text, "carbon_kube_provider_errors_total", &timeout),
        Some(1.0)
    );
    assert!(!text.contains("carbon_kube_provider_errors_total{node=\"node-a\",outcome=\"ok\""));
    for name in [
        "carbon_kube_build_info",
        "carbon_kube_node_emitted_grams_total",
        "carbon_kube_taint_transitions_total",
        "carbon_kube_node_idle_power_watts",
        "carbon_kube_attributed_pods",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

#[test]
fn unknown_values_are_absent_not_zero() {
    let metrics = Metrics::new("n");
    let text = metrics.encode();
    for name in [
        "carbon_kube_data_age_seconds",
        "carbon_kube_threshold_grams_per_kwh",
        "carbon_kube_node_emissions_grams_per_hour",
        "carbon_kube_node_grid_intensity_grams_per_kwh",
    ] {
        assert_eq!(sample(&text, name, &[]), None, "{name} before any data");
    }
    assert_eq!(metrics.data_age_seconds.get(), None);
    metrics.data_age_seconds.set(42.0);
    assert_eq!(metrics.data_age_seconds.get(), Some(42.0));
    let text = metrics.encode();
    assert_eq!(
        sample(&text, "carbon_kube_data_age_seconds", &["node=\"n\""]),
        Some(42.0),
        "{text}"
    );
}

#[test]
fn a_zone_keeps_one_source_series() {
    let metrics = Metrics::new("n");
    metrics.set_zone_intensity("DE", "electricity-maps", 400.0);
    metrics.set_zone_intensity("DE", "static", 380.0);
    metrics.set_zone_intensity("FR", "electricity-maps", 50.0);
    let text = metrics.encode();
    assert!(
        !text.contains("zone=\"DE\",source=\"electricity-maps\"")
            && !text.contains("source=\"electricity-maps\",zone=\"DE\""),
        "{text}"
    );
    assert!(text.contains("source=\"static\""));
    assert!(text.contains("zone=\"FR\""), "other zones are kept");
}

#[test]
fn losing_leadership_drops_leader_only_series() {
    let metrics = Metrics::new("n");
    metrics.set_leader(true);
    metrics.set_zone_intensity("DE", "static", 400.0);
    metrics.set_tuner_threshold("DE", 280.0);
    metrics.set_tuner_reward("DE", -1.5);
    metrics.record_tuner_decision("DE", "lower");
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "carbon_kube_tuner_threshold_grams_per_kwh",
            &["zone=\"DE\""]
        ),
        Some(280.0)
    );
    assert_eq!(
        sample(
            &text,
            "carbon_kube_tuner_decisions_total",
            &["action=\"lower\""]
        ),
        Some(1.0)
    );
    metrics.set_leader(false);
    let text = metrics.encode();
    assert_eq!(
        sample(&text, "carbon_kube_tuner_threshold_grams_per_kwh", &[]),
        None
    );
    assert_eq!(sample(&text, "carbon_kube_tuner_reward", &[]), None);
    assert_eq!(
        sample(&text, "carbon_kube_zone_intensity_grams_per_kwh", &[]),
        None
    );
    assert_eq!(
        sample(&text, "carbon_kube_leader_changes_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "carbon_kube_tuner_decisions_total",
            &["action=\"lower\""]
        ),
        Some(1.0),
        "counters stay: they only ever go up"
    );
}

#[test]
fn pod_series_accumulate_and_go_with_the_pod() {
    let metrics = Metrics::new("n");
    let step = PodEmissions {
        grams_per_hour: 3.6,
        grams: 0.5,
    };
    let second = Duration::from_secs(1);
    metrics.set_pod("shop", "web-1", 7.5, second, Some(step));
    metrics.set_pod("shop", "web-1", 7.0, Duration::from_secs(2), Some(step));
    metrics.set_pod("shop", "web-2", 1.0, second, None);
    let text = metrics.encode();
    let web1 = ["namespace=\"shop\"", "pod=\"web-1\""];
    assert_eq!(
        sample(&text, "carbon_kube_pod_power_watts", &web1),
        Some(7.0)
    );
    assert_eq!(
        sample(&text, "carbon_kube_pod_emitted_grams_total", &web1),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "carbon_kube_pod_emissions_grams_per_hour", &web1),
        Some(3.6)
    );
    assert_eq!(
        sample(&text, "carbon_kube_pod_energy_joules_total", &web1),
        Some(7.5 + 14.0),
        "energy counts whether or not the intensity is known"
    );
    metrics.remove_pod("shop", "web-1");
    let text = metrics.encode();
    assert!(!text.contains("pod=\"web-1\""), "{text}");
    assert!(text.contains("pod=\"web-2\""));
}

#[test]
fn readiness_follows_the_flag() {
    let metrics = Metrics::new("n");
    let status = |path: &str| server::route(&metrics, path).status();
    assert_eq!(status("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
    metrics.ready.store(true, Ordering::Relaxed);
    assert_eq!(status("/readyz"), StatusCode::OK);
    assert_eq!(status("/healthz"), StatusCode::OK);
    assert_eq!(status("/nope"), StatusCode::NOT_FOUND);
}

#[test]
fn errors_are_counted_by_part_and_kind() {
    let metrics = Metrics::new("node-a");
    let conflict = || {
        let status = kube::core::Status::failure("changed", "Conflict").with_code(409);
        Error::Kube(kube::Error::Api(Box::new(status)))
    };
    metrics.record_error("reconciler", &conflict());
    metrics.record_error("reconciler", &conflict());
    metrics.record_error("poller", &crate::error::ConfigError::new("x", "y").into());
    let text = metrics.encode();
    let count = |part: &str, kind: &str| {
        let labels = [format!("part=\"{part}\""), format!("kind=\"{kind}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        sample(&text, "carbon_kube_errors_total", &labels)
    };
    assert_eq!(count("reconciler", "conflict"), Some(2.0));
    assert_eq!(count("poller", "config"), Some(1.0));
    assert_eq!(count("poller", "conflict"), None);
}

#[test]
fn node_energy_splits_measured_from_modelled_and_the_grid_names_its_signal() {
    use crate::power::PowerCoefficients;
    use crate::power::measured::{Breakdown, ModelInputs, Part, PartKind, Source};
    let metrics = Metrics::new("n");
    let model = ModelInputs {
        vcpus: 4.0,
        cpu_utilisation: 0.5,
        memory_gb: 8.0,
    };
    let c = PowerCoefficients {
        min_watts_per_vcpu: 1.0,
        max_watts_per_vcpu: 4.0,
        memory_watts_per_gb: 0.5,
        pue: 1.0,
    };
    let modelled = Breakdown::combine(&[], model, &c);
    metrics.add_node_energy(&modelled, Duration::from_secs(10));
    let text = metrics.encode();
    let energy = |text: &str, source: &str| {
        let label = format!("source=\"{source}\"");
        sample(
            text,
            "carbon_kube_node_energy_joules_total",
            &[label.as_str()],
        )
    };
    // (4 × 2.5 + 8 × 0.5) W for 10 s; nothing measured yet, so no measured series.
    assert_eq!(energy(&text, "modelled"), Some(140.0));
    assert_eq!(energy(&text, "measured"), None, "{text}");
    let gpu = Part {
        kind: PartKind::Gpu,
        device: "GPU-0".into(),
        watts: 60.0,
        source: Source::Hwmon,
    };
    let measured = Breakdown::combine(&[gpu], model, &c);
    metrics.add_node_energy(&measured, Duration::from_secs(10));
    let text = metrics.encode();
    assert_eq!(energy(&text, "measured"), Some(600.0));
    assert_eq!(energy(&text, "modelled"), Some(280.0));

    metrics.set_node_grid("US-CAL-CISO", Signal::of_source("watttime"));
    metrics.set_node_grid("DE", Signal::of_source("electricity-maps"));
    let text = metrics.encode();
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("carbon_kube_node_grid_info{"))
        .collect();
    assert_eq!(info.len(), 1, "one zone and signal at a time: {info:?}");
    assert!(
        info[0].contains("zone=\"DE\"") && info[0].contains("signal=\"average\""),
        "{info:?}"
    );
}
