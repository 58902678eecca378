//! Real worker nodes on this machine under the test control plane: per node its own
//! containerd (own root, state and socket) and a kubelet built from the same Go modules
//! as the control plane (`controlplane kubelet`), so DaemonSet pods run as real
//! containers from images assembled by `deploy/image.sh` and imported without a registry.
//!
//! `tests/nodes/host.sh` does the host plumbing (node IPs, bridges, cgroup roots, the
//! route to the apiserver, iptables, sysctls) and records it; this module owns the
//! processes. Dropping [`RealNodes`] — also while a test panics — stops everything and
//! restores the host; state left by a killed run is cleaned up before the next start.
//! One set of real nodes per machine at a time (a lock file serialises test processes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cluster::{ControlPlane, build_control_plane, tail, wait_for};

/// Where host.sh keeps the nodes' directories and the recorded host state.
const BASE: &str = "/var/lib/carbon-kube-nodes";
const LOCK: &str = "/var/lib/carbon-kube-nodes.lock";
/// The sandbox image's tag, as host.sh names it in containerd's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/carbon-kube/pause:1";
/// The grid-zone label the agents read.
pub const ZONE_LABEL: &str = "carbon-kube.io/grid-zone";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn host_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(repo_root().join("tests/nodes/host.sh"))
        .args(args)
        .output()
        .expect("running tests/nodes/host.sh");
    assert!(
        out.status.success(),
        "tests/nodes/host.sh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails (never skips) unless this machine can run real nodes, saying what is missing.
pub fn require_prerequisites() {
    let uid = Command::new("id").arg("-u").output().expect("running id");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "real nodes need root (kubelet, containerd, iptables and cgroups); CI runs as root: run the suite as root"
    );
    let install = "install them with `bash tests/tools/install.sh` as root (Debian: apt-get install containerd runc containernetworking-plugins iptables)";
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "iptables",
        "ip",
        "gcc",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is required for real nodes but is not on PATH: {install}"
        );
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new("/usr/lib/cni").join(plugin);
        assert!(
            path.exists(),
            "the CNI plugin {} is missing: {install}",
            path.display()
        );
    }
}

/// The release image and the pause image as docker-archive tars, built once per process
/// from the static release binary (deploy/build-static.sh, then deploy/image.sh).
pub struct Images {
    pub release: PathBuf,
    pub pause: PathBuf,
    pub binary: PathBuf,
}

pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let root = repo_root();
        let binary = super::deploy::build_static(&[]);
        let dir = root.join("target/images");
        std::fs::create_dir_all(&dir).expect("target/images");
        let image = |args: &[&str]| {
            let out = Command::new("bash")
                .arg(root.join("deploy/image.sh"))
                .args(args)
                .output()
                .expect("running deploy/image.sh");
            assert!(
                out.status.success(),
                "deploy/image.sh {args:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        };
        let release = dir.join("carbon-kube.tar");
        let pause = dir.join("pause.tar");
        image(&[
            "release",
            "--binary",
            binary.to_str().expect("utf-8 path"),
            "--out",
            release.to_str().expect("utf-8 path"),
        ]);
        image(&["pause", "--out", pause.to_str().expect("utf-8 path")]);
        Images {
            release,
            pause,
            binary,
        }
    })
}

/// Whether the host runs cgroup v1 (the kubelet then needs `failCgroupV1: false`).
pub fn host_is_cgroup_v1() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

pub struct RealNode {
    pub name: String,
    pub zone: String,
    /// 10.213.0.<index> on lo; pods get 10.214.<index>.0/24.
    pub index: u8,
    pub ip: String,
    pub dir: PathBuf,
    containerd: Child,
    kubelet: Child,
}

impl RealNode {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/containerd.sock")
    }

    /// The kubelet's cgroup root: pods are under `<hierarchy>/<root>/kubepods`.
    pub fn cgroup_root(&self) -> String {
        format!("carbon-kube-{}", self.name)
    }

    /// The kubelet's directory (pods' volumes are under `pods/<uid>/volumes`).
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(name)).unwrap_or_default()
    }

    /// `ctr` against this node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        ctr(&self.socket(), args)
    }
}

fn ctr(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("running ctr")
}

/// N real, Ready nodes; dropped: everything stopped and the host restored.
pub struct RealNodes {
    pub nodes: Vec<RealNode>,
    _lock: HostLock,
}

/// The machine-wide lock on real nodes: a `flock` child holds it while its stdin stays
/// open, so it is released when the lock is dropped or this process dies.
struct HostLock(Child);

impl HostLock {
    fn acquire() -> Self {
        use std::io::BufRead;
        let mut child = Command::new("flock")
            .args([
                "--exclusive",
                LOCK,
                "sh",
                "-c",
                "echo locked; exec cat >/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running flock (util-linux)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("flock stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading flock");
        assert_eq!(line.trim(), "locked", "flock {LOCK} failed");
        HostLock(child)
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl RealNodes {
    /// Starts one node per `(name, zone)`, labelled `carbon-kube.io/grid-zone=<zone>`,
    /// with both images imported, and waits until every node is Ready.
    pub fn start(cp: &ControlPlane, nodes: &[(&str, &str)]) -> Self {
        require_prerequisites();
        let images = images();
        let lock = HostLock::acquire();
        let api_port = cp
            .server
            .rsplit(':')
            .next()
            .expect("apiserver port")
            .to_string();
        // Also undoes whatever a killed run left behind.
        host_sh(&["prepare", &api_port]);
        let controlplane = build_control_plane();
        let mut started = RealNodes {
            nodes: Vec::new(),
            _lock: lock,
        };
        for (i, (name, zone)) in nodes.iter().enumerate() {
            let index = u8::try_from(i + 1).expect("fewer than 255 nodes");
            let node = start_node(cp, &controlplane, images, name, zone, index);
            started.nodes.push(node);
        }
        let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
        wait_for("every real node Ready", Duration::from_secs(90), || {
            names.iter().all(|n| node_ready(cp, n)).then_some(())
        });
        started
    }

    pub fn node(&self, name: &str) -> &RealNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no real node {name}"))
    }
}

fn node_ready(cp: &ControlPlane, name: &str) -> bool {
    let out = cp.kubectl(&[
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True"
}

fn spawn_logged(program: &Path, args: &[String], log: &Path, pid_file: &Path) -> Child {
    let file = File::create(log).expect("node log file");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    // host.sh kills it by this id if the test process dies without dropping RealNodes.
    std::fs::write(pid_file, child.id().to_string()).expect("pid file");
    child
}

fn start_node(
    cp: &ControlPlane,
    controlplane: &Path,
    images: &Images,
    name: &str,
    zone: &str,
    index: u8,
) -> RealNode {
    host_sh(&["node-up", name, &index.to_string()]);
    let dir = Path::new(BASE).join(name);
    let containerd = spawn_logged(
        Path::new("containerd"),
        &[
            "--config".into(),
            dir.join("containerd.toml").display().to_string(),
        ],
        &dir.join("logs/containerd.log"),
        &dir.join("containerd.pid"),
    );
    let ip = format!("10.213.0.{index}");
    let kubeconfig = dir.join("kubeconfig");
    let creds = Command::new(controlplane)
        .args(["node-credentials", "--dir"])
        .arg(&cp.dir)
        .args(["--node", name, "--out"])
        .arg(&kubeconfig)
        .output()
        .expect("controlplane node-credentials");
    assert!(
        creds.status.success(),
        "controlplane node-credentials: {}",
        String::from_utf8_lossy(&creds.stderr)
    );
    let config = dir.join("kubelet.yaml");
    std::fs::write(&config, kubelet_config(cp, &dir, name, &ip)).expect("kubelet config");

    // The kubelet starts only once containerd serves and the images are in, so that
    // no pod tries to pull a missing image. (A panic here leaves containerd to host.sh,
    // which stops it by its recorded id when RealNodes is dropped.)
    let socket = dir.join("run/containerd.sock");
    wait_for(
        &format!("containerd of {name} serving"),
        Duration::from_secs(30),
        || ctr(&socket, &["version"]).status.success().then_some(()),
    );
    for tar in [&images.pause, &images.release] {
        let out = ctr(
            &socket,
            &["images", "import", tar.to_str().expect("utf-8 path")],
        );
        assert!(
            out.status.success(),
            "ctr images import {} into {name}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kubelet = spawn_logged(
        controlplane,
        &[
            "kubelet".into(),
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet/pki").display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={ip}"),
            format!("--node-labels={ZONE_LABEL}={zone}"),
            "--v=1".into(),
        ],
        &dir.join("logs/kubelet.log"),
        &dir.join("kubelet.pid"),
    );
    RealNode {
        name: name.to_string(),
        zone: zone.to_string(),
        index,
        ip,
        dir,
        containerd,
        kubelet,
    }
}

/// The KubeletConfiguration of one node: cgroupfs under its own cgroup root, the
/// cluster CA for client certificates and webhook authn/authz (so `kubectl logs` and
/// `exec` work through the apiserver), and nothing that would evict or garbage-collect
/// the imported images on a busy development disk.
fn kubelet_config(cp: &ControlPlane, dir: &Path, name: &str, ip: &str) -> String {
    let cgroup_v1 = if host_is_cgroup_v1() {
        // Kubernetes 1.35 refuses cgroup v1 unless told otherwise.
        "failCgroupV1: false\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
healthzPort: 0
readOnlyPort: 0
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /carbon-kube-{name}
{cgroup_v1}authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDomain: cluster.local
failSwapOn: false
podLogsDir: {dir}/pod-logs
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
"#,
        socket = dir.join("run/containerd.sock").display(),
        ca = cp.dir.join("ca.crt").display(),
        dir = dir.display(),
    )
}

impl Drop for RealNodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "--- {} kubelet.log (tail) ---\n{}\n--- {} containerd.log (tail) ---\n{}",
                    node.name,
                    tail(&node.log("kubelet.log"), 25),
                    node.name,
                    tail(&node.log("containerd.log"), 15)
                );
            }
        }
        let started = Instant::now();
        for node in &mut self.nodes {
            let _ = node.kubelet.kill();
            let _ = node.kubelet.wait();
        }
        for node in &mut self.nodes {
            // host.sh kills the pods, their shims and containerd (also by its recorded
            // id, for a killed run), unmounts and removes what they left.
            let _ = Command::new("bash")
                .arg(repo_root().join("tests/nodes/host.sh"))
                .args(["node-down", &node.name])
                .status();
            let _ = node.containerd.kill();
            let _ = node.containerd.wait();
        }
        let _ = Command::new("bash")
            .arg(repo_root().join("tests/nodes/host.sh"))
            .arg("restore")
            .status();
        eprintln!(
            "real nodes: torn down and host restored in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A pod's cgroup directory in one hierarchy (`cpuacct`, `memory`, `pids`, or the v2
/// root as ""), whatever its QoS class; `None` while it has none.
pub fn find_pod_cgroup(node: &RealNode, hierarchy: &str, uid: &str) -> Option<PathBuf> {
    let kubepods = Path::new("/sys/fs/cgroup")
        .join(hierarchy)
        .join(node.cgroup_root())
        .join("kubepods");
    let name = format!("pod{uid}");
    [
        kubepods.join(&name),
        kubepods.join("burstable").join(&name),
        kubepods.join("besteffort").join(&name),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

pub fn pod_cgroup(node: &RealNode, hierarchy: &str, uid: &str) -> PathBuf {
    find_pod_cgroup(node, hierarchy, uid).unwrap_or_else(|| {
        panic!(
            "no cgroup for pod {uid} under {}/{}",
            hierarchy,
            node.cgroup_root()
        )
    })
}

/// Every process in a pod's cgroup: its sandbox's pause process (which holds the pod's
/// namespaces) and its containers'; empty while it has none.
pub fn pod_processes(node: &RealNode, uid: &str) -> Vec<u32> {
    let Some(pod_dir) = find_pod_cgroup(node, "pids", uid) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(&pod_dir).into_iter().flatten().flatten() {
        if let Ok(procs) = std::fs::read_to_string(entry.path().join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.parse::<u32>().ok()));
        }
    }
    pids
}

fn is_pause(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"/pause"))
}

/// The pod's container process (the one that is not the sandbox's pause), if it runs.
pub fn container_pid(node: &RealNode, uid: &str) -> Option<u32> {
    pod_processes(node, uid).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.starts_with(b"/pause"))
    })
}

/// The pod's sandbox (pause) process, which holds its namespaces for the pod's life.
pub fn sandbox_pid(node: &RealNode, uid: &str) -> Option<u32> {
    pod_processes(node, uid)
        .into_iter()
        .find(|pid| is_pause(*pid))
}

/// A process of a pod's container: the first pid in the pod's cgroup below its sandbox.
pub fn pod_pid(node: &RealNode, pod: &serde_json::Value) -> u32 {
    let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    container_pid(node, uid).unwrap_or_else(|| panic!("no container process in pod {uid}"))
}

/// An agent pod's metrics, scraped from the host at the pod's IP.
pub fn pod_metrics(pod: &serde_json::Value) -> Option<String> {
    let ip = pod["status"]["podIP"].as_str()?;
    super::cluster::http_get(&format!("{ip}:9464"), "/metrics")
}

/// The first sample of `name` whose labels contain `label`.
pub fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !rest.starts_with(['{', ' ']) || !line.contains(label) {
            return None;
        }
        line.rsplit_once(' ')?.1.parse().ok()
    })
}
