//! The workspace's layering, checked on the real dependency graph: the core
//! crate decides without Kubernetes, an async runtime or HTTP, and the
//! simulator builds on the core alone.

use std::process::Command;

fn normal_dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

const EDGE_CRATES: [&str; 7] = [
    "kube",
    "k8s-openapi",
    "tokio",
    "hyper",
    "reqwest",
    "rustls",
    "carbon-kube",
];

#[test]
fn core_has_no_kubernetes_runtime_or_http_dependency() {
    let deps = normal_dependencies("carbon-kube-core");
    assert!(deps.iter().any(|d| d == "carbon-kube-core"), "{deps:?}");
    for edge in EDGE_CRATES {
        assert!(
            !deps.iter().any(|d| d == edge),
            "core depends on {edge}: {deps:?}"
        );
    }
}

#[test]
fn simulator_builds_on_core_alone() {
    let deps = normal_dependencies("carbon-kube-sim");
    assert!(deps.iter().any(|d| d == "carbon-kube-core"), "{deps:?}");
    for edge in EDGE_CRATES {
        assert!(
            !deps.iter().any(|d| d == edge),
            "the simulator depends on {edge}: {deps:?}"
        );
    }
}

#[test]
fn the_agent_binary_has_no_simulator() {
    let deps = normal_dependencies("carbon-kube");
    assert!(deps.iter().any(|d| d == "carbon-kube-core"), "{deps:?}");
    assert!(!deps.iter().any(|d| d == "carbon-kube-sim"), "{deps:?}");
}
