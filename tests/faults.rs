//! Fault suite: the real control plane, agent processes and the local carbon
//! API, with the faults production brings. Carbon is an optimisation, so a
//! fault may cost freshness but must never flap taints, leave a node tainted on
//! data nobody can vouch for, or let two leaders write at once.
//!
//! Each agent runs under its own service account, and the apiserver keeps an
//! audit log of Lease, CarbonScore and Node writes, so a test can tell which
//! agent wrote what and when (the field manager is the same for every agent).
//!
//! Every test prints the recovery times it measured (`--nocapture` shows them).

mod support;
// The soak's audit parsing and single-writer checker (its unit tests run here too).
#[path = "soak/history.rs"]
#[allow(dead_code)]
mod history;
#[path = "soak/invariants.rs"]
#[allow(dead_code)]
mod invariants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use history::{AGENT_USER_PREFIX, AUDIT_POLICY, IDENTITY_PREFIX, LEASE, Write, parse_audit};
use jiff::Timestamp;
use serde_json::Value;
use support::api_proxy::ApiProxy;
use support::carbon_api::{CarbonApi, EM, EM_LATEST, Fault, NOAA};
use support::cluster::{Agent, ControlPlane, path_str, temp_dir, wait_for};
use support::scenario::{
    agent_kubeconfig, carbon_taints, class_label_of, condition_of, create_nodes, has_taint,
    leaders, libfaketime, node_json, one_leader, score_status, start_agent, transitions,
    tuner_steps, wait_tainted_within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::block_in_place;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NAMESPACE: &str = "carbon-kube";
// ---------------------------------------------------------------- harness --

// Fields drop in order: agents first (they print their logs on a panic),
// then the control plane (whose directory holds those logs).
struct Cluster {
    agents: Vec<Agent>,
    cp: ControlPlane,
    api: CarbonApi,
    audit_dir: PathBuf,
    /// The EM base URL agents are given (the carbon API, or a front to it).
    em_url: String,
    extra: Vec<String>,
    /// Where agents reach the apiserver, when not directly (see [`ApiProxy`]).
    server: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.audit_dir);
    }
}

/// A control plane with an audit log, nodes `(name, zone)`, no agents yet.
async fn cluster(nodes: &[(&str, &str)], extra: &[&str]) -> Cluster {
    let api = CarbonApi::start().await;
    let em_url = api.electricity_maps_url();
    cluster_with(api, em_url, nodes, extra)
}

fn cluster_with(api: CarbonApi, em_url: String, nodes: &[(&str, &str)], extra: &[&str]) -> Cluster {
    block_in_place(|| {
        let audit_dir = temp_dir("ck-audit");
        let policy = audit_dir.join("policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).expect("audit policy");
        let run_args = vec![
            format!("--apiserver-arg=--audit-policy-file={}", path_str(&policy)),
            format!(
                "--apiserver-arg=--audit-log-path={}",
                path_str(&audit_dir.join("audit.log"))
            ),
        ];
        let cp = ControlPlane::start_with(&run_args);
        create_nodes(&cp, nodes);
        Cluster {
            cp,
            api,
            agents: Vec::new(),
            audit_dir,
            em_url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            server: None,
        }
    })
}

impl Cluster {
    fn audit_log(&self) -> PathBuf {
        self.audit_dir.join("audit.log")
    }

    /// Starts `node`'s agent, under its own identity, with the cluster's
    /// flags plus `extra`, and `env`.
    fn start_agent(&self, node: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut flags: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        flags.extend_from_slice(extra);
        let kubeconfig = agent_kubeconfig(&self.cp, node, self.server.as_deref());
        let mut all_env = vec![("KUBECONFIG", path_str(&kubeconfig))];
        all_env.extend_from_slice(env);
        start_agent(&self.cp, node, &self.em_url, &flags, &all_env)
    }

    /// Starts agents on `nodes`, waits until those in `tainted` carry the
    /// taint and one agent leads; returns the leader.
    fn start_settled(&mut self, nodes: &[&str], tainted: &[&str]) -> usize {
        self.spawn(nodes);
        for node in tainted {
            wait_tainted_within(&self.cp, node, true, Duration::from_secs(60));
        }
        wait_for("a leader", Duration::from_secs(30), || {
            one_leader(&mut self.agents, &[])
        })
    }

    fn spawn(&mut self, nodes: &[&str]) {
        for node in nodes {
            let agent = self.start_agent(node, &[], &[]);
            self.agents.push(agent);
        }
    }

    /// Agents started from now on reach the apiserver through a proxy the
    /// test can cut.
    fn behind_proxy(&mut self) -> ApiProxy {
        let upstream: std::net::SocketAddr = self
            .cp
            .server
            .trim_start_matches("https://")
            .parse()
            .expect("apiserver address");
        let proxy = ApiProxy::start(upstream);
        self.server = Some(format!("https://{}", proxy.addr));
        proxy
    }

    fn index(&self, node: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent for {node}"))
    }
}

fn timestamp(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

fn fetched_at(cp: &ControlPlane, zone: &str) -> Option<Timestamp> {
    timestamp(&score_status(cp, zone)["fetchedAt"])
}

/// Waits until the zone's CarbonScore was fetched after `after`; returns how long that took.
fn wait_fetched_after(
    cp: &ControlPlane,
    zone: &str,
    after: Timestamp,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("the {zone} CarbonScore fetched after {after}"),
        timeout,
        || fetched_at(cp, zone).filter(|at| *at > after).map(|_| ()),
    );
    started.elapsed()
}

fn lease(cp: &ControlPlane) -> Value {
    cp.kubectl_json(&["-n", NAMESPACE, "get", "lease", LEASE])
}

fn counter(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metric_with(name, labels).unwrap_or(0.0)
}

// ------------------------------------------------------------------ audit --

fn audit_writes(log: &Path) -> Vec<Write> {
    parse_audit(&std::fs::read_to_string(log).unwrap_or_default())
}

/// Checks that every CarbonScore write came from the agent that held the
/// Lease when the apiserver received it (see [`invariants::single_writer`]).
/// Returns the writers in order as runs `(agent, writes)`.
fn assert_single_writer(log: &Path) -> Vec<(String, usize)> {
    let writes = audit_writes(log);
    let outcome = invariants::single_writer(&writes);
    assert!(outcome.checks > 0, "no CarbonScore writes in the audit log");
    assert!(
        outcome.violations.is_empty(),
        "CarbonScores written without the Lease: {:#?}",
        outcome.violations
    );
    let mut scores: Vec<&Write> = writes
        .iter()
        .filter(|w| w.resource == "carbonscores" && w.ok())
        .collect();
    scores.sort_by_key(|w| w.received);
    let mut runs: Vec<(String, usize)> = Vec::new();
    for agent in scores.iter().filter_map(|w| w.agent.as_deref()) {
        match runs.last_mut() {
            Some((last, n)) if last == agent => *n += 1,
            _ => runs.push((agent.to_string(), 1)),
        }
    }
    runs
}

/// Successful writes by `agent` to `resource` received after `after`.
fn writes_after(log: &Path, agent: &str, resource: &str, after: Timestamp) -> Vec<Write> {
    audit_writes(log)
        .into_iter()
        .filter(|w| {
            w.agent.as_deref() == Some(agent)
                && w.resource == resource
                && w.ok()
                && w.received > after
        })
        .collect()
}

// -------------------------------------------------- API server unavailable --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_frozen_for_30s_agents_reconnect_without_flapping() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("a1", "DE"), ("a2", "DE"), ("b1", "FR")], &[]).await;
    c.api.set_intensity("DE", 520.0);
    c.api.set_intensity("FR", 56.0);
    block_in_place(|| {
        c.start_settled(&["a1", "a2", "b1"], &["a1", "a2"]);
        let cp = &c.cp;
        wait_for("b1 labelled green", Duration::from_secs(30), || {
            node_json(cp, "b1")
                .and_then(|n| class_label_of(&n))
                .filter(|l| l == "green")
        });
        let taint_added: Vec<Value> = ["a1", "a2"]
            .iter()
            .map(|n| carbon_taints(&c.cp.node(n))[0]["timeAdded"].clone())
            .collect();
        let before = transitions(&c.agents);

        c.cp.freeze();
        let frozen = Instant::now();
        // The agents cannot reach the apiserver; what they believe stays put.
        let mut samples = 0;
        let mut leader_samples = BTreeMap::<String, usize>::new();
        while frozen.elapsed() < Duration::from_secs(30) {
            for agent in &c.agents {
                let want = if agent.node == "b1" { 0.0 } else { 1.0 };
                assert_eq!(
                    agent.metric("carbon_kube_node_tainted"),
                    Some(want),
                    "{} changed its mind while the apiserver was frozen",
                    agent.node
                );
                if agent.metric("carbon_kube_is_leader") == Some(1.0) {
                    *leader_samples.entry(agent.node.clone()).or_default() += 1;
                }
            }
            samples += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        c.cp.thaw();
        let thawed = Instant::now();
        // A leader that cannot renew steps down by its renew deadline (2.7 s
        // of a 4 s lease): it must not believe it leads past expiry.
        for (node, n) in &leader_samples {
            assert!(
                *n <= 5,
                "{node} said it led for {n} of {samples} one-second samples while the apiserver was frozen"
            );
        }
        let thawed_at = Timestamp::now();

        let api_back = {
            wait_for("the apiserver answers", Duration::from_secs(60), || {
                c.cp.kubectl(&["get", "--raw", "/readyz"])
                    .status
                    .success()
                    .then_some(())
            });
            thawed.elapsed()
        };
        wait_fetched_after(&c.cp, "de", thawed_at, Duration::from_secs(60));
        let scores_back = thawed.elapsed();
        let leader = wait_for("exactly one leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[])
        });
        let leader_back = thawed.elapsed();

        for (i, node) in ["a1", "a2"].iter().enumerate() {
            let taints = carbon_taints(&c.cp.node(node));
            assert_eq!(taints.len(), 1, "{node}: {taints:?}");
            assert_eq!(
                taints[0]["timeAdded"], taint_added[i],
                "{node}'s taint was removed and added again"
            );
        }
        assert_eq!(transitions(&c.agents), before, "a taint flapped");

        // The watches reconnected: changes made after the thaw reach every agent.
        let changed = Instant::now();
        c.api.set_intensity("FR", 640.0);
        c.api.set_intensity("DE", 120.0);
        wait_tainted_within(&c.cp, "b1", true, Duration::from_secs(60));
        wait_tainted_within(&c.cp, "a1", false, Duration::from_secs(60));
        wait_tainted_within(&c.cp, "a2", false, Duration::from_secs(60));
        let propagated = changed.elapsed();

        let runs = assert_single_writer(&c.audit_log());
        println!(
            "apiserver frozen 30 s: {samples} samples, no agent changed its taint decision; \
             agents reporting is_leader during the freeze: {leader_samples:?}\n  \
             apiserver ready again {api_back:?} after SIGCONT; CarbonScores written again after {scores_back:?}; \
             single leader ({}) after {leader_back:?}\n  \
             an intensity change after the thaw reached all three nodes in {propagated:?}\n  \
             CarbonScore writers in order: {runs:?}",
            c.agents[leader].node
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_unreachable_for_30s_agents_reconnect_without_flapping() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("u1", "DE"), ("u2", "DE"), ("v1", "FR")], &[]).await;
    c.api.set_intensity("DE", 520.0);
    c.api.set_intensity("FR", 56.0);
    block_in_place(|| {
        let proxy = c.behind_proxy();
        c.start_settled(&["u1", "u2", "v1"], &["u1", "u2"]);
        let taint_added: Vec<Value> = ["u1", "u2"]
            .iter()
            .map(|n| carbon_taints(&c.cp.node(n))[0]["timeAdded"].clone())
            .collect();
        let before = transitions(&c.agents);

        proxy.down();
        let cut = Instant::now();
        let cut_at = Timestamp::now();
        // The agents cannot reach the apiserver; the test can, and watches
        // the taints and the Lease throughout.
        let mut stepped_down = None;
        while cut.elapsed() < Duration::from_secs(30) {
            for (i, node) in ["u1", "u2"].iter().enumerate() {
                let taints = carbon_taints(&c.cp.node(node));
                assert_eq!(taints.len(), 1, "{node} lost its taint during the outage");
                assert_eq!(taints[0]["timeAdded"], taint_added[i]);
            }
            assert!(!has_taint(&c.cp, "v1"));
            if stepped_down.is_none() && leaders(&mut c.agents, &[]).is_empty() {
                stepped_down = Some(cut.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let stepped_down = stepped_down.expect("the leader stepped down while cut off");
        assert!(
            fetched_at(&c.cp, "de").is_some_and(|at| at < cut_at),
            "nobody can have written during the outage"
        );
        proxy.up();
        let restored = Instant::now();
        let restored_at = Timestamp::now();
        wait_fetched_after(&c.cp, "de", restored_at, Duration::from_secs(90));
        let scores_back = restored.elapsed();
        let leader = wait_for("exactly one leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[])
        });
        assert_eq!(transitions(&c.agents), before, "a taint flapped");
        let changed = Instant::now();
        c.api.set_intensity("FR", 640.0);
        c.api.set_intensity("DE", 120.0);
        for (node, want) in [("v1", true), ("u1", false), ("u2", false)] {
            wait_tainted_within(&c.cp, node, want, Duration::from_secs(90));
        }
        let propagated = changed.elapsed();
        let runs = assert_single_writer(&c.audit_log());
        println!(
            "apiserver unreachable 30 s (connections reset, then refused): taints stayed on throughout; \
             the leader stepped down after {stepped_down:?}\n  \
             reachable again: CarbonScores written after {scores_back:?}, leader {}; \
             an intensity change reached all three nodes in {propagated:?}\n  \
             CarbonScore writers in order: {runs:?}",
            c.agents[leader].node
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_while_the_api_server_is_unreachable_waits_for_it() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("w1", "DE")], &[]).await;
    c.api.set_intensity("DE", 520.0);
    block_in_place(|| {
        let proxy = c.behind_proxy();
        proxy.down();
        c.spawn(&["w1"]);
        // Long enough for several tries with backoff (1, 2, 4 s…).
        std::thread::sleep(Duration::from_secs(10));
        let agent = &mut c.agents[0];
        let output = agent.output();
        assert!(agent.is_running(), "exited while cut off:\n{output}");
        assert!(
            output.contains("listing CarbonScores: waiting for the API server"),
            "{output}"
        );
        proxy.up();
        wait_tainted_within(&c.cp, "w1", true, Duration::from_secs(60));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crd_an_agent_exits_at_once_saying_how_to_install_it() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("x1", "DE")], &[]).await;
    block_in_place(|| {
        c.cp.kubectl_ok(&["delete", "crd", "carbonscores.carbon-kube.io"]);
        wait_for("the CRD gone", Duration::from_secs(30), || {
            (!c.cp
                .kubectl(&["get", "crd", "carbonscores.carbon-kube.io"])
                .status
                .success())
            .then_some(())
        });
        c.spawn(&["x1"]);
        let status = c.agents[0].wait_exit(Duration::from_secs(30));
        let output = c.agents[0].output();
        assert!(!status.success(), "{output}");
        assert!(
            output.contains("the CarbonScore CRD is not installed")
                && output.contains("carbon-kube crd | kubectl apply -f -"),
            "{output}"
        );
    });
}

// ------------------------------------------------------------- leadership --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_by_exactly_one_writer() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("k1", "DE"), ("k2", "DE"), ("k3", "PL")], &[]).await;
    c.api.set_intensity("DE", 450.0);
    c.api.set_intensity("PL", 700.0);
    block_in_place(|| {
        let nodes = ["k1", "k2", "k3"];
        let first = c.start_settled(&nodes, &nodes);
        let before = transitions(&c.agents);
        let lease_before = lease(&c.cp);

        c.agents[first].kill();
        let killed = Instant::now();
        let killed_at = Timestamp::now();
        let mut most_at_once = 0;
        let second = wait_for("a new leader", Duration::from_secs(30), || {
            let now = leaders(&mut c.agents, &[first]);
            most_at_once = most_at_once.max(now.len());
            match now[..] {
                [only] => Some(only),
                _ => None,
            }
        });
        let takeover = killed.elapsed();
        wait_fetched_after(&c.cp, "pl", killed_at, Duration::from_secs(30));
        let scores_back = killed.elapsed();
        // Watch for a second leader a while longer.
        let watch_until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < watch_until {
            let now = leaders(&mut c.agents, &[first]);
            most_at_once = most_at_once.max(now.len());
            assert_eq!(now, [second], "leaders changed after the takeover");
            std::thread::sleep(Duration::from_millis(200));
        }

        assert_ne!(first, second);
        assert!(
            takeover < Duration::from_secs(4 + 1 + 4),
            "takeover took {takeover:?} with a 4 s lease"
        );
        let lease_after = lease(&c.cp);
        assert_eq!(
            lease_after["spec"]["holderIdentity"],
            format!("{IDENTITY_PREFIX}{}", c.agents[second].node)
        );
        assert_eq!(
            lease_after["spec"]["leaseTransitions"].as_i64(),
            lease_before["spec"]["leaseTransitions"]
                .as_i64()
                .map(|t| t + 1),
            "exactly one change of holder"
        );
        assert_no_flap(&c.agents, &before, first);
        let runs = assert_single_writer(&c.audit_log());
        assert_eq!(
            runs.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            [
                c.agents[first].node.as_str(),
                c.agents[second].node.as_str()
            ],
            "CarbonScore writers"
        );
        println!(
            "leader SIGKILLed: new leader after {takeover:?} (lease 4 s), CarbonScores written again after {scores_back:?}; \
             at most {most_at_once} agent(s) reported leading at once; writers in order: {runs:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_stops_leading_when_it_wakes_past_expiry() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("f1", "DE"), ("f2", "DE"), ("f3", "PL")], &[]).await;
    c.api.set_intensity("DE", 450.0);
    c.api.set_intensity("PL", 700.0);
    block_in_place(|| {
        let nodes = ["f1", "f2", "f3"];
        let first = c.start_settled(&nodes, &nodes);
        let frozen_node = c.agents[first].node.clone();
        let before = transitions(&c.agents);
        // Freeze it between two renewals: just after one lands, as a long GC
        // pause or a throttled cgroup would.
        let renewed = lease(&c.cp)["spec"]["renewTime"].clone();
        wait_for("a renewal", Duration::from_secs(10), || {
            (lease(&c.cp)["spec"]["renewTime"] != renewed).then_some(())
        });
        c.agents[first].freeze();
        let frozen = Instant::now();

        let second = wait_for("a new leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[first])
        });
        let takeover = frozen.elapsed();
        // Well past expiry: three lease durations.
        while frozen.elapsed() < Duration::from_secs(12) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let resumed_at = Timestamp::now();
        c.agents[first].thaw();
        let resumed = Instant::now();
        // It says follower at once (its metrics server may answer before
        // its elector has run, hence the poll).
        let mut answers = Vec::new();
        let stepped_down = wait_for(
            "the thawed agent says follower",
            Duration::from_secs(10),
            || {
                let answer = c.agents[first].metric("carbon_kube_is_leader");
                answers.extend(answer);
                (answer == Some(0.0)).then(|| resumed.elapsed())
            },
        );
        // It stays a follower, and the new leader keeps leading.
        let watch_until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < watch_until {
            assert_eq!(c.agents[first].metric("carbon_kube_is_leader"), Some(0.0));
            assert_eq!(leaders(&mut c.agents, &[]), [second]);
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            stepped_down < Duration::from_secs(2),
            "the thawed leader still said it leads {stepped_down:?} after SIGCONT"
        );
        assert_eq!(
            lease(&c.cp)["spec"]["holderIdentity"],
            format!("{IDENTITY_PREFIX}{}", c.agents[second].node)
        );
        let late = writes_after(&c.audit_log(), &frozen_node, "carbonscores", resumed_at);
        assert!(late.is_empty(), "the thawed ex-leader wrote: {late:?}");
        assert_no_flap(&c.agents, &before, usize::MAX);
        let runs = assert_single_writer(&c.audit_log());
        let output = c.agents[first].output();
        assert!(
            output.contains("leadership changed") && output.contains("leader=false"),
            "the thawed agent logs that it stepped down:\n{}",
            support::cluster::tail(&output, 20)
        );
        println!(
            "leader SIGSTOPped: new leader after {takeover:?} (lease 4 s); thawed after 12 s, \
             it said is_leader=0 {stepped_down:?} after SIGCONT (answers {answers:?}); \
             no CarbonScore write from it after SIGCONT; writers in order: {runs:?}"
        );
    });
}

/// Followers measure a Lease's age on their own monotonic clock from when they
/// saw it change, never from the renewTime another node wrote: run agents with
/// wall clocks 20 minutes behind and ahead (libfaketime) and show that the
/// election neither churns nor stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_between_agents_does_not_disturb_the_election() {
    let _serial = SERIAL.lock().await;
    let preload = libfaketime();
    let mut c = cluster(&[("s1", "DE"), ("s2", "DE"), ("s3", "DE")], &[]).await;
    c.api.set_intensity("DE", 480.0);
    let skewed = |offset: &'static str| {
        vec![
            ("LD_PRELOAD", preload),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    };
    block_in_place(|| {
        let mut report = Vec::new();
        // Phase 1: the leader's clock is 20 min behind. A follower that judged
        // the Lease by its renewTime would think it expired 20 minutes ago and
        // steal it at once.
        let behind = c.start_agent("s1", &[], &skewed("-20m"));
        c.agents.push(behind);
        wait_for("s1 leads", Duration::from_secs(30), || {
            (one_leader(&mut c.agents, &[]) == Some(0)).then_some(())
        });
        let real = c.start_agent("s2", &[], &[]);
        c.agents.push(real);
        let ahead = c.start_agent("s3", &[], &skewed("+20m"));
        c.agents.push(ahead);
        for node in ["s1", "s2", "s3"] {
            wait_tainted_within(&c.cp, node, true, Duration::from_secs(60));
        }
        let renew_skew = {
            let renew = timestamp(&lease(&c.cp)["spec"]["renewTime"]).expect("renewTime");
            Timestamp::now().duration_since(renew)
        };
        assert!(
            renew_skew > jiff::SignedDuration::from_mins(19),
            "the leader's renewTime should be ~20 min behind, is {renew_skew:?}: is libfaketime working?"
        );
        report.push(format!(
            "leader s1 (clock -20 min) writes renewTime {:.1} min in the past",
            renew_skew.as_secs_f64() / 60.0
        ));
        steady_leadership(&mut c, "s1", &mut report);
        let next = failover(&mut c, "s1", &mut report);

        // Phase 2: the leader's clock is 20 min ahead. A follower that judged
        // the Lease by its renewTime would wait 20 minutes after its death.
        if c.agents[next].node == "s2" {
            // SIGTERM releases the Lease: s3 (ahead) takes over at once.
            c.agents[next].terminate();
            wait_for("s3 leads", Duration::from_secs(30), || {
                (one_leader(&mut c.agents, &[0, next]) == Some(2)).then_some(())
            });
            let s2 = c.start_agent("s2", &[], &[]);
            c.agents[next] = s2;
        }
        let s1 = c.start_agent("s1", &[], &skewed("-20m"));
        c.agents[0] = s1;
        let renew_skew = {
            let renew = timestamp(&lease(&c.cp)["spec"]["renewTime"]).expect("renewTime");
            renew.duration_since(Timestamp::now())
        };
        assert!(
            renew_skew > jiff::SignedDuration::from_mins(19),
            "s3's renewTime should be ~20 min ahead, is {renew_skew:?}"
        );
        report.push(format!(
            "leader s3 (clock +20 min) writes renewTime {:.1} min in the future",
            renew_skew.as_secs_f64() / 60.0
        ));
        steady_leadership(&mut c, "s3", &mut report);
        failover(&mut c, "s3", &mut report);

        for node in ["s1", "s2", "s3"] {
            assert!(has_taint(&c.cp, node), "{node} lost its taint");
        }
        let runs = assert_single_writer(&c.audit_log());
        report.push(format!("CarbonScore writers in order: {runs:?}"));
        println!(
            "clock skew ±20 min (libfaketime):\n  {}",
            report.join("\n  ")
        );
    });
}

/// The Lease keeps its holder and its transition count for four lease durations.
fn steady_leadership(c: &mut Cluster, holder: &str, report: &mut Vec<String>) {
    let start = lease(&c.cp);
    let transitions = start["spec"]["leaseTransitions"].as_i64();
    let until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < until {
        let now = lease(&c.cp);
        assert_eq!(
            now["spec"]["holderIdentity"],
            format!("{IDENTITY_PREFIX}{holder}"),
            "the Lease changed hands while {holder} was renewing it"
        );
        assert_eq!(now["spec"]["leaseTransitions"].as_i64(), transitions);
        std::thread::sleep(Duration::from_millis(500));
    }
    let leading = leaders(&mut c.agents, &[]);
    assert_eq!(leading.len(), 1, "{leading:?}");
    report.push(format!(
        "{holder} kept the Lease for 16 s (4 lease durations) with skewed followers: no churn"
    ));
}

/// Every agent but `dead` has made the taint transitions it had made `before`.
fn assert_no_flap(agents: &[Agent], before: &[u64], dead: usize) {
    for (i, agent) in agents.iter().enumerate().filter(|(i, _)| *i != dead) {
        assert_eq!(
            agent.metric("carbon_kube_taint_transitions_total"),
            Some(before[i] as f64),
            "{} flapped",
            agent.node
        );
    }
}

/// SIGKILLs the leader `node`; returns the index of the new leader.
fn failover(c: &mut Cluster, node: &str, report: &mut Vec<String>) -> usize {
    let dead = c.index(node);
    c.agents[dead].kill();
    let killed = Instant::now();
    let next = wait_for("a new leader", Duration::from_secs(30), || {
        one_leader(&mut c.agents, &[dead])
    });
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(4 + 1 + 4),
        "takeover from {node} took {takeover:?} with a 4 s lease"
    );
    report.push(format!(
        "{node} SIGKILLed: {} took over after {takeover:?} (lease 4 s)",
        c.agents[next].node
    ));
    next
}

// ------------------------------------------------------------------ tuner --

/// Samples the tuner's step count for `how_long`, appending to `seen`.
fn watch_steps(cp: &ControlPlane, how_long: Duration, seen: &mut Vec<u64>) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        seen.extend(tuner_steps(cp, "de"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuner_learning_survives_a_frozen_and_a_killed_leader() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(
        &[("t1", "DE"), ("t2", "DE"), ("t3", "FR")],
        &["--tuner", "--max-tainted-fraction=0.5"],
    )
    .await;
    c.api.set_intensity("DE", 480.0);
    c.api.set_intensity("FR", 60.0);
    block_in_place(|| {
        c.spawn(&["t1", "t2", "t3"]);
        let first = wait_for("a leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[])
        });
        let before = wait_for("a few tuner steps", Duration::from_secs(60), || {
            tuner_steps(&c.cp, "de").filter(|s| *s >= 3)
        });
        let mut seen = vec![before];

        // Frozen leader: a new one continues the learning; the old one, thawed
        // past expiry, must not write its stale state over it.
        c.agents[first].freeze();
        let second = wait_for("a new leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[first])
        });
        watch_steps(&c.cp, Duration::from_secs(8), &mut seen);
        c.agents[first].thaw();
        watch_steps(&c.cp, Duration::from_secs(8), &mut seen);
        let after_freeze = *seen.last().expect("steps");
        assert!(
            c.agents[first]
                .metric("carbon_kube_tuner_threshold_grams_per_kwh")
                .is_none(),
            "the ex-leader still exports the tuner's threshold"
        );
        assert!(
            c.agents[second]
                .metric("carbon_kube_tuner_threshold_grams_per_kwh")
                .is_some()
        );

        // Killed leader: the next one continues too.
        c.agents[second].kill();
        let third = wait_for("a third leader", Duration::from_secs(30), || {
            one_leader(&mut c.agents, &[second])
        });
        watch_steps(&c.cp, Duration::from_secs(10), &mut seen);
        let last = *seen.last().expect("steps");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "learning went back: {seen:?}"
        );
        assert!(
            after_freeze > before && last > after_freeze,
            "learning stalled: {seen:?}"
        );
        let runs = assert_single_writer(&c.audit_log());
        let mut steps = seen.clone();
        steps.dedup();
        println!(
            "tuner steps across a frozen leader ({}) and a killed one ({}), leaders {:?}: {steps:?}, never going back; \
             CarbonScore writers in order: {runs:?}",
            c.agents[first].node,
            c.agents[second].node,
            [first, second, third].map(|i| c.agents[i].node.clone())
        );
    });
}

// ------------------------------------------------------------- carbon API --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_live_providers_down_falls_back_to_static_which_never_taints() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("s1", "DE")], &["--providers=electricity-maps,static"]).await;
    c.api.set_intensity("DE", 520.0);
    block_in_place(|| {
        c.spawn(&["s1"]);
        wait_tainted_within(&c.cp, "s1", true, Duration::from_secs(60));
        assert_eq!(score_status(&c.cp, "de")["source"], "electricity-maps");

        c.api.set_fault(EM, Fault::Status(503));
        let down = Instant::now();
        let fell_back = {
            wait_for("source static", Duration::from_secs(30), || {
                (score_status(&c.cp, "de")["source"] == "static").then_some(())
            });
            down.elapsed()
        };
        wait_tainted_within(&c.cp, "s1", false, Duration::from_secs(30));
        let untainted = down.elapsed();
        let status = score_status(&c.cp, "de");
        let zone = carbon_kube::carbon::GridZone::parse("DE").unwrap();
        let yearly = carbon_kube::providers::static_table::yearly_average(&zone).unwrap();
        assert_eq!(status["taintAllowed"], false, "{status}");
        assert_eq!(status["estimated"], true, "{status}");
        assert!(
            (status["intensityGramsPerKwh"].as_f64().unwrap() - yearly).abs() < 0.01,
            "{status}"
        );
        let node = c.cp.node("s1");
        let cond = condition_of(&node).expect("condition");
        assert_eq!(cond["status"], "False", "{cond}");
        assert_eq!(cond["reason"], "StaticAverageNotActedOn", "{cond}");
        assert!(
            cond["message"]
                .as_str()
                .unwrap_or("")
                .contains("never acted on"),
            "the condition says why: {cond}"
        );
        let errors = counter(
            &c.agents[0],
            "carbon_kube_provider_errors_total",
            &[("provider", EM), ("outcome", "server_error")],
        );
        assert!(errors >= 1.0);

        c.api.clear_faults();
        let up = Instant::now();
        wait_tainted_within(&c.cp, "s1", true, Duration::from_secs(60));
        let retainted = up.elapsed();
        assert_eq!(score_status(&c.cp, "de")["source"], "electricity-maps");
        println!(
            "live providers down: CarbonScore source static after {fell_back:?}, node untainted after {untainted:?} \
             (static {yearly:.0} g/kWh is shown, never acted on; condition: {}); \
             provider back: tainted again after {:?}",
            cond["message"], retainted
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_static_the_last_reading_is_kept_until_stale_then_taints_go() {
    let _serial = SERIAL.lock().await;
    // NOAA estimates are observed "now", so only a failing API lets them age.
    let api = CarbonApi::start().await;
    let noaa = api.noaa_url();
    let em = api.electricity_maps_url();
    let mut c = cluster_with(
        api,
        em,
        &[("u1", "US-CAL-CISO")],
        &[
            "--providers=noaa",
            &format!("--noaa-url={noaa}"),
            "--threshold=60",
            "--hysteresis=10",
            "--max-age=20s",
        ],
    );
    block_in_place(|| {
        c.spawn(&["u1"]);
        wait_tainted_within(&c.cp, "u1", true, Duration::from_secs(60));
        let good = score_status(&c.cp, "us-cal-ciso");
        assert_eq!(good["source"], "noaa-estimate", "{good}");

        c.api.set_fault(NOAA, Fault::Status(503));
        let down = Instant::now();
        let kept = wait_for("the poll error recorded", Duration::from_secs(30), || {
            let s = score_status(&c.cp, "us-cal-ciso");
            s["lastError"].is_string().then_some(s)
        });
        assert_eq!(kept["intensityGramsPerKwh"], good["intensityGramsPerKwh"]);
        assert_eq!(kept["source"], "noaa-estimate");
        let observed = timestamp(&kept["observedAt"]).expect("observedAt");
        assert!(has_taint(&c.cp, "u1"), "tainted while the data is young");

        wait_tainted_within(&c.cp, "u1", false, Duration::from_secs(60));
        let untainted = down.elapsed();
        let stale_after = Timestamp::now().duration_since(observed);
        let node = c.cp.node("u1");
        let cond = condition_of(&node).expect("condition");
        assert_eq!(cond["status"], "Unknown", "{cond}");
        assert_eq!(cond["reason"], "CarbonDataStale", "{cond}");
        assert_eq!(class_label_of(&node), None, "no class on stale data");
        assert!(
            stale_after >= jiff::SignedDuration::from_secs(20),
            "untainted when the data was only {stale_after:?} old"
        );

        c.api.clear_faults();
        let up = Instant::now();
        wait_tainted_within(&c.cp, "u1", true, Duration::from_secs(60));
        let retainted = up.elapsed();
        println!(
            "provider down, no static: CarbonScore kept its last reading ({} g/kWh, lastError {}); \
             node untainted {:?} after the outage began, when the data was {:.1} s old (max-age 20 s); \
             provider back: tainted again after {retainted:?}",
            kept["intensityGramsPerKwh"],
            kept["lastError"],
            untainted,
            stale_after.as_secs_f64(),
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_honoured_for_its_retry_after() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("r1", "DE")], &[]).await;
    c.api.set_intensity("DE", 520.0);
    block_in_place(|| {
        c.spawn(&["r1"]);
        wait_tainted_within(&c.cp, "r1", true, Duration::from_secs(60));
        let transitions_before = transitions(&c.agents);

        c.api.set_fault(
            EM_LATEST,
            Fault::RateLimited {
                retry_after_secs: 20,
            },
        );
        let n0 = c.api.requests(EM_LATEST);
        wait_for("the first 429", Duration::from_secs(20), || {
            (c.api.requests(EM_LATEST) > n0).then_some(())
        });
        let first_429 = Instant::now();
        let after_first = c.api.requests(EM_LATEST);
        // Polls every 2 s keep coming, but the provider is not asked again
        // until its Retry-After has passed.
        wait_for(
            "the trial after Retry-After",
            Duration::from_secs(40),
            || (c.api.requests(EM_LATEST) > after_first).then_some(()),
        );
        let silence = first_429.elapsed();
        let polls = counter(&c.agents[0], "carbon_kube_poll_duration_seconds_count", &[]);
        let circuit_open = counter(
            &c.agents[0],
            "carbon_kube_provider_errors_total",
            &[("provider", EM), ("outcome", "circuit_open")],
        );
        let rate_limited = counter(
            &c.agents[0],
            "carbon_kube_provider_errors_total",
            &[("provider", EM), ("outcome", "rate_limited")],
        );
        assert!(
            silence >= Duration::from_secs(19),
            "asked again {silence:?} after a 429 with Retry-After: 20"
        );
        assert!(
            rate_limited >= 1.0 && circuit_open >= 5.0,
            "rate_limited {rate_limited}, circuit_open {circuit_open}"
        );
        let status = score_status(&c.cp, "de");
        assert_eq!(status["intensityGramsPerKwh"], 520.0);
        assert!(
            status["lastError"]
                .as_str()
                .unwrap_or("")
                .contains("rate limited")
                || status["lastError"]
                    .as_str()
                    .unwrap_or("")
                    .contains("circuit open"),
            "{status}"
        );
        assert!(has_taint(&c.cp, "r1"));
        assert_eq!(transitions(&c.agents), transitions_before);

        c.api.clear_faults();
        c.api.set_intensity("DE", 530.0);
        let cleared = Instant::now();
        wait_for(
            "fresh data after the storm",
            Duration::from_secs(60),
            || (score_status(&c.cp, "de")["intensityGramsPerKwh"] == 530.0).then_some(()),
        );
        println!(
            "429 with Retry-After 20 s: next request to the provider {silence:?} later \
             (polls every 2 s; {polls} polls so far, {circuit_open} skipped by the open breaker); \
             last good reading kept meanwhile; fresh data {:?} after the storm ended",
            cleared.elapsed()
        );
    });
}

/// A TCP front to the carbon API that can turn into a slow loris: it then
/// answers every request with headers and a body that trickles one byte every
/// 200 ms, and records how long each such connection was kept open.
struct Front {
    addr: std::net::SocketAddr,
    loris: Arc<AtomicBool>,
    held: Arc<std::sync::Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    async fn start(upstream: std::net::SocketAddr) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let loris = Arc::new(AtomicBool::new(false));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, h) = (loris.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (loris, held) = (l.clone(), h.clone());
                tokio::spawn(async move {
                    if !loris.load(Ordering::SeqCst) {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                        }
                        return;
                    }
                    let started = Instant::now();
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"zone\":\"DE\",";
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    // Bounded: ten minutes at most.
                    for _ in 0..3000 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if stream.write_all(b" ").await.is_err() {
                            break;
                        }
                        // The client hung up: a read sees EOF at once.
                        let mut probe = [0u8; 1];
                        if let Ok(Ok(0)) =
                            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe))
                                .await
                        {
                            break;
                        }
                    }
                    held.lock().unwrap().push(started.elapsed());
                });
            }
        });
        Front {
            addr,
            loris,
            held,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_and_slow_loris_responses_time_out() {
    let _serial = SERIAL.lock().await;
    let api = CarbonApi::start().await;
    let upstream: std::net::SocketAddr = api
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let front = Front::start(upstream).await;
    let em_url = format!("http://{}/electricitymaps/v3", front.addr);
    let mut c = cluster_with(api, em_url, &[("h1", "DE")], &[]);
    c.api.set_intensity("DE", 520.0);
    block_in_place(|| {
        c.spawn(&["h1"]);
        wait_tainted_within(&c.cp, "h1", true, Duration::from_secs(60));
        let before = transitions(&c.agents);
        let mut report = Vec::new();
        type Step<'a> = Box<dyn Fn(&Cluster) + 'a>;
        let phases: [(&str, Step, Step); 2] = [
            (
                "hang (no answer)",
                Box::new(|c: &Cluster| c.api.set_fault(EM_LATEST, Fault::Hang)) as Step,
                Box::new(|c: &Cluster| c.api.clear_faults()) as Step,
            ),
            (
                "slow loris (a byte every 200 ms)",
                Box::new(|_: &Cluster| front.loris.store(true, Ordering::SeqCst)) as Step,
                Box::new(|_: &Cluster| front.loris.store(false, Ordering::SeqCst)) as Step,
            ),
        ];
        for (name, start, stop) in phases {
            let timeouts = |c: &Cluster| {
                counter(
                    &c.agents[0],
                    "carbon_kube_provider_errors_total",
                    &[("provider", EM), ("outcome", "timeout")],
                )
            };
            let polls =
                |c: &Cluster| counter(&c.agents[0], "carbon_kube_poll_duration_seconds_count", &[]);
            let poll_seconds =
                |c: &Cluster| counter(&c.agents[0], "carbon_kube_poll_duration_seconds_sum", &[]);
            let (t0, p0, s0) = (timeouts(&c), polls(&c), poll_seconds(&c));
            start(&c);
            c.api.set_intensity("DE", 530.0);
            let began = Instant::now();
            wait_for(
                &format!("{name}: timeouts counted"),
                Duration::from_secs(30),
                || (timeouts(&c) >= t0 + 2.0).then_some(()),
            );
            let first_timeout = began.elapsed();
            // Polls keep finishing while the provider hangs.
            wait_for(
                &format!("{name}: polls go on"),
                Duration::from_secs(40),
                || (polls(&c) >= p0 + 5.0).then_some(()),
            );
            let (p1, s1) = (polls(&c), poll_seconds(&c));
            let mean_poll = (s1 - s0) / (p1 - p0);
            assert!(
                mean_poll < 3.0,
                "{name}: polls took {mean_poll:.1} s on average with a 2 s provider timeout"
            );
            let status = score_status(&c.cp, "de");
            assert_eq!(status["intensityGramsPerKwh"], 520.0, "{name}: {status}");
            assert!(has_taint(&c.cp, "h1"));
            stop(&c);
            let stopped = Instant::now();
            wait_for(
                &format!("{name}: fresh data after"),
                Duration::from_secs(60),
                || (score_status(&c.cp, "de")["intensityGramsPerKwh"] == 530.0).then_some(()),
            );
            report.push(format!(
                "{name}: first timeouts counted after {first_timeout:?}; mean poll {mean_poll:.2} s \
                 while it lasted (provider timeout 2 s); last good reading kept; fresh data {:?} after it ended",
                stopped.elapsed()
            ));
            c.api.set_intensity("DE", 520.0);
            wait_for("back to 520", Duration::from_secs(60), || {
                (score_status(&c.cp, "de")["intensityGramsPerKwh"] == 520.0).then_some(())
            });
        }
        let held = front.held.lock().unwrap().clone();
        assert!(!held.is_empty(), "no slow-loris connection was made");
        let longest = held.iter().max().copied().unwrap_or_default();
        assert!(
            longest < Duration::from_secs(4),
            "the agent kept a slow-loris connection open for {longest:?}"
        );
        assert_eq!(transitions(&c.agents), before, "a taint flapped");
        report.push(format!(
            "slow-loris connections held by the agent: {} of them, longest {longest:?}",
            held.len()
        ));
        println!("{}", report.join("\n"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_oversized_and_implausible_bodies_are_rejected() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("g1", "DE")], &[]).await;
    c.api.set_intensity("DE", 500.0);
    block_in_place(|| {
        c.spawn(&["g1"]);
        wait_tainted_within(&c.cp, "g1", true, Duration::from_secs(60));
        let before = transitions(&c.agents);
        let faults = [
            (Fault::Garbage, "malformed"),
            (Fault::Truncated, "malformed"),
            (Fault::Oversized(2 << 20), "too_large"),
            (Fault::NaN, "malformed"),
            (Fault::Null, "malformed"),
            (Fault::Negative, "invalid"),
            (Fault::Status(500), "server_error"),
        ];
        let mut report = Vec::new();
        let mut good = 500.0;
        wait_for("500 written", Duration::from_secs(30), || {
            (score_status(&c.cp, "de")["intensityGramsPerKwh"] == good).then_some(())
        });
        for (fault, outcome) in faults {
            let labels = [("provider", EM), ("outcome", outcome)];
            let errors_before = counter(&c.agents[0], "carbon_kube_provider_errors_total", &labels);
            let next = good + 10.0;
            c.api.set_fault(EM_LATEST, fault.clone());
            c.api.set_intensity("DE", next);
            let began = Instant::now();
            wait_for(
                &format!("{fault:?} counted as {outcome}"),
                Duration::from_secs(30),
                || {
                    (counter(&c.agents[0], "carbon_kube_provider_errors_total", &labels)
                        >= errors_before + 2.0)
                        .then_some(())
                },
            );
            let counted = began.elapsed();
            let status = score_status(&c.cp, "de");
            assert_eq!(
                status["intensityGramsPerKwh"], good,
                "{fault:?}: the last good reading must be kept: {status}"
            );
            assert!(status["lastError"].is_string(), "{fault:?}: {status}");
            assert!(has_taint(&c.cp, "g1"), "{fault:?}: taint lost");
            c.api.clear_faults();
            let cleared = Instant::now();
            wait_for(
                &format!("fresh data after {fault:?}"),
                Duration::from_secs(60),
                || (score_status(&c.cp, "de")["intensityGramsPerKwh"] == next).then_some(()),
            );
            report.push(format!(
                "{fault:?}: counted as outcome={outcome} after {counted:?}, last good {good} g/kWh kept \
                 (lastError {}), fresh data {:?} after the fault ended",
                status["lastError"],
                cleared.elapsed()
            ));
            good = next;
        }
        assert_eq!(transitions(&c.agents), before, "a taint flapped");
        println!("{}", report.join("\n"));
    });
}

// ------------------------------------------------------------------ nodes --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_and_recreated_gets_its_state_back() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("n1", "DE"), ("n2", "DE")], &[]).await;
    c.api.set_intensity("DE", 510.0);
    block_in_place(|| {
        c.spawn(&["n1", "n2"]);
        wait_tainted_within(&c.cp, "n1", true, Duration::from_secs(60));
        c.cp.kubectl_ok(&["delete", "node", "n1"]);
        // Two reconcile periods without its Node.
        std::thread::sleep(Duration::from_secs(11));
        let n1 = c.index("n1");
        assert!(c.agents[n1].is_running(), "the agent died with its Node");
        c.cp.create_node("n1", &[("carbon-kube.io/grid-zone", "DE")]);
        let recreated = Instant::now();
        let node = wait_for(
            "n1 tainted, labelled and conditioned again",
            Duration::from_secs(60),
            || {
                node_json(&c.cp, "n1").filter(|n| {
                    !carbon_taints(n).is_empty()
                        && class_label_of(n).as_deref() == Some("red")
                        && condition_of(n).is_some_and(|c| c["status"] == "True")
                })
            },
        );
        let recovered = recreated.elapsed();
        assert_eq!(carbon_taints(&node).len(), 1);
        assert!(c.agents[n1].is_running());
        // And it keeps following the grid.
        c.api.set_intensity("DE", 100.0);
        wait_tainted_within(&c.cp, "n1", false, Duration::from_secs(60));
        println!(
            "node deleted for 11 s and recreated: taint, label and condition back after {recovered:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_on_a_tainted_node_recovers_its_state_from_the_node() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster(&[("r1", "DE"), ("r2", "DE")], &[]).await;
    c.api.set_intensity("DE", 510.0);
    block_in_place(|| {
        c.spawn(&["r1", "r2"]);
        wait_tainted_within(&c.cp, "r1", true, Duration::from_secs(60));
        wait_for("r1 conditioned", Duration::from_secs(30), || {
            condition_of(&c.cp.node("r1")).filter(|c| c["status"] == "True")
        });
        let mut report = Vec::new();
        for how in ["SIGKILL", "SIGTERM"] {
            let before = c.cp.node("r1");
            let taint_before = carbon_taints(&before);
            let cond_before = condition_of(&before).expect("condition");
            let r1 = c.index("r1");
            if how == "SIGKILL" {
                c.agents[r1].kill();
            } else {
                c.agents[r1].terminate();
            }
            std::thread::sleep(Duration::from_secs(2));
            let restarted_at = Timestamp::now();
            let restarted = Instant::now();
            // A long dwell: a restarted agent that forgot the taint would drop
            // it now and put it back only an hour later.
            c.agents[r1] = c.start_agent("r1", &["--dwell=1h"], &[]);
            wait_for(
                "the restarted agent sees its tainted node",
                Duration::from_secs(30),
                || (c.agents[r1].metric("carbon_kube_node_tainted") == Some(1.0)).then_some(()),
            );
            let recovered = restarted.elapsed();
            // Three reconcile periods.
            std::thread::sleep(Duration::from_secs(16));
            let after = c.cp.node("r1");
            let taint_after = carbon_taints(&after);
            assert_eq!(taint_after, taint_before, "{how}: taint changed");
            assert_eq!(
                condition_of(&after).map(|c| c["lastTransitionTime"].clone()),
                Some(cond_before["lastTransitionTime"].clone()),
                "{how}: condition transitioned"
            );
            assert_eq!(
                c.agents[r1].metric("carbon_kube_taint_transitions_total"),
                Some(0.0),
                "{how}"
            );
            let writes = writes_after(&c.audit_log(), "r1", "nodes", restarted_at);
            assert!(
                writes.is_empty(),
                "{how}: the restarted agent wrote its Node: {writes:?}"
            );
            report.push(format!(
                "agent {how}ed and restarted with --dwell=1h: state read back from the Node after {recovered:?}; \
                 one taint, same timeAdded, no Node write in 16 s"
            ));
        }
        println!("{}", report.join("\n"));
    });
}

// ---------------------------------------------------- audit checker check --

/// The single-writer checker itself: it must reject an interleaving.
#[test]
fn the_single_writer_check_catches_a_write_by_an_ex_leader() {
    let dir = temp_dir("ck-audit-check");
    let log = dir.join("audit.log");
    let event = |user: &str, resource: &str, verb: &str, at: &str, holder: Option<&str>| {
        let mut e = serde_json::json!({
            "stage": "ResponseComplete",
            "verb": verb,
            "user": {"username": format!("{AGENT_USER_PREFIX}{user}")},
            "objectRef": {"resource": resource, "name": if resource == "leases" { LEASE } else { "de" }},
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": at,
            "stageTimestamp": at,
        });
        if let Some(h) = holder {
            e["requestObject"] =
                serde_json::json!({"spec": {"holderIdentity": format!("{IDENTITY_PREFIX}{h}")}});
        }
        e.to_string()
    };
    let good = [
        event(
            "a",
            "leases",
            "create",
            "2024-01-01T00:00:00.000001Z",
            Some("a"),
        ),
        event("a", "carbonscores", "patch", "2024-01-01T00:00:01Z", None),
        event("b", "leases", "update", "2024-01-01T00:00:05Z", Some("b")),
        event("b", "carbonscores", "patch", "2024-01-01T00:00:06Z", None),
    ];
    std::fs::write(&log, good.join("\n")).unwrap();
    assert_eq!(
        assert_single_writer(&log),
        [("a".to_string(), 1), ("b".to_string(), 1)]
    );
    let mut bad = good.to_vec();
    bad.push(event(
        "a",
        "carbonscores",
        "patch",
        "2024-01-01T00:00:07Z",
        None,
    ));
    std::fs::write(&log, bad.join("\n")).unwrap();
    let caught = std::panic::catch_unwind(|| assert_single_writer(&log));
    assert!(
        caught.is_err(),
        "a write by the ex-leader must fail the check"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
