//! A small cluster for end-to-end tests: a control plane, Ready nodes in
//! grid zones, one agent per node against the local carbon API, and the
//! questions tests ask about a node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use carbon_kube::node::{CLASS_LABEL, CONDITION_TYPE, TAINT_KEY};
use serde_json::Value;

use super::carbon_api::{CarbonApi, EM_TOKEN as TOKEN};
use super::cluster::{Agent, ControlPlane, wait_for};

pub struct Cluster {
    pub cp: ControlPlane,
    pub api: CarbonApi,
    pub agents: Vec<Agent>,
}

/// Agent flags for a fast test against the local carbon API.
pub fn agent_args(api: &CarbonApi, extra: &[&str]) -> Vec<String> {
    fast_agent_args(&api.electricity_maps_url(), extra)
}

/// Agent flags for a fast test: poll every 2 s, no dwell, 4 s lease; the
/// Electricity Maps API at `em_url`. A flag in `extra` replaces its default.
/// The absolute policy, so that a test sets a zone's taint by its intensity
/// alone; tests of the relative policy pass `--policy=relative`.
pub fn fast_agent_args(em_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--providers=electricity-maps",
        "--poll-interval=2s",
        "--dwell=0s",
        "--lease-duration=4s",
        "--sample-interval=1s",
        "--policy=absolute",
        "--threshold=300",
        "--hysteresis=20",
        "--max-tainted-fraction=1",
        "--provider-timeout=2s",
        "--breaker-cooldown=2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--electricity-maps-url={em_url}"));
    let flag = |arg: &str| arg.split('=').next().unwrap_or_default().to_string();
    args.retain(|a| !extra.iter().any(|e| flag(e) == flag(a)));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A kubeconfig for `node`'s agent under its own service account
/// `carbon-kube:agent-<node>` (cluster-admin: for tests of faults, not of
/// RBAC), reaching the apiserver at `server` (default: directly). Made once.
pub fn agent_kubeconfig(cp: &ControlPlane, node: &str, server: Option<&str>) -> PathBuf {
    let path = cp.dir.join(format!("kubeconfig-{node}"));
    if path.exists() {
        return path;
    }
    let sa = format!("agent-{node}");
    cp.kubectl_ok(&["-n", "carbon-kube", "create", "serviceaccount", &sa]);
    cp.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &sa,
        "--clusterrole=cluster-admin",
        &format!("--serviceaccount=carbon-kube:{sa}"),
    ]);
    let token = cp.kubectl_ok(&["-n", "carbon-kube", "create", "token", &sa, "--duration=6h"]);
    let admin = std::fs::read_to_string(&cp.kubeconfig).expect("admin kubeconfig");
    let ours: Vec<String> = admin
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match server {
                _ if trimmed.starts_with("token: ") => format!("    token: {}", token.trim()),
                Some(server) if trimmed.starts_with("server: ") => {
                    format!("    server: {server}")
                }
                _ => line.to_string(),
            }
        })
        .collect();
    std::fs::write(&path, ours.join("\n") + "\n").expect("agent kubeconfig");
    path
}

/// libfaketime's preload library (LD_PRELOAD), for agents on a skewed wall
/// clock; fails with how to install it.
pub fn libfaketime() -> &'static str {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "this test runs agents under libfaketime, which is missing: apt-get install faketime"
    );
    LIBFAKETIME
}

/// Nodes `(name, zone)`, one agent each.
pub async fn cluster(nodes: &[(&str, &str)], extra: &[&str]) -> Cluster {
    cluster_with_intensity(nodes, &[], extra).await
}

/// As [`cluster`], with zone intensities set before the agents start.
pub async fn cluster_with_intensity(
    nodes: &[(&str, &str)],
    intensity: &[(&str, f64)],
    extra: &[&str],
) -> Cluster {
    let api = CarbonApi::start().await;
    for (zone, grams) in intensity {
        api.set_intensity(zone, *grams);
    }
    let cp = tokio::task::block_in_place(ControlPlane::start);
    create_nodes(&cp, nodes);
    let em_url = api.electricity_maps_url();
    let agents = nodes
        .iter()
        .map(|(name, _)| start_agent(&cp, name, &em_url, extra, &[]))
        .collect();
    Cluster { cp, api, agents }
}

/// Creates nodes `(name, zone)`, each labelled with its grid zone.
pub fn create_nodes(cp: &ControlPlane, nodes: &[(&str, &str)]) {
    for (name, zone) in nodes {
        cp.create_node(name, &[("carbon-kube.io/grid-zone", zone)]);
    }
}

/// Starts `node`'s agent with [`fast_agent_args`] against the Electricity
/// Maps API at `em_url` (with its token), plus `extra` flags and `env`.
pub fn start_agent(
    cp: &ControlPlane,
    node: &str,
    em_url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let args = fast_agent_args(em_url, extra);
    let mut all_env = vec![("ELECTRICITY_MAPS_TOKEN", TOKEN)];
    all_env.extend_from_slice(env);
    Agent::spawn(cp, node, &args, &all_env)
}

/// The Node as JSON; `None` while it does not exist.
pub fn node_json(cp: &ControlPlane, node: &str) -> Option<Value> {
    let out = cp.kubectl(&["get", "node", node, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Our taints on a Node (there must never be more than one).
pub fn carbon_taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| t["key"] == TAINT_KEY)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the Node carries our taint (a missing Node does not).
pub fn has_taint(cp: &ControlPlane, node: &str) -> bool {
    node_json(cp, node).is_some_and(|n| !carbon_taints(&n).is_empty())
}

pub fn class_label(cp: &ControlPlane, node: &str) -> Option<String> {
    class_label_of(&cp.node(node))
}

pub fn class_label_of(node: &Value) -> Option<String> {
    node["metadata"]["labels"][CLASS_LABEL]
        .as_str()
        .map(str::to_string)
}

pub fn condition(cp: &ControlPlane, node: &str) -> Option<Value> {
    condition_of(&cp.node(node))
}

pub fn condition_of(node: &Value) -> Option<Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == CONDITION_TYPE)
        .cloned()
}

pub fn wait_tainted(cp: &ControlPlane, node: &str, want: bool) {
    wait_tainted_within(cp, node, want, Duration::from_secs(30));
}

/// Waits until the node's taint is as wanted; returns how long that took.
pub fn wait_tainted_within(
    cp: &ControlPlane,
    node: &str,
    want: bool,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    wait_for(&format!("{node} tainted={want}"), timeout, || {
        (has_taint(cp, node) == want).then_some(())
    });
    started.elapsed()
}

/// The status of a zone's CarbonScore (`zone` as its object name, e.g.
/// `de`); `Null` while it has none.
pub fn score_status(cp: &ControlPlane, zone: &str) -> Value {
    let out = cp.kubectl(&["get", "carbonscore", zone, "-o", "json"]);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .map(|v| v["status"].clone())
        .unwrap_or(Value::Null)
}

/// Learning steps the tuner recorded in a zone's CarbonScore; `None` before
/// its first write, a normal answer here.
pub fn tuner_steps(cp: &ControlPlane, zone: &str) -> Option<u64> {
    let state: Value = serde_json::from_str(score_status(cp, zone)["tunerState"].as_str()?).ok()?;
    state["steps"].as_u64()
}

/// The first running agent that says it leads.
pub fn leader(agents: &mut [Agent]) -> Option<usize> {
    leaders(agents, &[]).first().copied()
}

/// Running agents (not in `skip`) that say they lead.
pub fn leaders(agents: &mut [Agent], skip: &[usize]) -> Vec<usize> {
    (0..agents.len())
        .filter(|i| !skip.contains(i))
        .filter(|i| {
            agents[*i].is_running() && agents[*i].metric("carbon_kube_is_leader") == Some(1.0)
        })
        .collect()
}

/// The one agent (not in `skip`) that says it leads, if exactly one does.
pub fn one_leader(agents: &mut [Agent], skip: &[usize]) -> Option<usize> {
    match leaders(agents, skip)[..] {
        [only] => Some(only),
        _ => None,
    }
}

/// Taint transitions each agent has made, in the order of `agents`.
pub fn transitions(agents: &[Agent]) -> Vec<u64> {
    agents
        .iter()
        .map(|a| {
            a.metric("carbon_kube_taint_transitions_total")
                .expect("transitions metric") as u64
        })
        .collect()
}
