//! Runs a schedule against a real control plane and five agents, with a
//! foreign writer changing taints, labels and conditions throughout. The
//! agents are processes, each under its own service account, behind its own
//! cuttable TCP path to the apiserver and its own wall clock (libfaketime);
//! or, on real nodes, the chart's DaemonSet pods (`pods`). Records what it did
//! (impairments, agent exits, convergence times) for the checkers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carbon_kube::deferral::{DURATION, GATE, LATEST_START, ZONE};
use carbon_kube::node::TAINT_KEY;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::history::AUDIT_POLICY;
use super::invariants::Impairment;
use super::pods::PodFleet;
use super::rng::Rng;
use super::schedule::{DeferredPod, Episode, FaultKind, LEVELS, ProviderFault, Target};
use super::support::api_proxy::ApiProxy;
use super::support::carbon_api::{CarbonApi, EM_LATEST, EM_TOKEN, Fault};
use super::support::cluster::{
    Agent, ControlPlane, http_get, path_str, signal, tail, temp_dir, tool,
};
use super::support::deploy::NAMESPACE;
use super::support::nodes::RealNodes;
use super::support::scenario::{agent_kubeconfig, create_nodes, fast_agent_args, libfaketime};

/// The fleet: two zones of two nodes and one of one, so that the budget
/// (half of five: two nodes) fits one zone at a time.
pub const NODES: [(&str, &str); 5] = [
    ("a1", "DE"),
    ("a2", "DE"),
    ("b1", "PL"),
    ("b2", "PL"),
    ("c1", "FR"),
];
pub const ZONES: [&str; 3] = ["DE", "PL", "FR"];
pub const MAX_TAINTED_FRACTION: f64 = 0.5;
pub const MAX_AGE: Duration = Duration::from_secs(30);
const AGENT_FLAGS: [&str; 7] = [
    "--policy=relative",
    "--max-tainted-fraction=0.5",
    "--max-age=30s",
    "--lease-duration=4s",
    "--poll-interval=2s",
    // The leader holds gated pods; with no margin, until the last planning
    // slot before their latest start (seconds ahead, not hours).
    "--deferral=true",
    "--deferral-margin=0s",
];
/// The configurations a rolling upgrade moves the fleet between, in turn:
/// the log filter and the dwell (within what the bounds of the checks
/// assume), as a `helm upgrade --set` would change them.
const GENERATIONS: [(&str, &str); 2] = [("info,carbon_kube=debug", "4s"), ("info", "5s")];
/// The kubelet's restart delay after a container exits on its own: 10 s,
/// doubling up to 5 min, back to 10 s once a container has run 10 min.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The chart's terminationGracePeriodSeconds: SIGKILL after it.
const GRACE: Duration = Duration::from_secs(30);
/// How long a rolling upgrade waits for a restarted agent to be ready
/// (/readyz) before it moves on, and counts it.
const READY_WAIT: Duration = Duration::from_secs(90);
/// The forecast the carbon API serves: points this far apart (the planning
/// slot), this many ahead. The dirtiest zone's falls by `FORECAST_FALL` of
/// its intensity per point (a peak passing), so a pod for it is worth
/// holding; the others' stay flat, so a pod for them goes at once.
const FORECAST_STEP_S: i64 = 10;
const FORECAST_POINTS: i64 = 15;
const FORECAST_FALL: f64 = 0.04;
/// Refresh the forecast this often, as time moves past its points.
const FORECAST_REFRESH: Duration = Duration::from_secs(2);
/// Where the deferrable pods live.
const POD_NAMESPACE: &str = "default";
/// How long the taints must keep matching the decisions to count as converged.
const STABLE: Duration = Duration::from_secs(6);
/// How long the harness waits for convergence after an episode.
pub const CONVERGENCE_WAIT: Duration = Duration::from_secs(150);

/// An agent process's own path to the apiserver and wall clock.
struct Process {
    proxy: ApiProxy,
    clock: PathBuf,
    kubeconfig: PathBuf,
}

/// One agent's place in the fleet.
struct Slot {
    node: String,
    zone: String,
    /// The agent process; `None` on real nodes (see [`Soak::pods`]).
    agent: Option<Agent>,
    process: Option<Process>,
    frozen: bool,
    cut: bool,
    skewed: bool,
    /// Which of [`GENERATIONS`] it runs (a restart keeps its pod's).
    generation: usize,
    /// When its agent was started, and the next restart delay.
    started: Instant,
    backoff: Duration,
    /// After an exit on its own: when to start it again, and when it exited.
    restart: Option<(Instant, Timestamp)>,
}

/// What one run did and saw, for the checkers and the figures.
#[derive(Default)]
pub struct Record {
    pub impairments: Vec<Impairment>,
    pub exits: Vec<(String, Timestamp)>,
    pub exit_logs: Vec<String>,
    /// Per episode: when its faults ended and how long convergence took.
    pub converged: Vec<(Timestamp, Option<Duration>)>,
    /// Per episode: when it started.
    pub started: Vec<Timestamp>,
    pub injected: BTreeMap<&'static str, usize>,
    pub skipped: BTreeMap<&'static str, usize>,
    pub foreign_writes: usize,
    /// Deferrable pods created, and the latest of their latest starts.
    pub deferred_pods: usize,
    pub last_latest_start: Option<Timestamp>,
    /// How long each rolling upgrade took, and agents it gave up waiting on.
    pub rolls: Vec<Duration>,
    pub unready_after_upgrade: usize,
    /// On real nodes: what `helm upgrade` said when it failed.
    pub upgrade_failures: Vec<String>,
    /// (node, tainted on the Node, its tainted metric, its is_leader) at the end.
    pub final_agents: Vec<(String, bool, Option<f64>, Option<f64>)>,
    pub audit: String,
}

// Fields drop in order: agents first (they print their logs on a panic),
// then the control plane (whose directory holds those logs).
pub struct Soak {
    slots: Vec<Slot>,
    roll: Option<Roll>,
    /// On real nodes: the chart's pods (dropped before the control plane).
    pods: Option<PodFleet>,
    /// Kills so far on real nodes: every other one deletes the pod instead.
    pod_kills: usize,
    /// The fleet's configuration, as the DaemonSet's template would say.
    generation: usize,
    cp: ControlPlane,
    api: CarbonApi,
    audit_dir: PathBuf,
    levels: Vec<f64>,
    forecast_at: Instant,
    paused: bool,
    /// Nodes deleted by a fault, to create again.
    deleted: Vec<usize>,
    /// Where each agent process's log goes, every run of it in turn.
    keep_logs: Option<PathBuf>,
    record: Record,
}

impl Drop for Soak {
    fn drop(&mut self) {
        // A frozen agent must run to die; the control plane thaws itself on drop.
        for slot in &mut self.slots {
            if let (true, Some(agent)) = (slot.frozen, &mut slot.agent) {
                agent.thaw();
            }
        }
        if let Some(dir) = &self.keep_logs {
            let _ = std::fs::copy(self.audit_dir.join("audit.log"), dir.join("audit.log"));
        }
        let _ = std::fs::remove_dir_all(&self.audit_dir);
    }
}

/// kubectl with a request timeout: a paused apiserver must not hang the harness.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=5s")
        .args(args)
        .output()
        .expect("running kubectl")
}

impl Soak {
    /// The cluster, settled: agents running, the dirtiest zone tainted.
    /// `real_nodes`: the agents are the chart's pods on real kubelets.
    /// `keep_logs`: a folder for the agent processes' logs (see [`Soak::keep_log`]).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        real_nodes: bool,
        keep_logs: Option<PathBuf>,
    ) -> Soak {
        if !real_nodes {
            libfaketime();
        }
        let audit_dir = temp_dir("ck-soak-audit");
        let policy = audit_dir.join("policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).expect("audit policy");
        let cp = ControlPlane::start_with(&[
            format!("--apiserver-arg=--audit-policy-file={}", path_str(&policy)),
            format!(
                "--apiserver-arg=--audit-log-path={}",
                path_str(&audit_dir.join("audit.log"))
            ),
            "--apiserver-arg=--audit-log-maxsize=2000".to_string(),
        ]);
        let nodes = real_nodes.then(|| RealNodes::start(&cp, &NODES));
        // On real nodes the pods reach the carbon API on a node's IP.
        let ip = nodes
            .as_ref()
            .map_or("127.0.0.1", |n| n.nodes[0].ip.as_str());
        let api = rt.block_on(CarbonApi::start_on(ip));
        api.set_em_period(1);
        if nodes.is_none() {
            create_nodes(&cp, &NODES);
        }
        let upstream: std::net::SocketAddr = cp
            .server
            .trim_start_matches("https://")
            .parse()
            .expect("apiserver address");
        let slots = NODES
            .iter()
            .map(|(node, zone)| {
                let process = nodes.is_none().then(|| {
                    let proxy = ApiProxy::start(upstream);
                    let kubeconfig =
                        agent_kubeconfig(&cp, node, Some(&format!("https://{}", proxy.addr)));
                    let clock = audit_dir.join(format!("clock-{node}"));
                    std::fs::write(&clock, "+0\n").expect("clock file");
                    Process {
                        proxy,
                        clock,
                        kubeconfig,
                    }
                });
                Slot {
                    node: node.to_string(),
                    zone: zone.to_string(),
                    agent: None,
                    process,
                    frozen: false,
                    cut: false,
                    skewed: false,
                    generation: 0,
                    started: Instant::now(),
                    backoff: BACKOFF_FIRST,
                    restart: None,
                }
            })
            .collect();
        let mut soak = Soak {
            roll: None,
            pods: None,
            pod_kills: 0,
            generation: 0,
            cp,
            api,
            slots,
            audit_dir,
            levels: LEVELS.to_vec(),
            forecast_at: Instant::now(),
            paused: false,
            deleted: Vec::new(),
            keep_logs,
            record: Record::default(),
        };
        soak.set_levels();
        match nodes {
            Some(nodes) => {
                soak.pods = Some(PodFleet::install(
                    &soak.cp,
                    nodes,
                    &soak.api,
                    GENERATIONS[0],
                ));
            }
            None => {
                for i in 0..soak.slots.len() {
                    soak.spawn(i);
                }
            }
        }
        let settled = soak.converge();
        assert!(
            settled.is_some(),
            "the fleet did not settle before any fault; agent logs:\n{}",
            soak.logs()
        );
        soak
    }

    fn set_levels(&mut self) {
        for (zone, grams) in ZONES.iter().zip(&self.levels) {
            self.api.set_intensity(zone, *grams);
        }
        self.set_forecasts();
    }

    /// The forecast from the next whole step on (see [`FORECAST_FALL`]).
    fn set_forecasts(&mut self) {
        let now = Timestamp::now().as_second();
        let first = now - now.rem_euclid(FORECAST_STEP_S) + FORECAST_STEP_S;
        let dirtiest = self.dirtiest();
        for (i, (zone, grams)) in ZONES.iter().zip(&self.levels).enumerate() {
            let fall = if i == dirtiest { FORECAST_FALL } else { 0.0 };
            let points: Vec<(Timestamp, f64)> = (0..FORECAST_POINTS)
                .filter_map(|k| {
                    let at = Timestamp::from_second(first + k * FORECAST_STEP_S).ok()?;
                    Some((at, grams * (1.0 - fall * (k + 1) as f64)))
                })
                .collect();
            self.api.set_forecast(zone, &points);
        }
        self.forecast_at = Instant::now();
    }

    /// The index of the dirtiest zone (the levels never tie).
    fn dirtiest(&self) -> usize {
        self.levels
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("zones")
    }

    fn spawn(&mut self, i: usize) {
        let slot = &self.slots[i];
        let process = slot.process.as_ref().expect("an agent process's slot");
        let url = self.api.electricity_maps_url();
        let (log, dwell) = GENERATIONS[slot.generation % GENERATIONS.len()];
        let dwell = format!("--dwell={dwell}");
        let mut flags = AGENT_FLAGS.to_vec();
        flags.push(&dwell);
        let args = fast_agent_args(&url, &flags);
        self.keep_log(i);
        let env = [
            ("CARBON_KUBE_LOG", log),
            ("ELECTRICITY_MAPS_TOKEN", EM_TOKEN),
            ("KUBECONFIG", path_str(&process.kubeconfig)),
            ("LD_PRELOAD", libfaketime()),
            ("FAKETIME_TIMESTAMP_FILE", path_str(&process.clock)),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        let agent = Agent::spawn(&self.cp, &slot.node, &args, &env);
        self.slots[i].agent = Some(agent);
        self.slots[i].started = Instant::now();
    }

    /// Appends what node `i`'s last agent process wrote to its log in the
    /// kept folder: a restart starts the log afresh.
    fn keep_log(&self, i: usize) {
        let Some(dir) = &self.keep_logs else {
            return;
        };
        let name = format!("agent-{}.log", self.slots[i].node);
        let Ok(text) = std::fs::read(self.cp.dir.join(&name)) else {
            return;
        };
        std::fs::create_dir_all(dir).expect("the folder for agent logs");
        let mut kept = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(&name))
            .expect("a kept agent log");
        std::io::Write::write_all(&mut kept, &text).expect("writing a kept agent log");
    }

    fn impaired(&mut self, node: Option<usize>, from: Timestamp, skew_secs: i64) {
        self.record.impairments.push(Impairment {
            node: node.map(|i| self.slots[i].node.clone()),
            from,
            to: Timestamp::now(),
            skew_secs,
        });
    }

    /// Restarts agents that exited on their own, with the kubelet's backoff
    /// (the time down counts as one in which the agent could not act), and
    /// keeps the forecast ahead of the clock.
    fn supervise(&mut self) {
        if self.forecast_at.elapsed() >= FORECAST_REFRESH {
            self.set_forecasts();
        }
        self.roll_on();
        if let Some(pods) = &mut self.pods {
            if let Some((took, failed)) = pods.upgrade_done(&self.cp.kubeconfig) {
                self.record.rolls.push(took);
                self.record.upgrade_failures.extend(failed);
            }
            // A paused apiserver answers nothing; the pods are read once it is back.
            if !self.paused {
                let (ended, exits) = pods.poll(&self.cp.kubeconfig);
                self.record.impairments.extend(ended);
                for (i, at) in exits {
                    self.record.exits.push((self.slots[i].node.clone(), at));
                }
            }
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some((when, exited)) = slot.restart {
                if Instant::now() >= when {
                    slot.restart = None;
                    self.spawn(i);
                    self.impaired(Some(i), exited, 0);
                }
                continue;
            }
            let Some(agent) = &mut slot.agent else {
                continue;
            };
            if agent.is_running() {
                continue;
            }
            let at = Timestamp::now();
            self.record.exits.push((slot.node.clone(), at));
            self.record.exit_logs.push(format!(
                "--- {} exited on its own at {at} ---\n{}",
                slot.node,
                tail(&agent.output(), 30)
            ));
            slot.agent = None;
            if slot.started.elapsed() >= BACKOFF_RESET {
                slot.backoff = BACKOFF_FIRST;
            }
            slot.restart = Some((Instant::now() + slot.backoff, at));
            slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sleeps until `until`, supervising.
    fn wait_until(&mut self, until: Instant) {
        while Instant::now() < until {
            self.supervise();
            std::thread::sleep(Duration::from_millis(250).min(until - Instant::now()));
        }
    }

    /// The agent that leads now, asked of those that can answer.
    fn leader(&mut self) -> Option<usize> {
        if let Some(pods) = &self.pods {
            return (0..self.slots.len()).find(|i| pods.leads(&self.cp.kubeconfig, *i));
        }
        (0..self.slots.len()).find(|i| {
            let slot = &mut self.slots[*i];
            !slot.frozen
                && slot.agent.as_mut().is_some_and(|a| {
                    a.is_running() && a.metric("carbon_kube_is_leader") == Some(1.0)
                })
        })
    }

    fn resolve(&mut self, target: Target) -> Option<usize> {
        match target {
            Target::Agent(i) => Some(i),
            Target::Leader => self.leader(),
        }
    }

    /// Runs episode `number` of the schedule: its faults, then the wait for
    /// convergence.
    pub fn run_episode(&mut self, number: usize, episode: &Episode) {
        self.record.started.push(Timestamp::now());
        if let Some(levels) = &episode.intensities {
            self.levels = levels.clone();
            self.set_levels();
            *self.record.injected.entry("zone-order").or_default() += 1;
        }
        // Events in time order (at one time: begins, pods, ends); an end needs
        // what its begin found.
        let mut events: Vec<(u64, Event)> = episode
            .faults
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                [
                    (f.start_ms, Event::Begin(i)),
                    (f.start_ms + f.length_ms, Event::End(i)),
                ]
            })
            .chain(
                episode
                    .pods
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.start_ms, Event::Pod(i))),
            )
            .collect();
        events.sort_by_key(|&(at, event)| (at, event));
        let began = Instant::now();
        let mut active: BTreeMap<usize, Active> = BTreeMap::new();
        for (at, event) in events {
            self.wait_until(began + Duration::from_millis(at));
            match event {
                Event::Begin(i) => {
                    let kind = &episode.faults[i].kind;
                    match self.begin(kind) {
                        Some(a) => {
                            let name = match (&a, kind) {
                                (Active::PodDeleted, FaultKind::Kill(Target::Leader)) => {
                                    "delete-leader-pod"
                                }
                                (Active::PodDeleted, _) => "delete-agent-pod",
                                _ => kind.name(),
                            };
                            *self.record.injected.entry(name).or_default() += 1;
                            active.insert(i, a);
                        }
                        None => *self.record.skipped.entry(kind.name()).or_default() += 1,
                    }
                }
                Event::Pod(i) => {
                    let name = format!("deferred-{number}-{i}");
                    if let Some(latest) = self.create_pod(&name, &episode.pods[i]) {
                        self.record.deferred_pods += 1;
                        self.record.last_latest_start =
                            self.record.last_latest_start.max(Some(latest));
                    } else {
                        *self.record.skipped.entry("deferred-pod").or_default() += 1;
                    }
                }
                Event::End(i) => {
                    if let Some(a) = active.remove(&i) {
                        self.end(a);
                    }
                }
            }
        }
        while self.roll.is_some() || self.pods.as_ref().is_some_and(PodFleet::upgrading) {
            self.wait_until(Instant::now() + Duration::from_millis(250));
        }
        self.recreate_deleted();
        let ended = Timestamp::now();
        let took = self.converge();
        self.record.converged.push((ended, took));
        self.delete_released_pods();
    }

    /// Creates a deferrable pod (a tenth of a vCPU for 20 s), unless the
    /// apiserver is paused; its latest start when it was created.
    fn create_pod(&mut self, name: &str, pod: &DeferredPod) -> Option<Timestamp> {
        if self.paused {
            return None;
        }
        let zone = ZONES[pod.zone.unwrap_or_else(|| self.dirtiest())];
        let now = Timestamp::now().as_second();
        let latest = Timestamp::from_second(now + pod.latest_in_s as i64).ok()?;
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": POD_NAMESPACE,
                "annotations": {
                    LATEST_START: latest.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    ZONE: zone,
                    DURATION: "20s",
                },
            },
            "spec": {
                "schedulingGates": [{ "name": GATE }],
                "containers": [{
                    "name": "job",
                    "image": "registry.invalid/batch:1",
                    "resources": { "requests": { "cpu": "100m" } },
                }],
            },
        });
        let file = self.audit_dir.join(format!("{name}.json"));
        std::fs::write(&file, manifest.to_string()).expect("pod manifest");
        kubectl(&self.cp.kubeconfig, &["create", "-f", path_str(&file)])
            .status
            .success()
            .then_some(latest)
    }

    /// Supervises the fleet until every pod created is due (its latest
    /// start plus `slack` has passed), so that the checks judge them all.
    pub fn wait_for_pods_due(&mut self, slack: SignedDuration) {
        let Some(latest) = self.record.last_latest_start else {
            return;
        };
        let left = Timestamp::now().duration_until(latest + slack);
        if let Ok(left) = Duration::try_from(left) {
            self.wait_until(Instant::now() + left);
        }
    }

    /// Deletes the pods the leader has released (no kubelet runs them), so
    /// that their CPU does not fill the zones over a long soak.
    fn delete_released_pods(&self) {
        let out = kubectl(
            &self.cp.kubeconfig,
            &["-n", POD_NAMESPACE, "get", "pods", "-o", "json"],
        );
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
            return;
        };
        let released: Vec<&str> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                !p["spec"]["schedulingGates"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g["name"] == GATE))
            })
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        if released.is_empty() {
            return;
        }
        let mut args = vec![
            "-n",
            POD_NAMESPACE,
            "delete",
            "pod",
            "--force",
            "--grace-period=0",
            "--wait=false",
        ];
        args.extend(released);
        kubectl(&self.cp.kubeconfig, &args);
    }

    fn begin(&mut self, kind: &FaultKind) -> Option<Active> {
        let now = Timestamp::now();
        match kind {
            FaultKind::Kill(target) if self.pods.is_some() => {
                let i = self.resolve(*target)?;
                let kubeconfig = &self.cp.kubeconfig;
                if self.slots[i].frozen {
                    return None;
                }
                let pods = self.pods.as_mut()?;
                self.pod_kills += 1;
                if self.pod_kills % 2 == 0 {
                    pods.delete(kubeconfig, i).map(|()| Active::PodDeleted)
                } else {
                    pods.kill(kubeconfig, i).map(|()| Active::Done)
                }
            }
            FaultKind::Kill(target) => {
                let i = self.resolve(*target)?;
                let slot = &mut self.slots[i];
                if slot.frozen {
                    return None;
                }
                slot.agent.as_mut()?.kill();
                slot.agent = None;
                Some(Active::Killed(i, now))
            }
            FaultKind::Freeze(target) => {
                let i = self.resolve(*target)?;
                if self.slots[i].frozen {
                    return None;
                }
                match &mut self.pods {
                    Some(pods) => pods.freeze(&self.cp.kubeconfig, i)?,
                    None => self.slots[i].agent.as_mut()?.freeze(),
                }
                let slot = &mut self.slots[i];
                slot.frozen = true;
                Some(Active::Frozen(i, now))
            }
            FaultKind::PauseApiServer if !self.paused => {
                self.cp.freeze();
                self.paused = true;
                Some(Active::Paused(now))
            }
            FaultKind::RestartApiServer if !self.paused => {
                self.cp.restart();
                self.impaired(None, now, 0);
                Some(Active::Done)
            }
            FaultKind::PauseApiServer | FaultKind::RestartApiServer => None,
            FaultKind::CutNetwork(target) => {
                let i = self.resolve(*target)?;
                if self.slots[i].cut {
                    return None;
                }
                match (&mut self.pods, &self.slots[i].process) {
                    (Some(pods), _) => pods.cut(&self.cp.kubeconfig, i)?,
                    (None, Some(process)) => process.proxy.down(),
                    (None, None) => return None,
                }
                self.slots[i].cut = true;
                Some(Active::Cut(i, now))
            }
            FaultKind::Provider(fault) => {
                self.api.set_fault(
                    EM_LATEST,
                    match fault {
                        ProviderFault::Hang => Fault::Hang,
                        ProviderFault::Garbage => Fault::Garbage,
                        ProviderFault::RateLimited { retry_after_secs } => Fault::RateLimited {
                            retry_after_secs: *retry_after_secs,
                        },
                    },
                );
                Some(Active::Provider)
            }
            // libfaketime (LD_PRELOAD) cannot reach the static binary in a
            // container: clock jumps are the process fleet's.
            FaultKind::ClockJump(..) if self.pods.is_some() => None,
            FaultKind::ClockJump(target, seconds) => {
                let i = self.resolve(*target)?;
                let slot = &mut self.slots[i];
                if slot.skewed {
                    return None;
                }
                let clock = &slot.process.as_ref()?.clock;
                std::fs::write(clock, format!("{seconds:+}\n")).ok()?;
                slot.skewed = true;
                Some(Active::Skewed(i, now, *seconds))
            }
            // A deleted Node takes its pods along and its kubelet does not
            // register it again: the process fleet's.
            FaultKind::RecreateNode(_) if self.pods.is_some() => None,
            FaultKind::RecreateNode(i) if !self.paused && !self.deleted.contains(i) => {
                let node = self.slots[*i].node.clone();
                kubectl(
                    &self.cp.kubeconfig,
                    &["delete", "node", &node, "--wait=false"],
                )
                .status
                .success()
                .then_some(Active::Deleted(*i))
            }
            FaultKind::RecreateNode(_) => None,
            FaultKind::RollingUpgrade if self.pods.is_some() => {
                let pods = self.pods.as_mut()?;
                if pods.upgrading() {
                    return None;
                }
                self.generation += 1;
                pods.upgrade(
                    &self.cp,
                    &self.api,
                    GENERATIONS[self.generation % GENERATIONS.len()],
                );
                Some(Active::Done)
            }
            FaultKind::RollingUpgrade if self.roll.is_none() => {
                self.generation += 1;
                self.roll = Some(Roll {
                    began: Instant::now(),
                    next: 0,
                    step: RollStep::Waiting,
                });
                Some(Active::Done)
            }
            FaultKind::RollingUpgrade => None,
        }
    }

    /// Moves a rolling upgrade on as far as it can go now.
    fn roll_on(&mut self) {
        while let Some(roll) = self.roll.take() {
            let i = roll.next;
            let step = match roll.step {
                RollStep::Waiting if i == self.slots.len() => {
                    self.record.rolls.push(roll.began.elapsed());
                    return;
                }
                RollStep::Waiting => {
                    let slot = &mut self.slots[i];
                    // A frozen or killed agent is stopped once it is back.
                    let Some(agent) = slot.agent.take_if(|a| !slot.frozen && a.is_running()) else {
                        self.roll = Some(Roll {
                            step: RollStep::Waiting,
                            ..roll
                        });
                        return;
                    };
                    signal(agent.pid(), "TERM");
                    RollStep::Stopping {
                        agent,
                        since: Instant::now(),
                        from: Timestamp::now(),
                    }
                }
                RollStep::Stopping {
                    mut agent,
                    since,
                    from,
                } => {
                    if agent.is_running() && since.elapsed() < GRACE {
                        self.roll = Some(Roll {
                            step: RollStep::Stopping { agent, since, from },
                            ..roll
                        });
                        return;
                    }
                    agent.kill();
                    self.slots[i].generation = self.generation;
                    self.spawn(i);
                    RollStep::Starting {
                        since: Instant::now(),
                        from,
                    }
                }
                RollStep::Starting { since, from } => {
                    let ready = self.slots[i].agent.as_ref().is_some_and(|a| {
                        http_get(&format!("127.0.0.1:{}", a.metrics_port), "/readyz").is_some()
                    });
                    if !ready && since.elapsed() < READY_WAIT {
                        self.roll = Some(Roll {
                            step: RollStep::Starting { since, from },
                            ..roll
                        });
                        return;
                    }
                    if !ready {
                        self.record.unready_after_upgrade += 1;
                    }
                    self.impaired(Some(i), from, 0);
                    self.roll = Some(Roll {
                        next: i + 1,
                        step: RollStep::Waiting,
                        ..roll
                    });
                    continue;
                }
            };
            self.roll = Some(Roll { step, ..roll });
        }
    }

    fn end(&mut self, active: Active) {
        match active {
            Active::Killed(i, from) => {
                self.spawn(i);
                self.impaired(Some(i), from, 0);
            }
            Active::Frozen(i, from) => {
                if let Some(pods) = &mut self.pods {
                    pods.thaw(i);
                }
                let slot = &mut self.slots[i];
                if let Some(agent) = &mut slot.agent {
                    agent.thaw();
                }
                slot.frozen = false;
                self.impaired(Some(i), from, 0);
            }
            Active::Paused(from) => {
                self.cp.thaw();
                self.paused = false;
                self.impaired(None, from, 0);
            }
            Active::Cut(i, from) => {
                if let Some(pods) = &mut self.pods {
                    pods.uncut(i);
                }
                if let Some(process) = &self.slots[i].process {
                    process.proxy.up();
                }
                self.slots[i].cut = false;
                self.impaired(Some(i), from, 0);
            }
            Active::Provider => self.api.clear_fault(EM_LATEST),
            Active::Skewed(i, from, seconds) => {
                if let Some(process) = &self.slots[i].process {
                    let _ = std::fs::write(&process.clock, "+0\n");
                }
                self.slots[i].skewed = false;
                // libfaketime reads the file again within a second.
                std::thread::sleep(Duration::from_millis(1100));
                self.impaired(Some(i), from, seconds);
            }
            Active::Deleted(i) => self.deleted.push(i),
            Active::PodDeleted | Active::Done => {}
        }
    }

    fn recreate_deleted(&mut self) {
        for i in std::mem::take(&mut self.deleted) {
            let (node, zone) = NODES[i];
            self.cp
                .create_node(node, &[("carbon-kube.io/grid-zone", zone)]);
        }
    }

    /// The Nodes that should carry the taint: the dirtiest zone's (the
    /// levels are far enough apart that hysteresis plays no part, and the
    /// next zone never fits in what is left of the budget).
    fn expected(&self) -> Vec<String> {
        let dirtiest = ZONES[self.dirtiest()];
        self.slots
            .iter()
            .filter(|s| s.zone == dirtiest)
            .map(|s| s.node.clone())
            .collect()
    }

    /// The Nodes carrying the carbon taint now; `None` if the apiserver did
    /// not answer or a Node is missing.
    fn tainted(&self) -> Option<Vec<String>> {
        let out = kubectl(&self.cp.kubeconfig, &["get", "nodes", "-o", "json"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let items = list["items"].as_array()?;
        if items.len() != self.slots.len() {
            return None;
        }
        Some(
            items
                .iter()
                .filter(|n| {
                    n["spec"]["taints"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["key"] == TAINT_KEY))
                })
                .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Waits until every Node's taint matches its zone's decision and stays
    /// so for [`STABLE`], every agent running; returns how long until it
    /// first matched for good.
    fn converge(&mut self) -> Option<Duration> {
        let started = Instant::now();
        let want = self.expected();
        let mut matched_since: Option<Instant> = None;
        while started.elapsed() < CONVERGENCE_WAIT {
            self.supervise();
            let now = Instant::now();
            let running = match &self.pods {
                Some(pods) => pods.all_ready(),
                None => self.slots.iter().all(|s| s.agent.is_some()),
            };
            if running && self.tainted().as_ref() == Some(&want) {
                let since = *matched_since.get_or_insert(now);
                if now - since >= STABLE {
                    return Some(since - started);
                }
            } else {
                matched_since = None;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }

    /// Ends the run: asks each agent what it believes, stops them, and
    /// returns the record with the audit log.
    pub fn finish(mut self) -> Record {
        let tainted = self.tainted().unwrap_or_default();
        let mut finals = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let agent = slot.agent.as_ref();
            let (node_tainted, leads) = match &self.pods {
                Some(pods) => pods.beliefs(&self.cp.kubeconfig, i),
                None => (
                    agent.and_then(|a| a.metric("carbon_kube_node_tainted")),
                    agent.and_then(|a| a.metric("carbon_kube_is_leader")),
                ),
            };
            finals.push((
                slot.node.clone(),
                tainted.contains(&slot.node),
                node_tainted,
                leads,
            ));
        }
        self.record.final_agents = finals;
        for slot in &mut self.slots {
            if let Some(agent) = &mut slot.agent {
                agent.kill();
            }
        }
        for i in 0..self.slots.len() {
            self.keep_log(i);
        }
        std::thread::sleep(Duration::from_secs(1));
        self.record.audit =
            std::fs::read_to_string(self.audit_dir.join("audit.log")).unwrap_or_default();
        std::mem::take(&mut self.record)
    }

    /// Every agent's log tail, for a failure report.
    pub fn logs(&self) -> String {
        if self.pods.is_some() {
            let out = kubectl(
                &self.cp.kubeconfig,
                &[
                    "-n",
                    NAMESPACE,
                    "logs",
                    "-l",
                    "app.kubernetes.io/name=carbon-kube",
                    "--prefix",
                    "--tail=15",
                ],
            );
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        self.slots
            .iter()
            .filter_map(|s| s.agent.as_ref())
            .map(|a| format!("--- {} ---\n{}", a.node, tail(&a.output(), 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts the foreign writer: until the returned flag is set, it adds and
    /// removes taints, labels and conditions carbon-kube does not own, on
    /// random Nodes, as the admin, the way other controllers do (taints with
    /// the resourceVersion read, conditions by strategic merge on their type).
    pub fn foreign_writer(&self, seed: u64) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let kubeconfig = self.cp.kubeconfig.clone();
        let nodes: Vec<String> = self.slots.iter().map(|s| s.node.clone()).collect();
        let handle = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut writes = 0;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.range(1000, 3000)));
                let node = rng.pick(&nodes).clone();
                if foreign_write(&kubeconfig, &node, &mut rng) {
                    writes += 1;
                }
            }
            writes
        });
        (stop, handle)
    }
}

/// One change by another controller; true when it was applied.
fn foreign_write(kubeconfig: &Path, node: &str, rng: &mut Rng) -> bool {
    let out = kubectl(kubeconfig, &["get", "node", node, "-o", "json"]);
    let Ok(current) = serde_json::from_slice::<Value>(&out.stdout) else {
        return false;
    };
    let patch_node = |args: &[&str], body: Value| {
        let body = body.to_string();
        let mut all = vec!["patch", "node", node];
        all.extend_from_slice(args);
        all.extend(["-p", &body]);
        kubectl(kubeconfig, &all).status.success()
    };
    match rng.below(3) {
        0 => {
            let key = format!("soak.example/foreign-{}", rng.below(2));
            let mut taints: Vec<Value> = current["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if taints.iter().any(|t| t["key"] == key.as_str()) {
                taints.retain(|t| t["key"] != key.as_str());
            } else {
                taints.push(json!({"key": key, "value": "x", "effect": "PreferNoSchedule"}));
            }
            patch_node(
                &["--type=merge"],
                json!({
                    "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                    "spec": {"taints": taints},
                }),
            )
        }
        1 => {
            let value = rng.range(0, 9).to_string();
            patch_node(
                &["--type=merge"],
                json!({"metadata": {"labels": {"soak.example/label": value}}}),
            )
        }
        _ => {
            let status = if rng.chance(50) { "True" } else { "False" };
            let now = Timestamp::now().to_string();
            patch_node(
                &["--subresource=status", "--type=strategic"],
                json!({"status": {"conditions": [{
                    "type": "SoakForeign", "status": status, "reason": "Soak",
                    "message": "written by the soak's foreign writer",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }]}}),
            )
        }
    }
}

/// A rolling upgrade under way: agent `next` (fleet order) is being replaced.
struct Roll {
    began: Instant,
    next: usize,
    step: RollStep,
}

enum RollStep {
    /// Until agent `next` runs, unfrozen, to be stopped.
    Waiting,
    /// SIGTERM sent at `since`; SIGKILL once the grace period is over.
    Stopping {
        agent: Agent,
        since: Instant,
        from: Timestamp,
    },
    /// Started on the new configuration at `since`; the next agent goes once
    /// this one is ready.
    Starting { since: Instant, from: Timestamp },
}

/// What happens at one moment of an episode (ordered as they go at one time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Begin(usize),
    Pod(usize),
    End(usize),
}

/// A fault in force, with what its end needs.
enum Active {
    Killed(usize, Timestamp),
    Frozen(usize, Timestamp),
    Paused(Timestamp),
    Cut(usize, Timestamp),
    Provider,
    Skewed(usize, Timestamp, i64),
    Deleted(usize),
    /// An agent pod deleted (its replacement is the DaemonSet's).
    PodDeleted,
    Done,
}
