//! A small cluster for end-to-end tests: a control plane, Ready nodes in
//! grid zones, one agent per node against the local carbon API, and the
//! questions tests ask about a node.

use std::time::Duration;

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
    for (name, zone) in nodes {
        cp.create_node(name, &[("carbon-kube.io/grid-zone", zone)]);
    }
    let args = agent_args(&api, extra);
    let agents = nodes
        .iter()
        .map(|(name, _)| Agent::spawn(&cp, name, &args, &[("ELECTRICITY_MAPS_TOKEN", TOKEN)]))
        .collect();
    Cluster { cp, api, agents }
}

pub fn has_taint(cp: &ControlPlane, node: &str) -> bool {
    cp.node(node)["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "carbon-kube.io/high-intensity")
    })
}

pub fn class_label(cp: &ControlPlane, node: &str) -> Option<String> {
    cp.node(node)["metadata"]["labels"]["carbon-kube.io/intensity-class"]
        .as_str()
        .map(str::to_string)
}

pub fn condition(cp: &ControlPlane, node: &str) -> Option<serde_json::Value> {
    cp.node(node)["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "CarbonIntensityHigh")
        .cloned()
}

pub fn wait_tainted(cp: &ControlPlane, node: &str, want: bool) {
    wait_for(
        &format!("{node} tainted={want}"),
        Duration::from_secs(30),
        || (has_taint(cp, node) == want).then_some(()),
    );
}

pub fn leader(agents: &mut [Agent]) -> Option<usize> {
    agents
        .iter_mut()
        .position(|a| a.is_running() && a.metric("carbon_kube_is_leader") == Some(1.0))
}
