//! The soak's fleet on real nodes: the agents are the chart's DaemonSet pods
//! (`helm install` on five real kubelets), faults reach them as they would in
//! a cluster: SIGKILL or SIGSTOP of the container's process on the host (the
//! kubelet restarts a killed one), `kubectl delete pod` (the DaemonSet
//! replaces it), a cut of the pod's own network namespace from the apiserver
//! (iptables), a real `helm upgrade`. What the pods go through is read from
//! the apiserver: a node's agent that is not Ready, or whose container or pod
//! changed, could not act in between, and a restart the harness did not cause
//! is an exit on its own.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::chaos::kubectl;
use super::invariants::Impairment;
use super::support::carbon_api::CarbonApi;
use super::support::cluster::{ControlPlane, signal, tool};
use super::support::deploy::{NAMESPACE, RELEASE, chart_dir, helm_in};
use super::support::nodes::{RealNodes, container_pid, pod_metrics, sample, sandbox_pid};

const AGENT_SELECTOR: &str = "app.kubernetes.io/name=carbon-kube";
/// The chart's terminationGracePeriodSeconds: a deleted pod stops acting when
/// it is marked for deletion, this long before its deletionTimestamp.
const GRACE: SignedDuration = SignedDuration::from_secs(30);
/// How often the harness reads the agent pods.
const POLL: Duration = Duration::from_secs(1);

/// The chart's values for the soak: what the process fleet's flags say.
fn values(api: &CarbonApi, (log, dwell): (&str, &str)) -> Vec<String> {
    api.helm_values()
        .into_iter()
        .chain([
            "policy=relative".into(),
            "maxTaintedFraction=0.5".into(),
            "maxAge=30s".into(),
            "leaseDuration=4s".into(),
            "pollInterval=2s".into(),
            "sampleInterval=1s".into(),
            format!("dwell={dwell}"),
            // --set splits on unescaped commas.
            format!("log.level={}", log.replace(',', "\\,")),
            "deferral.enabled=true".into(),
            "deferral.margin=0s".into(),
            "extraArgs={--breaker-cooldown=2s}".into(),
            // The test control plane serves the CRD already.
            "crds.install=false".into(),
        ])
        .flat_map(|v| ["--set".to_string(), v])
        .collect()
}

/// A pod's uid and its container's restarts.
type PodKey = (String, u64);

/// How long after the harness killed or thawed an agent a restart of its pod
/// is still the harness's doing (the liveness probe: 3 × 20 s, with margin).
const CAUSED_FOR: Duration = Duration::from_secs(90);

/// One node's agent pod as last read.
#[derive(Default)]
struct Seen {
    /// Its live pod as last read, Ready or not.
    last: Option<PodKey>,
    /// Whether it was Ready then.
    ready: bool,
    /// Since when it could not act, while it cannot.
    down: Option<Timestamp>,
    /// A pod the harness killed or froze, and when: its restart is no exit
    /// on its own.
    caused: Option<(String, Instant)>,
    /// The container process the harness froze.
    frozen: Option<u32>,
    /// The pod process whose network namespace the harness cut.
    cut: Option<u32>,
}

pub struct PodFleet {
    pub nodes: RealNodes,
    seen: Vec<Seen>,
    polled: Instant,
    /// A `helm upgrade` under way, since when.
    upgrade: Option<(Child, Instant)>,
}

impl Drop for PodFleet {
    fn drop(&mut self) {
        for pid in self.seen.iter().filter_map(|s| s.frozen) {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        if let Some((mut child, _)) = self.upgrade.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl PodFleet {
    /// `helm install` of the chart on `nodes`; returns once every node runs a
    /// Ready agent pod.
    pub fn install(
        cp: &ControlPlane,
        nodes: RealNodes,
        api: &CarbonApi,
        generation: (&str, &str),
    ) -> PodFleet {
        let chart = chart_dir();
        helm_in(
            cp,
            &[
                "install",
                RELEASE,
                chart.to_str().expect("utf-8 path"),
                "-n",
                NAMESPACE,
                "--create-namespace",
                "--wait",
                "--timeout=4m",
            ],
            &values(api, generation),
        );
        let mut fleet = PodFleet {
            seen: (0..nodes.nodes.len()).map(|_| Seen::default()).collect(),
            nodes,
            polled: Instant::now(),
            upgrade: None,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !fleet.all_ready() {
            assert!(
                Instant::now() < deadline,
                "the chart's agent pods were not all Ready within 3 min"
            );
            fleet.poll(&cp.kubeconfig);
            std::thread::sleep(POLL);
        }
        fleet
    }

    fn pods(kubeconfig: &Path) -> Option<Vec<Value>> {
        let out = kubectl(
            kubeconfig,
            &[
                "-n",
                NAMESPACE,
                "get",
                "pods",
                "-l",
                AGENT_SELECTOR,
                "-o",
                "json",
            ],
        );
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        list["items"].as_array().cloned()
    }

    /// The live (not terminating) agent pod on node `i`.
    fn live_pod(&self, pods: &[Value], i: usize) -> Option<Value> {
        let name = &self.nodes.nodes[i].name;
        pods.iter()
            .find(|p| {
                p["spec"]["nodeName"] == name.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .cloned()
    }

    fn pod_now(&self, kubeconfig: &Path, i: usize) -> Option<Value> {
        self.live_pod(&Self::pods(kubeconfig)?, i)
    }

    /// Reads the agent pods (at most every [`POLL`]): returns the windows in
    /// which an agent could not act that ended now, and its exits on its own.
    pub fn poll(&mut self, kubeconfig: &Path) -> (Vec<Impairment>, Vec<(usize, Timestamp)>) {
        let mut ended: Vec<(usize, Timestamp)> = Vec::new();
        let mut exits = Vec::new();
        if self.polled.elapsed() < POLL {
            return (Vec::new(), exits);
        }
        let before =
            Timestamp::now() - SignedDuration::try_from(self.polled.elapsed()).unwrap_or_default();
        self.polled = Instant::now();
        let Some(pods) = Self::pods(kubeconfig) else {
            return (Vec::new(), exits);
        };
        let now = Timestamp::now();
        for i in 0..self.seen.len() {
            let name = self.nodes.nodes[i].name.clone();
            let live = self.live_pod(&pods, i);
            let terminating = pods.iter().find(|p| {
                p["spec"]["nodeName"] == name.as_str()
                    && !p["metadata"]["deletionTimestamp"].is_null()
            });
            let seen = &mut self.seen[i];
            let key: Option<PodKey> = live.as_ref().map(|p| {
                (
                    p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_u64()
                        .unwrap_or(0),
                )
            });
            if seen
                .caused
                .as_ref()
                .is_some_and(|(_, at)| seen.frozen.is_none() && at.elapsed() > CAUSED_FOR)
            {
                seen.caused = None;
            }
            let restarted = matches!((&key, &seen.last),
                (Some((uid, n)), Some((was_uid, was))) if uid == was_uid && n > was);
            if restarted {
                let ours = seen
                    .caused
                    .as_ref()
                    .is_some_and(|(uid, _)| Some(uid) == key.as_ref().map(|k| &k.0));
                if ours {
                    seen.caused = None;
                } else {
                    exits.push((i, now));
                }
            }
            let ready = live.as_ref().is_some_and(is_ready) && seen.frozen.is_none();
            let changed = key != seen.last;
            seen.last = key;
            if !ready {
                if seen.down.is_none() {
                    // Marked for deletion: it stopped acting then.
                    let deleted = terminating
                        .and_then(|p| p["metadata"]["deletionTimestamp"].as_str())
                        .and_then(|t| t.parse::<Timestamp>().ok())
                        .map(|t| t - GRACE);
                    seen.down = Some(deleted.map_or(before, |d| d.min(before)));
                }
                seen.ready = false;
                continue;
            }
            match seen.down.take() {
                Some(from) => ended.push((i, from)),
                // Replaced or restarted between two reads.
                None if changed && seen.ready => ended.push((i, before)),
                None => {}
            }
            seen.ready = true;
        }
        let ended = ended
            .into_iter()
            .map(|(i, from)| Impairment {
                node: Some(self.nodes.nodes[i].name.clone()),
                from,
                to: now,
                skew_secs: 0,
            })
            .collect();
        (ended, exits)
    }

    /// Every node runs a Ready agent pod, as last read.
    pub fn all_ready(&self) -> bool {
        self.seen.iter().all(|s| s.ready && s.down.is_none())
    }

    /// SIGKILL of node `i`'s agent container on the host; the kubelet starts
    /// it again.
    pub fn kill(&mut self, kubeconfig: &Path, i: usize) -> Option<()> {
        let pod = self.pod_now(kubeconfig, i)?;
        let uid = pod["metadata"]["uid"].as_str()?.to_string();
        let pid = container_pid(&self.nodes.nodes[i], &uid)?;
        signal(pid, "KILL");
        let seen = &mut self.seen[i];
        seen.caused = Some((uid, Instant::now()));
        seen.down.get_or_insert(Timestamp::now());
        Some(())
    }

    /// `kubectl delete pod` of node `i`'s agent; the DaemonSet replaces it.
    pub fn delete(&mut self, kubeconfig: &Path, i: usize) -> Option<()> {
        let pod = self.pod_now(kubeconfig, i)?;
        let name = pod["metadata"]["name"].as_str()?;
        let out = kubectl(
            kubeconfig,
            &["-n", NAMESPACE, "delete", "pod", name, "--wait=false"],
        );
        out.status.success().then(|| {
            self.seen[i].down.get_or_insert(Timestamp::now());
        })
    }

    /// SIGSTOP of node `i`'s agent container.
    pub fn freeze(&mut self, kubeconfig: &Path, i: usize) -> Option<()> {
        let pod = self.pod_now(kubeconfig, i)?;
        let uid = pod["metadata"]["uid"].as_str()?;
        let pid = container_pid(&self.nodes.nodes[i], uid)?;
        signal(pid, "STOP");
        let seen = &mut self.seen[i];
        seen.frozen = Some(pid);
        seen.caused = Some((uid.to_string(), Instant::now()));
        Some(())
    }

    pub fn thaw(&mut self, i: usize) {
        let seen = &mut self.seen[i];
        if let Some(pid) = seen.frozen.take() {
            // The liveness probe may have had the kubelet kill it meanwhile.
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
            if let Some((_, at)) = &mut seen.caused {
                *at = Instant::now();
            }
        }
    }

    /// Rejects node `i`'s agent pod's connections to the apiserver (the
    /// `kubernetes` Service) in its own network namespace, which the
    /// sandbox holds across container restarts.
    pub fn cut(&mut self, kubeconfig: &Path, i: usize) -> Option<()> {
        let pod = self.pod_now(kubeconfig, i)?;
        let pid = sandbox_pid(&self.nodes.nodes[i], pod["metadata"]["uid"].as_str()?)?;
        iptables(pid, "-I").then(|| self.seen[i].cut = Some(pid))
    }

    /// Undoes [`cut`]; a pod replaced meanwhile took its namespace along.
    pub fn uncut(&mut self, i: usize) {
        if let Some(pid) = self.seen[i].cut.take() {
            iptables(pid, "-D");
        }
    }

    /// Whether node `i`'s agent pod says it leads.
    pub fn leads(&self, kubeconfig: &Path, i: usize) -> bool {
        self.seen[i].frozen.is_none()
            && self
                .pod_now(kubeconfig, i)
                .and_then(|p| pod_metrics(&p))
                .and_then(|m| sample(&m, "carbon_kube_is_leader", ""))
                == Some(1.0)
    }

    /// Node `i`'s agent's `carbon_kube_node_tainted` and `carbon_kube_is_leader`.
    pub fn beliefs(&self, kubeconfig: &Path, i: usize) -> (Option<f64>, Option<f64>) {
        let metrics = self.pod_now(kubeconfig, i).and_then(|p| pod_metrics(&p));
        let get = |name| metrics.as_deref().and_then(|m| sample(m, name, ""));
        (
            get("carbon_kube_node_tainted"),
            get("carbon_kube_is_leader"),
        )
    }

    /// Starts a real `helm upgrade` to `generation`'s values; the DaemonSet
    /// rolls its pods (maxUnavailable 1) while other faults go on.
    pub fn upgrade(&mut self, cp: &ControlPlane, api: &CarbonApi, generation: (&str, &str)) {
        let chart = chart_dir();
        let child = Command::new(tool("helm"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args([
                "upgrade",
                RELEASE,
                chart.to_str().expect("utf-8 path"),
                "-n",
                NAMESPACE,
                "--wait",
                "--timeout=5m",
            ])
            .args(values(api, generation))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("helm upgrade");
        self.upgrade = Some((child, Instant::now()));
    }

    /// Once the upgrade under way has ended (helm done, and the DaemonSet
    /// rolled out: every pod updated and available): how long it took, and
    /// helm's complaint if it failed.
    pub fn upgrade_done(&mut self, kubeconfig: &Path) -> Option<(Duration, Option<String>)> {
        let (child, since) = self.upgrade.as_mut()?;
        child.try_wait().expect("helm upgrade")?;
        // helm waits up to 5 min itself; a rollout stuck past that is its failure.
        if !rolled_out(kubeconfig) && since.elapsed() < Duration::from_secs(360) {
            return None;
        }
        let took = since.elapsed();
        let (child, _) = self.upgrade.take().expect("an upgrade");
        let out = child.wait_with_output().expect("helm upgrade");
        let failed =
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned());
        Some((took, failed))
    }

    pub fn upgrading(&self) -> bool {
        self.upgrade.is_some()
    }
}

/// The chart's DaemonSet has rolled out its latest template on every node.
fn rolled_out(kubeconfig: &Path) -> bool {
    let out = kubectl(
        kubeconfig,
        &["-n", NAMESPACE, "get", "daemonset", RELEASE, "-o", "json"],
    );
    let Ok(ds) = serde_json::from_slice::<Value>(&out.stdout) else {
        return false;
    };
    let status = &ds["status"];
    let desired = status["desiredNumberScheduled"].as_u64();
    status["observedGeneration"] == ds["metadata"]["generation"]
        && desired.is_some()
        && status["updatedNumberScheduled"].as_u64() == desired
        && status["numberAvailable"].as_u64() == desired
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Adds (`-I`) or removes (`-D`) the rule rejecting the apiserver in the
/// network namespace of process `pid`.
fn iptables(pid: u32, op: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "iptables",
            "-w",
            op,
            "OUTPUT",
            "-d",
            "10.0.0.1",
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}
