//! The workspace's layering, checked on the real dependency graph: the core
//! crate decides without Kubernetes, an async runtime or HTTP, and the
//! simulator builds on the core alone.

use std::collections::{BTreeMap, BTreeSet};
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

/// Each crate's top-level modules and the ones their non-test code names
/// through `crate::`.
fn module_graph(src: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let top = relative
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            let is_test = relative.ends_with("tests.rs") || relative.contains("tests/");
            if !relative.ends_with(".rs")
                || is_test
                || ["lib", "main", "testing"].contains(&top.as_str())
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let deps = graph.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if its dependencies lead back to it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut paths = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = paths.pop() {
        for next in graph.get(path.last().unwrap()).into_iter().flatten() {
            if next == from {
                return Some(path.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                paths.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in ["src", "crates/core/src", "crates/simulator/src"] {
        let graph = module_graph(&root.join(src));
        assert!(graph.len() > 5, "{src}: {graph:?}");
        for module in graph.keys() {
            assert_eq!(cycle_from(&graph, module), None, "{src}: import cycle");
        }
    }
}

#[test]
fn the_cycle_check_sees_a_planted_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("cli", &["config"][..]),
        ("config", &["simulator"]),
        ("simulator", &["cli"]),
        ("zones", &[]),
    ]
    .into_iter()
    .map(|(m, deps)| (m.to_string(), deps.iter().map(|d| d.to_string()).collect()))
    .collect();
    assert_eq!(
        cycle_from(&graph, "cli"),
        Some(vec!["cli".into(), "config".into(), "simulator".into()])
    );
    assert_eq!(cycle_from(&graph, "zones"), None);
}
