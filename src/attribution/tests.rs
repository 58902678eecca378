use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::power::PowerCoefficients;
use crate::power::measured::{Breakdown, ModelInputs};

const SECOND: Duration = Duration::from_secs(1);

fn usage(pairs: &[(&str, u64)]) -> CpuUsage {
    pairs
        .iter()
        .map(|(uid, usec)| (uid.to_string(), *usec))
        .collect()
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

#[test]
fn busy_vcpus_are_cpu_time_over_wall_time() {
    let before = usage(&[("a", 1_000_000), ("b", 0), ("c", 5_000_000)]);
    let after = usage(&[
        ("a", 3_000_000),
        ("b", 500_000),
        ("c", 10),
        ("new", 9_000_000),
    ]);
    let busy = busy_vcpus(&before, &after, 2 * SECOND);
    assert!(close(busy["a"], 1.0));
    assert!(close(busy["b"], 0.25));
    assert!(
        !busy.contains_key("c"),
        "a counter that went back has no interval"
    );
    assert!(!busy.contains_key("new"), "a new pod has no interval yet");
    assert!(busy_vcpus(&before, &after, Duration::ZERO).is_empty());
}

#[test]
fn pods_get_the_per_vcpu_dynamic_power() {
    let c = PowerCoefficients {
        min_watts_per_vcpu: 1.0,
        max_watts_per_vcpu: 4.0,
        memory_watts_per_gb: 0.5,
        pue: 1.2,
    };
    let model = ModelInputs {
        vcpus: 8.0,
        cpu_utilisation: 0.5,
        memory_gb: 0.0,
    };
    let per_vcpu = Breakdown::combine(&[], model, &c).watts_per_busy_vcpu(&c);
    assert!(close(per_vcpu, 3.6));
    let busy = HashMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.5)]);
    let watts = pod_watts(&busy, 4.0, 3.6);
    assert!(close(watts["a"], 3.6) && close(watts["b"], 1.8));
    // The linear model's node dynamic power at 4 busy of 8 vCPUs is 4 × 3.6 W;
    // the pods' 1.5 vCPUs take 5.4 W of it, the rest stays with the node.
    let node_dynamic = power::node_watts(&c, 8.0, 0.5, 0.0) - power::node_watts(&c, 8.0, 0.0, 0.0);
    assert!(close(node_dynamic, 4.0 * 3.6));
}

#[test]
fn pods_never_draw_more_than_the_node_s_dynamic_power() {
    let busy = HashMap::from([("a".to_string(), 3.0), ("b".to_string(), 1.0)]);
    let watts = pod_watts(&busy, 2.0, 10.0);
    assert!(
        close(watts["a"], 15.0) && close(watts["b"], 5.0),
        "{watts:?}"
    );
    let idle = pod_watts(&busy, 0.0, 10.0);
    assert!(idle.values().all(|w| *w == 0.0));
    let nonsense = pod_watts(&busy, f64::NAN, 10.0);
    assert!(nonsense.values().all(|w| *w == 0.0));
}

#[test]
fn watts_are_keyed_by_name_and_unknown_pods_left_out() {
    let key = |name: &str| PodKey {
        namespace: "ns".into(),
        name: name.into(),
    };
    let names = HashMap::from([
        ("u1".to_string(), key("web-0")),
        ("u2".to_string(), key("web-0")),
        ("u3".to_string(), key("db-0")),
    ]);
    let watts = HashMap::from([
        ("u1".to_string(), 1.0),
        ("u2".to_string(), 2.0),
        ("u3".to_string(), 4.0),
        ("stranger".to_string(), 8.0),
    ]);
    let named = by_name(&watts, &names);
    assert_eq!(
        named,
        BTreeMap::from([(key("db-0"), 4.0), (key("web-0"), 3.0)])
    );
}

#[test]
fn emissions_need_a_sane_intensity() {
    let e = emissions(10.0, Some(400.0), Duration::from_secs(1800)).unwrap();
    assert!(close(e.grams_per_hour, 4.0) && close(e.grams, 2.0));
    assert_eq!(emissions(10.0, None, SECOND), None);
    assert_eq!(emissions(10.0, Some(f64::NAN), SECOND), None);
    assert_eq!(emissions(10.0, Some(-1.0), SECOND), None);
}

fn pod_meta(name: &str, uid: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some("team".into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..Default::default()
    }
}

fn write_usage(root: &Path, uid: &str, usec: u64) {
    let dir = root
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
}

#[test]
fn samples_export_pods_and_drop_the_ones_that_left() {
    let root = std::env::temp_dir().join(format!("ck-attribution-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (a, b) = (
        "aaaaaaaa-0000-0000-0000-000000000001",
        "bbbbbbbb-0000-0000-0000-000000000002",
    );
    write_usage(&root, a, 0);
    write_usage(&root, b, 0);
    let metrics = Metrics::new("n");
    let mut attribution = Attribution {
        root: root.clone(),
        directory: PodDirectory::fixed(vec![pod_meta("alpha", a), pod_meta("beta", b)]),
        metrics: metrics.clone(),
        previous: None,
        exported: BTreeSet::new(),
        read_failed: false,
    };
    let per_vcpu = 3.0;
    attribution.sample(per_vcpu, 8.0, &BTreeMap::new(), Some(500.0));
    assert!(
        !metrics.encode().contains("carbon_kube_pod_power_watts{"),
        "first sample is a baseline"
    );
    // dcgm-exporter maps a GPU to alpha and one to gamma, a pod without a
    // cgroup reading here: GPU power adds to the CPU share.
    let pod = |name: &str| PodKey {
        namespace: "team".into(),
        name: name.into(),
    };
    let gpus = BTreeMap::from([(pod("alpha"), 300.0), (pod("gamma"), 70.0)]);

    write_usage(&root, a, 2_000_000);
    write_usage(&root, b, 1_000);
    attribution.sample(per_vcpu, 8.0, &gpus, Some(500.0));
    let text = metrics.encode();
    assert!(text.contains("pod=\"alpha\""), "{text}");
    assert!(text.contains("pod=\"beta\""), "{text}");
    assert!(
        text.contains("carbon_kube_attributed_pods{node=\"n\"} 3"),
        "{text}"
    );
    let watts = |name| {
        crate::testing::sample(
            &text,
            "carbon_kube_pod_power_watts",
            &["namespace=\"team\"", &format!("pod=\"{name}\"")],
        )
        .unwrap()
    };
    assert!(close(watts("gamma"), 70.0), "{text}");
    let alpha_cpu = watts("alpha") - 300.0;
    assert!(alpha_cpu > 0.0 && alpha_cpu <= 8.0 * per_vcpu, "{text}");

    std::fs::remove_dir_all(
        root.join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                b.replace('-', "_")
            )),
    )
    .unwrap();
    attribution.sample(per_vcpu, 8.0, &BTreeMap::new(), Some(500.0));
    let text = metrics.encode();
    assert!(text.contains("pod=\"alpha\""), "{text}");
    assert!(
        !text.contains("pod=\"beta\""),
        "a pod whose cgroup is gone loses its series: {text}"
    );
    assert!(
        text.contains("carbon_kube_attributed_pods{node=\"n\"} 1"),
        "{text}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
