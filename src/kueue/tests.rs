use kube::core::CustomResourceExt;

use super::*;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn spec(
    zone: Option<&str>,
    max_delay: &str,
    default_duration: Option<&str>,
) -> GreenWindowConfigSpec {
    GreenWindowConfigSpec {
        zone: zone.map(str::to_string),
        max_delay: max_delay.into(),
        default_duration: default_duration.map(str::to_string),
    }
}

/// A Workload spec as Kueue writes it for a Job (one pod set).
fn workload(annotations: serde_json::Value, node_selector: serde_json::Value) -> WorkloadSpec {
    serde_json::from_value(serde_json::json!({
        "queueName": "work",
        "podSets": [{
            "name": "main",
            "count": 3,
            "template": {
                "metadata": { "annotations": annotations },
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [{ "name": "c", "resources": { "requests": { "cpu": "500m" } } }],
                },
            },
        }],
    }))
    .unwrap()
}

#[test]
fn parameters_are_checked_and_named_in_the_error() {
    let params = Params::from_spec("night", &spec(Some("DE"), "6h", Some("90m"))).unwrap();
    assert_eq!(params.zone, Some(GridZone::parse("DE").unwrap()));
    assert_eq!(params.max_delay, Duration::from_secs(6 * 3600));
    assert_eq!(params.default_duration, Duration::from_secs(90 * 60));
    let defaulted = Params::from_spec("any", &spec(None, "1h", None)).unwrap();
    assert_eq!(
        (defaulted.zone, defaulted.default_duration),
        (None, deferral::DEFAULT_DURATION)
    );

    for (bad, field) in [
        (spec(Some("not a zone!"), "6h", None), "spec.zone"),
        (spec(None, "soon", None), "spec.maxDelay"),
        (spec(None, "0h", None), "spec.maxDelay"),
        (spec(None, "30d", None), "spec.maxDelay"),
        (spec(None, "6h", Some("-1h")), "spec.defaultDuration"),
    ] {
        let why = Params::from_spec("broken", &bad).unwrap_err();
        assert!(
            why.starts_with("GreenWindowConfig broken: ") && why.contains(field),
            "{why}"
        );
    }
}

#[test]
fn a_workload_asks_for_the_config_defaults_and_its_pods_cpu() {
    let params = Params::from_spec("night", &spec(Some("DE"), "6h", Some("2h"))).unwrap();
    let created = at("2025-06-01T10:00:00Z");
    let w = workload(serde_json::json!({}), serde_json::json!({}));
    assert_eq!(w.vcpus(), 1.5, "3 pods of 500m");
    let request = request(&params, &w, created).unwrap();
    assert_eq!(request.latest_start, at("2025-06-01T16:00:00Z"));
    assert_eq!(request.duration, Duration::from_secs(2 * 3600));
    assert_eq!(request.zone, Some(GridZone::parse("DE").unwrap()));
}

#[test]
fn pod_template_annotations_narrow_but_never_extend_the_config() {
    let params = Params::from_spec("night", &spec(None, "6h", None)).unwrap();
    let created = at("2025-06-01T10:00:00Z");
    let shorter = workload(
        serde_json::json!({ "carbon-kube.io/max-delay": "2h", "carbon-kube.io/duration": "30m" }),
        serde_json::json!({}),
    );
    let request = request(&params, &shorter, created).unwrap();
    assert_eq!(request.latest_start, at("2025-06-01T12:00:00Z"));
    assert_eq!(request.duration, Duration::from_secs(30 * 60));
    assert_eq!(request.zone, None);

    let longer = workload(
        serde_json::json!({ "carbon-kube.io/latest-start": "2025-06-03T00:00:00Z" }),
        serde_json::json!({}),
    );
    let request = super::request(&params, &longer, created).unwrap();
    assert_eq!(
        request.latest_start,
        at("2025-06-01T16:00:00Z"),
        "the config's maxDelay bounds it"
    );

    let malformed = workload(
        serde_json::json!({ "carbon-kube.io/duration": "forever" }),
        serde_json::json!({}),
    );
    let why = super::request(&params, &malformed, created).unwrap_err();
    assert!(why.contains("carbon-kube.io/duration"), "{why}");
}

#[test]
fn a_node_selector_zone_wins_and_is_not_pinned_again() {
    let params = Params::from_spec("night", &spec(Some("DE"), "6h", None)).unwrap();
    let pinned = workload(
        serde_json::json!({}),
        serde_json::json!({ "carbon-kube.io/grid-zone": "FR" }),
    );
    let request = request(&params, &pinned, at("2025-06-01T10:00:00Z")).unwrap();
    assert_eq!(request.zone, Some(GridZone::parse("FR").unwrap()));
    assert!(pin_updates(&pinned, &GridZone::parse("FR").unwrap()).is_empty());

    let free = workload(serde_json::json!({}), serde_json::json!({}));
    let updates = pin_updates(&free, &GridZone::parse("ES").unwrap());
    assert_eq!(
        updates,
        vec![serde_json::json!({
            "name": "main",
            "nodeSelector": { "carbon-kube.io/grid-zone": "ES" },
        })]
    );
}

#[test]
fn checks_are_decided_only_between_quota_and_admission() {
    let status = |conditions: serde_json::Value, admission: bool| -> WorkloadStatus {
        let mut value = serde_json::json!({
            "conditions": conditions,
            "admissionChecks": [{ "name": "green", "state": "Pending", "message": "" }],
        });
        if admission {
            value["admission"] = serde_json::json!({ "clusterQueue": "batch" });
        }
        serde_json::from_value(value).unwrap()
    };
    let reserved = serde_json::json!([{ "type": "QuotaReserved", "status": "True" }]);
    assert!(status(reserved.clone(), true).awaits_checks());
    assert!(!status(reserved, false).awaits_checks());
    assert!(!status(serde_json::json!([]), false).awaits_checks());
    let admitted = serde_json::json!([
        { "type": "QuotaReserved", "status": "True" },
        { "type": "Admitted", "status": "True" },
    ]);
    assert!(!status(admitted, true).awaits_checks());
    let s = status(serde_json::json!([]), false);
    assert_eq!(s.check("green").map(|c| c.state.as_str()), Some("Pending"));
    assert!(s.check("other").is_none());
}

#[test]
fn the_parameters_crd_is_cluster_scoped() {
    let crd = GreenWindowConfig::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("greenwindowconfigs.carbon-kube.io")
    );
    assert!(CRD_YAML.contains("maxDelay"));
}

#[test]
fn the_checked_in_crd_is_generated_from_the_types() {
    crate::crd::assert_checked_in(
        &GreenWindowConfig::crd(),
        "greenwindowconfigs.carbon-kube.io.yaml",
        CRD_YAML,
    );
}
