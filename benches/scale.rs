//! API-server load at scale, reaction time and failover, against the real
//! test control plane, with a naive design measured in the same run as the peer.
//!
//! `cargo bench --bench scale` (env: SCALE_AGENTS=1000, SCALE_WINDOW_SECONDS=300,
//! SCALE_NAIVE_SECONDS=60).
//!
//! carbon-kube: N processes of the static release binary that ships (one per
//! simulated node, each its own client, connections, watches and Lease
//! handling), lease 15 s, leader poll every 30 s. The API server ends each
//! agent watch after 30 to 60 min (its own jittered default: the agent leaves
//! the length to it), so a 300 s steady window may or may not hold a watch
//! re-open; the control plane's own requests (its components' Leases) are
//! measured before the agents start and subtracted.
//! Naive peer: N clients that each do what an agent without a shared poller
//! and with client-go-style election would do: GET the Lease every 2 s
//! (client-go's follower retry period) and, every poll interval, fetch the
//! carbon API and GET their Node.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use support::carbon_api::{CarbonApi, EM, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, wait_for};
use support::deploy::build_static;
use support::procfs::cpu_seconds;

const ZONES: [&str; 4] = ["DE", "FR", "ES", "NL"];
const POLL_SECONDS: u64 = 30;

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Totals = BTreeMap<(String, String), f64>;

fn delta(before: &Totals, after: &Totals) -> Totals {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// `totals` less what the control plane did alone at `rate` (per second) over `window`.
fn less_baseline(totals: &Totals, rate: &Totals, window: Duration) -> Totals {
    totals
        .iter()
        .map(|(k, v)| {
            let own = rate.get(k).copied().unwrap_or(0.0) * window.as_secs_f64();
            (k.clone(), (v - own).max(0.0).round())
        })
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn report(title: &str, totals: &Totals, agents: usize, window: Duration) -> f64 {
    let minutes = window.as_secs_f64() / 60.0;
    let sum: f64 = totals.values().sum();
    println!(
        "\n{title}: {sum:.0} apiserver requests in {:.0} s",
        window.as_secs_f64()
    );
    for ((verb, resource), n) in totals {
        println!(
            "  {verb:<7} {resource:<14} {:>9.3} per agent per minute",
            n / agents as f64 / minutes
        );
    }
    let per = sum / agents as f64 / minutes;
    println!("  total           {per:>9.3} per agent per minute");
    per
}

fn watches(cp: &ControlPlane) -> BTreeMap<String, f64> {
    let text = cp.kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| {
        l.starts_with("apiserver_longrunning_requests{") && l.contains("verb=\"WATCH\"")
    }) {
        let resource = line
            .split("resource=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        // Only what the agents watch; the control plane's own controllers watch the rest.
        if !["carbonscores", "leases", "nodes"].contains(&resource) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(resource.to_string()).or_insert(0.0) += value;
    }
    out
}

async fn create_nodes(client: &Client, count: usize) -> Vec<(String, &'static str)> {
    let api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    for i in 0..count {
        let zone = ZONES[i % ZONES.len()];
        let name = format!("node-{i:04}");
        let resources = serde_json::json!({ "cpu": "4", "memory": "8Gi", "pods": "110" });
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "carbon-kube.io/grid-zone": zone } },
            "status": { "capacity": resources, "allocatable": resources,
                "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated" }] }
        }))
        .expect("node");
        api.create(&PostParams::default(), &node)
            .await
            .expect("create node");
        nodes.push((name, zone));
    }
    nodes
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Measures how long after the leader publishes a dirty zone each of its nodes shows the taint.
async fn reaction(client: &Client, api: &CarbonApi, zone_nodes: usize) -> Vec<Duration> {
    let tainted: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let published: Arc<Mutex<Option<Instant>>> = Arc::default();
    let nodes: Api<Node> = Api::all(client.clone());
    let seen = tainted.clone();
    let node_watch = tokio::spawn(async move {
        let mut events = watcher(nodes, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(node)) = events.next().await {
            let has = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "carbon-kube.io/high-intensity"));
            if has {
                seen.lock()
                    .expect("lock")
                    .entry(node.metadata.name.unwrap_or_default())
                    .or_insert_with(Instant::now);
            }
        }
    });
    let scores: Api<carbon_kube::crd::CarbonScore> = Api::all(client.clone());
    let mark = published.clone();
    let score_watch = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=de");
        let mut events = watcher(scores, config).applied_objects().boxed();
        while let Some(Ok(score)) = events.next().await {
            if score
                .status
                .as_ref()
                .is_some_and(|s| s.intensity_grams_per_kwh > 300.0 && s.taint_allowed)
            {
                mark.lock().expect("lock").get_or_insert_with(Instant::now);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.set_intensity("DE", 520.0);
    let deadline = Instant::now() + Duration::from_secs(POLL_SECONDS * 3);
    while tainted.lock().expect("lock").len() < zone_nodes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node_watch.abort();
    score_watch.abort();
    let Some(t0) = *published.lock().expect("lock") else {
        return Vec::new();
    };
    let mut latencies: Vec<Duration> = tainted
        .lock()
        .expect("lock")
        .values()
        .map(|t| t.saturating_duration_since(t0))
        .collect();
    latencies.sort();
    latencies
}

/// The naive design: every agent polls the Lease every 2 s and the carbon API itself.
async fn naive_peer(
    cp: &ControlPlane,
    api: &CarbonApi,
    nodes: &[(String, &'static str)],
    window: Duration,
) -> (Totals, usize) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for (name, zone) in nodes {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        let client = Client::try_from(config).expect("client");
        let leases: Api<Lease> = Api::namespaced(client.clone(), "carbon-kube");
        let node_api: Api<Node> = Api::all(client);
        let url = format!(
            "{}/carbon-intensity/latest?zone={zone}",
            api.electricity_maps_url()
        );
        let name = name.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lease_tick = tokio::time::interval(Duration::from_secs(2));
            let mut poll_tick = tokio::time::interval(Duration::from_secs(POLL_SECONDS));
            loop {
                tokio::select! {
                    _ = lease_tick.tick() => { let _ = leases.get_opt("carbon-kube-naive").await; }
                    _ = poll_tick.tick() => {
                        let _ = http.get(&url).header("auth-token", EM_TOKEN).send().await;
                        let _ = node_api.get(&name).await;
                    }
                    _ = stop.notified() => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cp.request_totals();
    let em_before = api.requests(EM);
    tokio::time::sleep(window).await;
    let after = cp.request_totals();
    let em = api.requests(EM) - em_before;
    stop.notify_waiters();
    for task in tasks {
        task.abort();
    }
    (delta(&before, &after), em)
}

/// Mean RSS and anonymous RSS (MiB) of the agents, leader apart.
fn agent_memory(agents: &[Agent], leader: Option<u32>) -> (f64, f64, usize) {
    let followers: Vec<u32> = agents
        .iter()
        .map(Agent::pid)
        .filter(|pid| Some(*pid) != leader)
        .collect();
    let mean = |field: &str| {
        followers.iter().map(|p| status_kib(*p, field)).sum::<f64>()
            / followers.len().max(1) as f64
            / 1024.0
    };
    (mean("VmRSS:"), mean("RssAnon:"), followers.len())
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let agents_wanted = env_or("SCALE_AGENTS", 1000) as usize;
    let window = Duration::from_secs(env_or("SCALE_WINDOW_SECONDS", 300));
    let naive_window = Duration::from_secs(env_or("SCALE_NAIVE_SECONDS", 60));
    let binary = build_static(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let api = runtime.block_on(CarbonApi::start());
    for zone in ZONES {
        api.set_intensity(zone, 100.0);
    }
    let cp = ControlPlane::start();
    let client = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config");
        Client::try_from(config).expect("client")
    });
    let nodes = runtime.block_on(create_nodes(&client, agents_wanted));

    // What the control plane does on its own (its components renew their Leases).
    let quiet = Duration::from_secs(30);
    let (before, cpu_before) = (cp.request_totals(), cpu_seconds(cp.pid()));
    std::thread::sleep(quiet);
    let own = delta(&before, &cp.request_totals());
    let own_rate: Totals = own
        .iter()
        .map(|(k, v)| (k.clone(), v / quiet.as_secs_f64()))
        .collect();
    let apiserver_idle_millicores =
        (cpu_seconds(cp.pid()) - cpu_before) / quiet.as_secs_f64() * 1000.0;
    let apiserver_rss_before = status_kib(cp.pid(), "VmRSS:") / 1024.0;

    let args: Vec<String> = [
        "--providers=electricity-maps",
        "--dwell=0s",
        "--lease-duration=15s",
        "--sample-interval=15s",
        "--max-tainted-fraction=0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--poll-interval={POLL_SECONDS}s"),
        format!("--electricity-maps-url={}", api.electricity_maps_url()),
    ])
    .collect();
    let started = Instant::now();
    let mut agents: Vec<Agent> = nodes
        .iter()
        .map(|(name, _)| {
            Agent::spawn_binary(
                &binary,
                &cp,
                name,
                &args,
                &[
                    ("ELECTRICITY_MAPS_TOKEN", EM_TOKEN),
                    ("CARBON_KUBE_LOG", "warn"),
                ],
            )
        })
        .collect();
    println!(
        "{} agents ({}) started in {:.1} s",
        agents.len(),
        binary.display(),
        started.elapsed().as_secs_f64()
    );
    wait_for(
        "CarbonScores for every zone",
        Duration::from_secs(120),
        || {
            (cp.kubectl_ok(&["get", "carbonscores", "-o", "name"])
                .lines()
                .count()
                == ZONES.len())
            .then_some(())
        },
    );
    // Let start-up lists and watches settle before measuring the steady state.
    std::thread::sleep(Duration::from_secs(30));

    let leases: Api<Lease> = Api::namespaced(client.clone(), "carbon-kube");
    let holder = |leases: &Api<Lease>| {
        runtime
            .block_on(leases.get("carbon-kube-leader"))
            .ok()
            .and_then(|l| l.spec?.holder_identity)
    };
    let leader_pid = holder(&leases).and_then(|h| {
        let node = h.trim_start_matches("carbon-kube-").to_string();
        agents.iter().find(|a| a.node == node).map(Agent::pid)
    });
    let before = cp.request_totals();
    let em_before = api.requests(EM);
    let apiserver_cpu = cpu_seconds(cp.pid());
    let leader_cpu = leader_pid.map(cpu_seconds).unwrap_or(0.0);
    let agents_cpu: f64 = agents.iter().map(|a| cpu_seconds(a.pid())).sum();
    std::thread::sleep(window);
    let after = cp.request_totals();
    let em_ours = api.requests(EM) - em_before;
    let apiserver_millicores =
        (cpu_seconds(cp.pid()) - apiserver_cpu) / window.as_secs_f64() * 1000.0;
    let leader_seconds = leader_pid.map(cpu_seconds).unwrap_or(0.0) - leader_cpu;
    let agents_seconds = agents.iter().map(|a| cpu_seconds(a.pid())).sum::<f64>() - agents_cpu;
    let ours = less_baseline(&delta(&before, &after), &own_rate, window);
    let held = watches(&cp);
    let per_agent_ours = report(
        "carbon-kube (steady state, the control plane's own requests subtracted)",
        &ours,
        agents.len(),
        window,
    );
    let polls = window.as_secs_f64() / POLL_SECONDS as f64;
    let count = |pairs: &[(&str, &str)]| {
        ours.iter()
            .filter(|((v, r), _)| pairs.contains(&(v.as_str(), r.as_str())))
            .map(|(_, n)| n)
            .sum::<f64>()
    };
    let leaders = count(&[
        ("LIST", "nodes"),
        ("LIST", "carbonscores"),
        ("APPLY", "carbonscores"),
        ("PUT", "leases"),
    ]);
    let reopens = count(&[
        ("WATCH", "nodes"),
        ("WATCH", "carbonscores"),
        ("WATCH", "leases"),
    ]);
    // The control plane's own informers re-open their watches every few minutes
    // too, on other resources: only these three are the agents'.
    let other: Vec<_> = ours
        .iter()
        .filter(|((v, r), _)| {
            matches!(r.as_str(), "nodes" | "carbonscores" | "leases")
                && !matches!(v.as_str(), "LIST" | "APPLY" | "PUT" | "WATCH")
        })
        .collect();
    let minutes = window.as_secs_f64() / 60.0;
    println!(
        "  the leader's polls and Lease renewals: {:.1} per minute ({:.1} CarbonScore applies per poll, {} zones)",
        leaders / minutes,
        count(&[("APPLY", "carbonscores")]) / polls,
        ZONES.len()
    );
    println!(
        "  watch re-opens (every agent's 3 watches, each after 30 to 60 min): {:.3} per agent per minute",
        reopens / agents.len() as f64 / minutes
    );
    println!(
        "  any other request on nodes, CarbonScores or Leases (a follower polling or writing): {other:?}"
    );
    println!(
        "  carbon API requests per poll interval: {:.1}",
        em_ours as f64 / polls
    );
    println!("  watches held (all clients, incl. the control plane's own): {held:?}");
    println!(
        "  apiserver+etcd process: {apiserver_millicores:.0} millicores (alone: {apiserver_idle_millicores:.0}), RSS {:.0} MiB (before the agents: {apiserver_rss_before:.0} MiB)",
        status_kib(cp.pid(), "VmRSS:") / 1024.0
    );
    println!(
        "  the leader: {:.3} CPU-seconds per poll interval ({:.1} millicores), RSS {:.1} MiB, of which anonymous {:.1} MiB",
        leader_seconds / polls,
        leader_seconds / window.as_secs_f64() * 1000.0,
        leader_pid.map_or(0.0, |p| status_kib(p, "VmRSS:")) / 1024.0,
        leader_pid.map_or(0.0, |p| status_kib(p, "RssAnon:")) / 1024.0,
    );
    let (rss, anon, followers) = agent_memory(&agents, leader_pid);
    println!(
        "  a follower (mean of {followers}): {:.2} millicores, RSS {rss:.1} MiB, of which anonymous {anon:.1} MiB",
        (agents_seconds - leader_seconds) / followers.max(1) as f64 / window.as_secs_f64() * 1000.0
    );

    let zone_nodes = nodes.iter().filter(|(_, z)| *z == "DE").count();
    let latencies = runtime.block_on(reaction(&client, &api, zone_nodes));
    if latencies.len() == zone_nodes && !latencies.is_empty() {
        println!(
            "\nreaction (CarbonScore published → taint visible, {} nodes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        );
    } else {
        println!(
            "\nreaction: only {} of {zone_nodes} nodes tainted in time",
            latencies.len()
        );
    }

    if let Some(first) = holder(&leases) {
        let node = first.trim_start_matches("carbon-kube-").to_string();
        if let Some(agent) = agents.iter_mut().find(|a| a.node == node) {
            let t0 = Instant::now();
            agent.kill();
            let next = wait_for("a new leader", Duration::from_secs(60), || {
                holder(&leases).filter(|h| *h != first)
            });
            println!(
                "failover after SIGKILL of the leader: {:.1} s (lease 15 s) → {next}",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    drop(agents);

    let (naive, em_naive) = runtime.block_on(naive_peer(&cp, &api, &nodes, naive_window));
    let naive = less_baseline(&naive, &own_rate, naive_window);
    let per_agent_naive = report(
        "naive peer (Lease GET every 2 s, own carbon API poll)",
        &naive,
        nodes.len(),
        naive_window,
    );
    println!(
        "  carbon API requests per poll interval: {:.1}",
        em_naive as f64 / (naive_window.as_secs_f64() / POLL_SECONDS as f64)
    );
    println!(
        "\nratio naive / carbon-kube: apiserver requests {:.0}×, carbon API calls per poll {:.0}×",
        per_agent_naive / per_agent_ours.max(f64::MIN_POSITIVE),
        (em_naive as f64 / naive_window.as_secs_f64())
            / (em_ours as f64 / window.as_secs_f64()).max(f64::MIN_POSITIVE)
    );
}
