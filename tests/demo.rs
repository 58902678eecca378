//! The one-command demo: a real control plane, four simulated nodes in four
//! grid zones, one agent per node with the default (relative) policy, and a
//! local Electricity Maps API replaying three real days of hourly intensity
//! (April 2022), one hour every few seconds.
//!
//! `cargo test --test demo -- --live` runs until Ctrl-C and prints the nodes'
//! taints as the grid changes. Without `--live` (as in the test suite) it
//! replays one day and checks that taints followed the trace.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::carbon_api::{CarbonApi, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, wait_for};

/// Real hourly intensity from Electricity Maps (ODbL), see tests/data/README.md.
const TRACE: &str = include_str!("data/demo-trace.csv");
const NODES: [(&str, &str, &str); 4] = [
    ("node-frankfurt", "DE", "eu-central-1"),
    ("node-paris", "FR", "eu-west-3"),
    ("node-madrid", "ES", "eu-south-2"),
    ("node-california", "US-CAL-CISO", "us-west-1"),
];
/// The agent's defaults: a taint needs this much more than the cleanest zone,
/// and a tainted zone keeps it down to this less the hysteresis.
const MIN_SPREAD: f64 = 50.0;
const HYSTERESIS: f64 = 20.0;

struct Hour {
    at: String,
    grams_per_kwh: BTreeMap<String, f64>,
}

fn trace() -> Vec<Hour> {
    let mut lines = TRACE.lines();
    let zones: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .skip(1)
        .map(str::to_string)
        .collect();
    lines
        .map(|line| {
            let mut fields = line.split(',');
            let at = fields.next().unwrap_or_default().to_string();
            let grams_per_kwh = zones
                .iter()
                .cloned()
                .zip(fields.map(|v| v.parse().unwrap_or(f64::NAN)))
                .collect();
            Hour { at, grams_per_kwh }
        })
        .collect()
}

fn replay(api: &CarbonApi, hour: &Hour) {
    for (zone, grams_per_kwh) in &hour.grams_per_kwh {
        api.set_intensity(zone, *grams_per_kwh);
    }
}

fn tainted(cp: &ControlPlane) -> BTreeMap<String, (bool, String)> {
    let nodes = cp.kubectl_json(&["get", "nodes"]);
    nodes["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|n| {
                    let name = n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let taint = n["spec"]["taints"].as_array().is_some_and(|t| {
                        t.iter()
                            .any(|t| t["key"] == "carbon-kube.io/high-intensity")
                    });
                    let class = n["metadata"]["labels"]["carbon-kube.io/intensity-class"]
                        .as_str()
                        .unwrap_or("-")
                        .to_string();
                    (name, (taint, class))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let live = std::env::args().any(|a| a == "--live");
    let seconds_per_hour: u64 = std::env::var("DEMO_SECONDS_PER_HOUR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(CarbonApi::start());
    let hours = trace();
    replay(&api, &hours[0]);

    eprintln!(
        "demo: starting the control plane (the first run builds it from the Kubernetes Go modules; that takes a while)"
    );
    let cp = ControlPlane::start();
    for (node, zone, region) in NODES {
        cp.create_node(
            node,
            &[
                ("carbon-kube.io/grid-zone", zone),
                ("topology.kubernetes.io/region", region),
            ],
        );
    }
    let args: Vec<String> = [
        "--providers=electricity-maps",
        "--poll-interval=1s",
        "--dwell=0s",
        "--lease-duration=5s",
        "--sample-interval=2s",
        "--max-tainted-fraction=0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!(
        "--electricity-maps-url={}",
        api.electricity_maps_url()
    )])
    .collect();
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|(node, _, _)| Agent::spawn(&cp, node, &args, &[("ELECTRICITY_MAPS_TOKEN", EM_TOKEN)]))
        .collect();
    wait_for("the first CarbonScores", Duration::from_secs(30), || {
        (cp.kubectl_ok(&["get", "carbonscores", "-o", "name"])
            .lines()
            .count()
            == NODES.len())
        .then_some(())
    });

    println!(
        "\ncarbon-kube demo — the dirtiest zones are tainted, at most half the nodes, where dirtier than the cleanest zone by {MIN_SPREAD} gCO2/kWh and 20 %"
    );
    println!("  kubeconfig: {}", cp.kubeconfig.display());
    println!(
        "  try:        kubectl --kubeconfig {} describe node node-frankfurt",
        cp.kubeconfig.display()
    );
    println!(
        "  metrics:    http://127.0.0.1:{}/metrics",
        agents[0].metrics_port
    );
    println!("  one simulated hour every {seconds_per_hour} s; Ctrl-C stops and cleans up\n");

    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(());
    });
    let steps = if live { usize::MAX } else { 24 };
    let mut seen_taint: BTreeMap<String, bool> = BTreeMap::new();
    let mut wrong = Vec::new();
    for hour in hours.iter().cycle().take(steps) {
        replay(&api, hour);
        if stop_rx
            .recv_timeout(Duration::from_secs(seconds_per_hour))
            .is_ok()
        {
            break;
        }
        let state = tainted(&cp);
        let cleanest = hour
            .grams_per_kwh
            .values()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let row: Vec<String> = NODES
            .iter()
            .map(|(node, zone, _)| {
                let g = hour.grams_per_kwh.get(*zone).copied().unwrap_or(f64::NAN);
                let (taint, class) = state.get(*node).cloned().unwrap_or((false, "-".into()));
                *seen_taint.entry(node.to_string()).or_default() |= taint;
                if taint && g - cleanest < MIN_SPREAD - HYSTERESIS {
                    wrong.push(format!(
                        "{node} tainted at {g} g/kWh, the cleanest zone at {cleanest} ({})",
                        hour.at
                    ));
                }
                format!(
                    "{zone:>11} {g:>5.0} {:<5} {}",
                    class,
                    if taint { "TAINTED" } else { "       " }
                )
            })
            .collect();
        println!("{}  {}", &hour.at[..16], row.join(" |"));
    }
    let failed = !live && {
        let followed = seen_taint.get("node-frankfurt") == Some(&true)
            && seen_taint.get("node-paris") == Some(&false);
        // One step of lag is expected (poll, then watch, then patch); more is a failure.
        !followed || wrong.len() > 2
    };
    drop(agents);
    drop(cp);
    if !live {
        println!(
            "\ndemo: {} passed, {} failed",
            usize::from(!failed),
            usize::from(failed)
        );
    }
    if failed {
        eprintln!("taints did not follow the trace: seen {seen_taint:?}, wrong {wrong:?}");
        std::process::exit(1);
    }
}
