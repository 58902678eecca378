//! Real Kueue (v0.17.0: its own controller-manager main, built from the Go module by
//! tests/controlplane/build.sh next to the control plane, with the same dependency versions)
//! against a [`ControlPlane`].
//!
//! The apiserver cannot reach a Service (no kube-proxy), so Kueue serves its webhooks on
//! 127.0.0.1 with the control plane's own serving certificate (its SANs include 127.0.0.1,
//! signed by the cluster CA), internal certificate management off, and the harness rewrites
//! every webhook's and conversion's `clientConfig` from the Service to that URL with the CA
//! as `caBundle`. Kueue runs with the admin kubeconfig, not its own RBAC.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::cluster::{
    ControlPlane, build_control_plane, free_port, http_get, tail, terminate, wait_for,
};

/// Kueue's namespace, as in its release manifests.
pub const NAMESPACE: &str = "kueue-system";
/// The API group and the version the tests and the agent use (Kueue's storage version).
pub const API: &str = "kueue.x-k8s.io/v1beta2";

/// The webhooks installed: those of Kueue's own APIs and of the one integration enabled
/// (batch/v1 Job). The others (pods, Deployments, ...) would intercept every pod of the
/// control plane for integrations this harness does not enable.
const WEBHOOK_GROUPS: [&str; 2] = ["kueue.x-k8s.io", "batch"];

/// Kueue's binary, and what tests/controlplane/build.sh copied from the same module
/// (`crd/`, `webhooks.yaml`).
fn built() -> (PathBuf, PathBuf) {
    let dir = build_control_plane()
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    (dir.join("kueue"), dir.join("kueue-config"))
}

pub struct Kueue {
    child: Child,
    pub log: PathBuf,
    pub webhook_port: u16,
    pub health_port: u16,
}

impl Kueue {
    /// Installs Kueue's CRDs, starts its controller manager, waits until it is ready, then
    /// registers its webhooks and waits until the apiserver calls them.
    pub fn start(cp: &ControlPlane) -> Self {
        Self::start_with(cp, "")
    }

    /// Like [`Kueue::start`], with more of Kueue's Configuration (YAML lines at top level).
    pub fn start_with(cp: &ControlPlane, extra_config: &str) -> Self {
        let (binary, assets) = built();
        install_crds(cp, &assets.join("crd"));
        let _ = cp.kubectl(&["create", "namespace", NAMESPACE]);

        let dir = cp.dir.join("kueue");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("kueue dir");
        for (from, to) in [("apiserver.crt", "tls.crt"), ("apiserver.key", "tls.key")] {
            std::fs::copy(cp.dir.join(from), certs.join(to)).expect("serving certificate");
        }
        let (webhook_port, health_port, metrics_port) = (free_port(), free_port(), free_port());
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: config.kueue.x-k8s.io/v1beta2\n\
                 kind: Configuration\n\
                 namespace: {NAMESPACE}\n\
                 health:\n  healthProbeBindAddress: 127.0.0.1:{health_port}\n\
                 metrics:\n  bindAddress: 127.0.0.1:{metrics_port}\n\
                 webhook:\n  host: 127.0.0.1\n  port: {webhook_port}\n  certDir: {}\n\
                 leaderElection:\n  leaderElect: false\n\
                 internalCertManagement:\n  enable: false\n\
                 integrations:\n  frameworks: [\"batch/job\"]\n\
                 {extra_config}\n",
                certs.display()
            ),
        )
        .expect("kueue config");
        let log = dir.join("kueue.log");
        let file = std::fs::File::create(&log).expect("kueue log");
        let child = Command::new(&binary)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            // Its on-demand visibility API server binds a fixed port: off, so that
            // several control planes can each run a Kueue.
            .arg("--feature-gates=VisibilityOnDemand=false")
            .env("KUEUE_METRICS_CERT_DIR", &certs)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting kueue");
        let mut kueue = Self {
            child,
            log,
            webhook_port,
            health_port,
        };
        kueue.wait_ready();
        let ca = std::fs::read(cp.dir.join("ca.crt")).expect("cluster CA");
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let base = format!("https://127.0.0.1:{webhook_port}");
        register_webhooks(cp, &assets.join("webhooks.yaml"), &base, &ca);
        enable_conversion(cp, &assets.join("crd"), &base, &ca);
        // A server-side dry run of a queued Job comes back suspended once the
        // apiserver calls Kueue's Job webhook.
        let probe = dir.join("probe-job.json");
        std::fs::write(
            &probe,
            job("webhook-probe", "default", "probe", 1, "100m").to_string(),
        )
        .expect("probe Job");
        let probe = probe.to_str().expect("utf-8 path");
        wait_for(
            "Kueue's Job webhook to suspend a queued Job",
            Duration::from_secs(60),
            || {
                let out = cp.kubectl(&["create", "--dry-run=server", "-o", "json", "-f", probe]);
                let job: Value = serde_json::from_slice(&out.stdout).ok()?;
                (job["spec"]["suspend"] == json!(true)).then_some(())
            },
        );
        kueue
    }

    fn wait_ready(&mut self) {
        let addr = format!("127.0.0.1:{}", self.health_port);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if http_get(&addr, "/readyz").is_some() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kueue exited ({status}) before it was ready; log tail:\n{}",
                    tail(&self.output(), 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "Kueue not ready after 120 s; log tail:\n{}",
                tail(&self.output(), 40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kueue {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!("--- kueue log (tail) ---\n{}", tail(&self.output(), 40));
        }
    }
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (built by tests/controlplane/build.sh)",
            path.display()
        )
    });
    yaml_serde::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("Kueue YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn crd_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (built by tests/controlplane/build.sh)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Server-side: the Workload CRD is larger than client-side apply's annotation allows.
fn install_crds(cp: &ControlPlane, dir: &Path) {
    for file in crd_files(dir) {
        cp.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=kueue-harness",
            "-f",
            file.to_str().expect("utf-8 path"),
        ]);
    }
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
}

/// Kueue's webhook configurations, each `service` clientConfig turned into a URL on
/// 127.0.0.1 with the cluster CA; only the webhooks of [`WEBHOOK_GROUPS`].
fn register_webhooks(cp: &ControlPlane, file: &Path, base: &str, ca: &str) {
    for mut config in yaml_documents(file) {
        let webhooks = config["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|w| {
                w["rules"].as_array().into_iter().flatten().any(|r| {
                    r["apiGroups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|g| WEBHOOK_GROUPS.contains(&g.as_str().unwrap_or_default()))
                })
            })
            .map(|mut w| {
                let path = w["clientConfig"]["service"]["path"]
                    .as_str()
                    .expect("a webhook path")
                    .to_string();
                w["clientConfig"] = json!({ "url": format!("{base}{path}"), "caBundle": ca });
                w
            })
            .collect::<Vec<_>>();
        assert!(
            !webhooks.is_empty(),
            "no Kueue webhook for {WEBHOOK_GROUPS:?}"
        );
        config["webhooks"] = Value::from(webhooks);
        config["metadata"]["name"] = json!(format!(
            "kueue-{}",
            config["metadata"]["name"].as_str().unwrap_or_default()
        ));
        cp.apply(&config.to_string());
    }
}

/// The CRDs whose versions Kueue converts (v1beta1 ⇄ v1beta2) get its conversion webhook.
fn enable_conversion(cp: &ControlPlane, dir: &Path, base: &str, ca: &str) {
    for file in crd_files(dir) {
        for crd in yaml_documents(&file) {
            let versions = crd["spec"]["versions"].as_array().map_or(0, Vec::len);
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            if versions < 2 || !CONVERTED.contains(&name) {
                continue;
            }
            let patch = json!({ "spec": { "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": { "url": format!("{base}/convert"), "caBundle": ca },
                    "conversionReviewVersions": ["v1"],
                },
            }}});
            cp.kubectl_ok(&[
                "patch",
                "crd",
                name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ]);
        }
    }
}

/// The CRDs Kueue's release kustomization patches with its conversion webhook.
const CONVERTED: [&str; 5] = [
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "cohorts.kueue.x-k8s.io",
    "workloads.kueue.x-k8s.io",
    "multikueueclusters.kueue.x-k8s.io",
];

/// A ResourceFlavor, a ClusterQueue with `cpu` of quota (and `checks`, AdmissionCheck
/// names) and a LocalQueue `queue` in `namespace` pointing at it.
pub fn queues(
    cluster_queue: &str,
    queue: &str,
    namespace: &str,
    cpu: &str,
    checks: &[&str],
) -> String {
    let flavor = json!({
        "apiVersion": API, "kind": "ResourceFlavor",
        "metadata": { "name": "default-flavor" },
    });
    let mut spec = json!({
        "namespaceSelector": {},
        "resourceGroups": [{
            "coveredResources": ["cpu", "memory"],
            "flavors": [{ "name": "default-flavor", "resources": [
                { "name": "cpu", "nominalQuota": cpu },
                { "name": "memory", "nominalQuota": "64Gi" },
            ]}],
        }],
    });
    if !checks.is_empty() {
        spec["admissionChecksStrategy"] = json!({
            "admissionChecks": checks.iter().map(|c| json!({ "name": c })).collect::<Vec<_>>()
        });
    }
    let cq = json!({
        "apiVersion": API, "kind": "ClusterQueue",
        "metadata": { "name": cluster_queue }, "spec": spec,
    });
    let lq = json!({
        "apiVersion": API, "kind": "LocalQueue",
        "metadata": { "name": queue, "namespace": namespace },
        "spec": { "clusterQueue": cluster_queue },
    });
    [flavor, cq, lq]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A batch/v1 Job in `queue`: `parallelism` pods of `cpu` each.
pub fn job(name: &str, namespace: &str, queue: &str, parallelism: u32, cpu: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": { "kueue.x-k8s.io/queue-name": queue },
        },
        "spec": {
            "parallelism": parallelism, "completions": parallelism,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "work", "image": "busybox", "command": ["true"],
                    "resources": { "requests": { "cpu": cpu, "memory": "64Mi" } },
                }],
            }},
        },
    })
}

/// The Workload Kueue made for a Job (its owner).
pub fn workload_of(cp: &ControlPlane, namespace: &str, job: &str) -> Option<Value> {
    let list = cp.kubectl_json(&["get", "workloads.kueue.x-k8s.io", "-n", namespace]);
    list["items"].as_array()?.iter().find_map(|w| {
        w["metadata"]["ownerReferences"]
            .as_array()?
            .iter()
            .any(|o| o["kind"] == "Job" && o["name"] == job)
            .then(|| w.clone())
    })
}

/// The status of a Workload condition (`Admitted`, `QuotaReserved`, ...).
pub fn condition<'a>(workload: &'a Value, type_: &str) -> Option<&'a Value> {
    workload["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn is_true(workload: &Value, type_: &str) -> bool {
    condition(workload, type_).is_some_and(|c| c["status"] == "True")
}
