//! carbon-kube on real nodes: kubelet and containerd on this machine run the DaemonSet's
//! pods as containers from the release image, assembled by `deploy/image.sh` and imported
//! without a registry. Needs root (CI runs as root) and the packages that
//! `tests/tools/install.sh` installs; without them it fails and says what is missing.
//!
//! One cluster of real nodes serves the checks in order (each leaves it as it found it),
//! so the suite adds minutes, not tens of minutes.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use support::carbon_api::{CarbonApi, EM};
use support::cluster::{ControlPlane, tool, wait_for};
use support::deploy::{
    CLASS_LABEL, LEASE_POLICY, NAMESPACE, NODE_POLICY, RELEASE, Verdict, carbon_marks, chart_dir,
    documents, helm_in, helm_ok, repo_root, template_ok, write_token_kubeconfig,
};
use support::nodes::{
    PAUSE_IMAGE, RealNode, RealNodes, images, pod_cgroup, pod_metrics, pod_pid, sample,
};

#[allow(dead_code)]
#[path = "observability/prometheus.rs"]
mod prometheus;

const AGENT_SELECTOR: &str = "app.kubernetes.io/name=carbon-kube";
const NODES: [(&str, &str); 3] = [("rn-1", "DE"), ("rn-2", "FR"), ("rn-3", "PL")];

// ---------------------------------------------------------------------------
// The image against the Dockerfile.
// ---------------------------------------------------------------------------

/// The instructions of the Dockerfile's final stage, continuation lines joined.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (word, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (word.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let from = instructions
        .iter()
        .rposition(|(word, _)| word == "FROM")
        .expect("a FROM in the Dockerfile");
    instructions[from..].to_vec()
}

/// `tar -tv` of a layer, as (path, mode string, owner "uid/gid").
fn layer_entries(layer: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(layer)
        .output()
        .expect("running tar");
    assert!(out.status.success(), "tar -tvf {}", layer.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.last().unwrap_or(&"").trim_end_matches('/').to_string();
            (path, f[0].to_string(), f[1].to_string())
        })
        .collect()
}

#[test]
fn release_image_is_the_dockerfiles_final_stage() {
    let images = images();
    let dir = support::cluster::temp_dir("ck-image");
    let untar = |archive: &Path, into: &Path| {
        let status = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .status()
            .expect("running tar");
        assert!(status.success(), "tar -xf {}", archive.display());
    };
    untar(&images.release, &dir);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
            .expect("manifest.json");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .expect("image config");
    let layers = manifest[0]["Layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer = dir.join(layers[0].as_str().unwrap());
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    untar(&layer, &rootfs);
    let entries = layer_entries(&layer);
    let entry = |path: &str| {
        entries
            .iter()
            .find(|(p, _, _)| p == path)
            .unwrap_or_else(|| panic!("{path} is not in the image: {entries:?}"))
    };
    let cfg = &config["config"];

    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let stage = final_stage(&dockerfile);
    for (word, args) in &stage {
        match word.as_str() {
            // deploy/image.sh reproduces this base: anything else needs the script changed.
            "FROM" => assert_eq!(
                args, "gcr.io/distroless/static-debian12:nonroot",
                "the Dockerfile's base changed: make deploy/image.sh reproduce it"
            ),
            "COPY" => {
                let parts: Vec<&str> = args.split_whitespace().collect();
                let (src, dst) = (parts[parts.len() - 2], parts[parts.len() - 1]);
                assert_eq!(
                    src, "/out/carbon-kube",
                    "COPY source is the build-static.sh output"
                );
                let (_, mode, owner) = entry(dst.trim_start_matches('/'));
                assert!(mode.starts_with("-rwx"), "{dst} executable: {mode}");
                assert_eq!(owner, "0/0", "{dst} owned by root, as COPY does");
                let copied = std::fs::read(rootfs.join(dst.trim_start_matches('/'))).unwrap();
                assert!(
                    copied == std::fs::read(&images.binary).unwrap(),
                    "{dst} in the image is the static release binary"
                );
            }
            "USER" => assert_eq!(cfg["User"], args.as_str(), "USER"),
            "EXPOSE" => {
                for port in args.split_whitespace() {
                    let key = if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    };
                    assert!(
                        cfg["ExposedPorts"].get(&key).is_some(),
                        "EXPOSE {port}: {cfg}"
                    );
                }
            }
            "ENTRYPOINT" => {
                let want: Value = serde_json::from_str(args).expect("ENTRYPOINT in JSON form");
                assert_eq!(cfg["Entrypoint"], want, "ENTRYPOINT");
            }
            other => panic!(
                "deploy/image.sh does not reproduce `{other} {args}` of the Dockerfile's final stage"
            ),
        }
    }
    assert!(stage.iter().any(|(w, _)| w == "ENTRYPOINT"));

    // What distroless/static-debian12:nonroot promises: the nonroot user, CA
    // certificates, a writable /tmp, its environment and working directory; no shell.
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let ca = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(ca.matches("BEGIN CERTIFICATE").count() > 50, "a CA bundle");
    assert_eq!(entry("home/nonroot").2, "65532/65532");
    assert!(entry("tmp").1.starts_with("drwxrwxrwt"), "/tmp is 1777");
    assert!(!rootfs.join("bin/sh").exists(), "no shell");
    assert_eq!(cfg["WorkingDir"], "/home/nonroot");
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"));
    assert_eq!(config["os"], "linux");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// One cluster of real nodes, checks in order.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbon_kube_runs_on_real_nodes() {
    // The static release binary (which CI builds anyway) and the images first, so the
    // suite's own wall time is measured apart from a release build.
    let build = Instant::now();
    tokio::task::block_in_place(images);
    eprintln!("images ready after {:.1}s", build.elapsed().as_secs_f64());
    let started = Instant::now();
    let host_before = host_state();
    let cp = tokio::task::block_in_place(ControlPlane::start);
    let nodes = tokio::task::block_in_place(|| RealNodes::start(&cp, &NODES));
    eprintln!(
        "{} real nodes Ready after {:.1}s",
        nodes.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    // The carbon API on the first node's IP, which every pod reaches through its node.
    let api = CarbonApi::start_on(&nodes.nodes[0].ip).await;
    for (zone, grams) in [("DE", 100.0), ("FR", 80.0), ("PL", 120.0)] {
        api.set_intensity(zone, grams);
    }
    tokio::task::block_in_place(|| {
        let mut step = Instant::now();
        let mut done = |what: &str| {
            eprintln!("ok: {what} ({:.1}s)", step.elapsed().as_secs_f64());
            step = Instant::now();
        };
        manifests_run_an_agent_on_every_node(&cp, &nodes);
        done("kubectl apply --server-side -f deploy/manifests/: agents Ready on every node");
        the_agents_token_is_confined_by_the_admission_policies(&cp, &nodes);
        done("admission policies hold with the kubelet-mounted token, from the pod network");
        manifests_deleted(&cp);
        done("kubectl delete -f deploy/manifests/");

        helm_install_runs_agents_that_reach_the_carbon_api(&cp, &nodes, &api);
        done("helm install: agents Ready, carbon API reached from the pods");
        movable_pods_on_the_soon_dirty_node(&cp);
        a_dirty_zone_taints_its_node_and_work_lands_on_green_nodes(&cp, &api);
        done("dirty zone tainted, describe node, Deployment on green nodes");
        migration_is_carried_out_by_the_kubelet_within_the_budget(&cp);
        done("migration: budget holds, evicted pods replaced on green nodes");
        pod_series_come_from_real_cgroups_and_go_with_the_pods(&cp);
        done("per-pod series from real pod cgroups, gone with the pods");
        prometheus_scrapes_the_agent_pods_as_the_pod_monitor_says(&cp, &nodes);
        done("Prometheus scrapes the agent pods as the PodMonitor says");
        // The agents have run since `helm install`; the next checks replace them.
        the_agents_footprint_fits_the_charts_resources(&cp, &nodes);
        done("agent CPU and memory from its cgroup within the chart's resources");
        deleted_agent_pods_fail_over_and_recover(&cp, &nodes);
        done("leader and follower pods deleted: failover, replaced, no flap");
        helm_upgrade_rolls_with_one_leader_and_no_flap(&cp, &nodes, &api);
        done("helm upgrade: one leader at a time, no flap");
        helm_uninstall_cleans_up_with_a_real_job(&cp, &nodes);
        done("helm uninstall: cleanup Job ran as a pod, nodes clean");
        drop(nodes);
        let host_after = host_state();
        for (what, before) in &host_before {
            assert_eq!(
                host_after.get(what),
                Some(before),
                "the host's {what} restored after the nodes are gone"
            );
        }
    });
    eprintln!(
        "real-node suite wall time: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// What real nodes change on the host and must put back: the sysctls the kubelet and
/// the bridge plugin set, iptables rules and chains, links and addresses, network
/// namespaces, mounts and cgroups under the nodes' directories.
fn host_state() -> std::collections::BTreeMap<&'static str, String> {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let without_comments = |text: String| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("carbon-kube"))
        .collect::<Vec<_>>()
        .join("\n");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("carbon-kube-nodes") || l.contains("netns"))
        .count()
        .to_string();
    std::collections::BTreeMap::from([
        (
            "sysctls",
            run(
                "sysctl",
                &[
                    "vm.overcommit_memory",
                    "kernel.panic",
                    "kernel.panic_on_oops",
                    "net.ipv4.ip_forward",
                ],
            ),
        ),
        ("iptables", without_comments(run("iptables-save", &[]))),
        ("ip6tables", without_comments(run("ip6tables-save", &[]))),
        (
            "links",
            run("ip", &["-br", "link"])
                .lines()
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "addresses",
            run("ip", &["-br", "addr", "show", "dev", "lo"]),
        ),
        ("network namespaces", run("ip", &["netns", "list"])),
        ("mounts", mounts),
        ("cgroups", cgroups),
    ])
}

fn kubectl_apply_server_side(cp: &ControlPlane, path: &Path) {
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path.to_str().expect("utf-8 path"),
    ]);
}

/// The agent pods, by node name.
fn agent_pods(cp: &ControlPlane) -> Vec<Value> {
    cp.kubectl_json(&["-n", NAMESPACE, "get", "pods", "-l", AGENT_SELECTOR])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Waits until every node runs exactly one Ready agent pod, and returns them by node.
fn wait_agents_ready(cp: &ControlPlane, nodes: &RealNodes) -> Vec<(String, Value)> {
    wait_for(
        "an agent pod Running and Ready on every real node",
        Duration::from_secs(120),
        || {
            let pods = agent_pods(cp);
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            nodes
                .nodes
                .iter()
                .map(|n| {
                    let on: Vec<&&Value> = live
                        .iter()
                        .filter(|p| p["spec"]["nodeName"] == n.name.as_str())
                        .collect();
                    (on.len() == 1 && is_ready(on[0])).then(|| (n.name.clone(), (*on[0]).clone()))
                })
                .collect()
        },
    )
}

/// The service-account token the kubelet mounted into a pod, read from the pod's
/// projected volume on the node.
fn mounted_token(node: &RealNode, pod: &Value) -> String {
    let uid = pod["metadata"]["uid"].as_str().expect("pod uid");
    let volumes = node
        .kubelet_dir()
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~projected");
    let token = std::fs::read_dir(&volumes)
        .unwrap_or_else(|e| panic!("{}: {e}", volumes.display()))
        .filter_map(Result::ok)
        .map(|e| e.path().join("token"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no token under {}", volumes.display()));
    std::fs::read_to_string(token)
        .expect("token")
        .trim()
        .to_string()
}

/// The claims of a JWT (not verified: the apiserver does that when it is used).
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// kubectl run inside a pod's network namespace (the host's kubectl; the pod's network,
/// so requests go to 10.0.0.1:443 as in-cluster clients' do).
fn kubectl_in_pod_network(pid: u32, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running nsenter kubectl")
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// `kubectl apply --server-side -f deploy/manifests/` as the README says: one agent pod
/// Running and Ready on every node (probes passing, no restarts), on in-cluster
/// configuration with the kubelet-mounted, pod-bound token; the leader holds the Lease.
fn manifests_run_an_agent_on_every_node(cp: &ControlPlane, nodes: &RealNodes) {
    kubectl_apply_server_side(cp, &repo_root().join("deploy/manifests"));
    let pods = wait_agents_ready(cp, nodes);
    for (node, pod) in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let container = &pod["status"]["containerStatuses"][0];
        assert_eq!(
            container["restartCount"], 0,
            "{name} restarted: {container}"
        );
        assert!(
            container["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("ghcr.io/carbon-kube/carbon-kube:")),
            "{name} runs the release image: {container}"
        );
        // No kubeconfig, no API server address: in-cluster configuration only.
        let env = pod["spec"]["containers"][0]["env"].to_string();
        assert!(!env.contains("KUBECONFIG") && !env.contains("KUBERNETES_SERVICE"));
        let claims = jwt_claims(&mounted_token(nodes.node(node), pod));
        let k8s = &claims["kubernetes.io"];
        assert_eq!(
            claims["sub"],
            "system:serviceaccount:carbon-kube:carbon-kube"
        );
        assert_eq!(k8s["pod"]["name"], name, "token bound to the pod: {claims}");
        assert_eq!(
            k8s["node"]["name"],
            node.as_str(),
            "token bound to the node: {claims}"
        );
        let logs = cp.kubectl_ok(&["-n", NAMESPACE, "logs", name]);
        assert!(
            logs.contains("agent started"),
            "{name} logs (via the kubelet):\n{logs}"
        );
    }
    // The agents elect one of themselves under their pod's name.
    let holder = wait_for("a leader among the agents", Duration::from_secs(60), || {
        let holder = lease_holder(cp);
        pods.iter()
            .any(|(_, p)| p["metadata"]["name"] == holder.as_str())
            .then_some(holder)
    });
    eprintln!("leader: {holder}");
}

/// From inside an agent pod's network, with the token the kubelet mounted into it: the
/// agent may write its own node's carbon marks, and the admission policies deny writing
/// another node, a foreign taint on its own node, and any Lease but its own.
fn the_agents_token_is_confined_by_the_admission_policies(cp: &ControlPlane, nodes: &RealNodes) {
    let pods = wait_agents_ready(cp, nodes);
    let (own, pod) = &pods[0];
    let other = &pods[1].0;
    let node = nodes.node(own);
    let token = mounted_token(node, pod);
    // The in-cluster address: 10.0.0.1:443, the `kubernetes` Service.
    let kubeconfig = write_token_kubeconfig(cp, "agent-pod", &token);
    let text = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .replace(&cp.server, "https://10.0.0.1:443");
    std::fs::write(&kubeconfig, text).unwrap();
    let pid = pod_pid(node, pod);
    let run = |args: &[&str]| Verdict::of_kubectl(&kubectl_in_pod_network(pid, &kubeconfig, args));

    let allowed = run(&[
        "label",
        "node",
        own,
        "carbon-kube.io/intensity-class=green",
        "--overwrite",
        "--dry-run=server",
    ]);
    assert_eq!(
        allowed,
        Verdict::Allowed,
        "the agent may label its own node"
    );
    let verdict = run(&[
        "label",
        "node",
        other,
        "carbon-kube.io/intensity-class=red",
        "--overwrite",
    ]);
    assert!(verdict.is_policy(NODE_POLICY), "another node: {verdict:?}");
    let verdict = run(&["taint", "node", own, "example.com/foreign=x:NoSchedule"]);
    assert!(
        verdict.is_policy(NODE_POLICY),
        "a foreign taint: {verdict:?}"
    );
    let lease = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"not-the-leader","namespace":"carbon-kube"}}"#;
    let path = cp.dir.join("foreign-lease.json");
    std::fs::write(&path, lease).unwrap();
    let verdict = run(&["create", "-f", path.to_str().unwrap()]);
    assert!(
        verdict.is_policy(LEASE_POLICY),
        "another Lease: {verdict:?}"
    );
}

// ---------------------------------------------------------------------------
// The Helm release, against the local carbon API.
// ---------------------------------------------------------------------------

/// `kubectl delete -f deploy/manifests/`, waiting until the agents are gone, so the chart
/// can be installed on the same cluster.
fn manifests_deleted(cp: &ControlPlane) {
    let manifests = repo_root().join("deploy/manifests");
    cp.kubectl_ok(&[
        "delete",
        "-f",
        manifests.to_str().unwrap(),
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_for(
        "the manifests' agent pods gone",
        Duration::from_secs(60),
        || agent_pods(cp).is_empty().then_some(()),
    );
}

/// The chart's values for the real-node checks: the local carbon API as Electricity
/// Maps, fast polling and leases, a hard taint so the scheduler's choice is certain,
/// per-pod attribution and migration on, and the absolute policy, so that the 300 g
/// threshold alone decides which zone is dirty (the policies have their own tests).
fn helm_values(api: &CarbonApi) -> Vec<String> {
    api.helm_values()
        .into_iter()
        .chain([
            "pollInterval=2s".into(),
            "dwell=0s".into(),
            "leaseDuration=4s".into(),
            "sampleInterval=1s".into(),
            "policy=absolute".into(),
            "taintEffect=NoSchedule".into(),
            "podAttribution.enabled=true".into(),
            "migration.enabled=true".into(),
            "migration.migrateAfter=2s".into(),
        ])
        .flat_map(|v| ["--set".to_string(), v])
        .collect()
}

/// `helm install` with the carbon API on the first node's IP: every node gets a Ready
/// agent, and the leader's requests reach the API from the pod network.
fn helm_install_runs_agents_that_reach_the_carbon_api(
    cp: &ControlPlane,
    nodes: &RealNodes,
    api: &CarbonApi,
) {
    let chart = chart_dir();
    helm_in(
        cp,
        &[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout=3m",
        ],
        &helm_values(api),
    );
    wait_agents_ready(cp, nodes);
    for (node, zone) in NODES {
        wait_for(
            &format!("{node} ({zone}) labelled green by its agent"),
            Duration::from_secs(60),
            || (class_label(cp, node).as_deref() == Some("green")).then_some(()),
        );
    }
    assert!(
        api.requests(EM) > 0,
        "the leader pod fetched from the carbon API on {}",
        api.base_url()
    );
}

fn class_label(cp: &ControlPlane, node: &str) -> Option<String> {
    cp.node(node)["metadata"]["labels"][CLASS_LABEL]
        .as_str()
        .map(str::to_string)
}

fn has_taint(cp: &ControlPlane, node: &str) -> bool {
    carbon_marks(&cp.node(node))
        .iter()
        .any(|m| m.starts_with("taint "))
}

/// A Deployment of pause containers (the image is on every node) with `replicas` pods;
/// `on` pins where they start by cordoning every other node until they are bound.
fn workload(cp: &ControlPlane, name: &str, replicas: u32, migrate: bool, on: Option<&str>) {
    let cordoned: Vec<&str> = NODES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| on.is_some_and(|on| on != *n))
        .collect();
    for node in &cordoned {
        cp.kubectl_ok(&["cordon", node]);
    }
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name, "carbon-kube.io/migrate": migrate.to_string() } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "work",
                        "image": PAUSE_IMAGE,
                        "imagePullPolicy": "Never",
                        "resources": { "requests": { "cpu": "10m", "memory": "8Mi" } }
                    }]
                }
            }
        }
    });
    cp.apply(&deployment.to_string());
    if on.is_some() {
        wait_for(
            &format!("{name} pods bound"),
            Duration::from_secs(60),
            || {
                let pods = workload_pods(cp, name);
                (pods.len() == replicas as usize
                    && pods.iter().all(|p| p["spec"]["nodeName"].is_string()))
                .then_some(())
            },
        );
    }
    for node in &cordoned {
        cp.kubectl_ok(&["uncordon", node]);
    }
}

fn workload_pods(cp: &ControlPlane, name: &str) -> Vec<Value> {
    cp.kubectl_json(&["-n", "default", "get", "pods", "-l", &format!("app={name}")])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// Waits until `replicas` pods of a workload run Ready, and returns their nodes.
fn wait_workload_running(cp: &ControlPlane, name: &str, replicas: usize) -> Vec<String> {
    wait_for(
        &format!("{replicas} {name} pods Running and Ready"),
        Duration::from_secs(90),
        || {
            let pods = workload_pods(cp, name);
            (pods.len() == replicas && pods.iter().all(is_ready)).then(|| {
                pods.iter()
                    .map(|p| {
                        p["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect()
            })
        },
    )
}

/// The agent pod on a node that is not terminating, if there is one now.
fn live_agent_on(cp: &ControlPlane, node: &str) -> Option<Value> {
    agent_pods(cp)
        .into_iter()
        .find(|p| p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null())
}

fn agent_on(cp: &ControlPlane, node: &str) -> Value {
    live_agent_on(cp, node).unwrap_or_else(|| panic!("no agent pod on {node}"))
}

/// A dirty zone taints its real node; a new Deployment's pods are scheduled to the green
/// nodes and run; `kubectl describe node` shows what an operator reads.
fn a_dirty_zone_taints_its_node_and_work_lands_on_green_nodes(cp: &ControlPlane, api: &CarbonApi) {
    api.set_intensity("DE", 520.0);
    wait_for("rn-1 (DE) tainted", Duration::from_secs(60), || {
        has_taint(cp, "rn-1").then_some(())
    });
    assert!(!has_taint(cp, "rn-2") && !has_taint(cp, "rn-3"));
    let describe = cp.kubectl_ok(&["describe", "node", "rn-1"]);
    for text in [
        "carbon-kube.io/high-intensity:NoSchedule",
        "carbon-kube.io/intensity-class=red",
        "carbon-kube.io/grid-zone=DE",
        "CarbonIntensityHigh",
        "Grid zone DE: 520 gCO2/kWh, threshold 300 gCO2/kWh",
    ] {
        assert!(
            describe.contains(text),
            "`kubectl describe node rn-1` shows {text:?}:\n{describe}"
        );
    }
    let green = cp.kubectl_ok(&["describe", "node", "rn-2"]);
    assert!(
        green.contains("carbon-kube.io/intensity-class=green"),
        "{green}"
    );
    assert!(!green.contains("carbon-kube.io/high-intensity"), "{green}");

    workload(cp, "placed", 4, false, None);
    let placed = wait_workload_running(cp, "placed", 4);
    assert!(
        placed.iter().all(|n| n == "rn-2" || n == "rn-3"),
        "pods avoid the dirty node: {placed:?}"
    );
}

/// Migration with a PodDisruptionBudget: while the budget allows no disruption the
/// agent's evictions are refused and the pods stay; once it allows one, the kubelet
/// stops each evicted pod and its replacement runs on a green node, one at a time.
fn migration_is_carried_out_by_the_kubelet_within_the_budget(cp: &ControlPlane) {
    let agent = agent_on(cp, "rn-1");
    wait_for(
        "an eviction refused by the budget",
        Duration::from_secs(60),
        || {
            sample(
                &pod_metrics(&agent)?,
                "carbon_kube_evictions_total",
                "outcome=\"blocked\"",
            )
            .filter(|n| *n >= 1.0)
        },
    );
    let pods = workload_pods(cp, "movable");
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter()
            .all(|p| p["spec"]["nodeName"] == "rn-1" && is_ready(p)),
        "the budget holds"
    );

    cp.kubectl_ok(&[
        "-n",
        "default",
        "patch",
        "pdb",
        "movable",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    let moved = wait_for(
        "both movable pods replaced on green nodes",
        Duration::from_secs(120),
        || {
            let pods = workload_pods(cp, "movable");
            (pods.len() == 2
                && pods
                    .iter()
                    .all(|p| is_ready(p) && p["spec"]["nodeName"] != "rn-1"))
            .then_some(pods)
        },
    );
    let evicted = sample(
        &pod_metrics(&agent).unwrap_or_default(),
        "carbon_kube_evictions_total",
        "outcome=\"evicted\"",
    );
    assert_eq!(evicted, Some(2.0), "two evictions by rn-1's agent");
    eprintln!(
        "migrated to {:?}",
        moved
            .iter()
            .map(|p| p["spec"]["nodeName"].clone())
            .collect::<Vec<_>>()
    );
    cp.kubectl_ok(&["-n", "default", "delete", "pdb", "movable"]);
}

/// Before the zone turns dirty: two opted-in pods on rn-1, and a budget that allows
/// no disruption of them.
fn movable_pods_on_the_soon_dirty_node(cp: &ControlPlane) {
    workload(cp, "movable", 2, true, Some("rn-1"));
    let on = wait_workload_running(cp, "movable", 2);
    assert!(on.iter().all(|n| n == "rn-1"), "{on:?}");
    let pdb = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": "movable", "namespace": "default" },
        "spec": { "minAvailable": 2, "selector": { "matchLabels": { "app": "movable" } } }
    });
    cp.apply(&pdb.to_string());
    wait_for(
        "the budget counts 2 healthy pods",
        Duration::from_secs(30),
        || {
            let pdb = cp.kubectl_json(&["-n", "default", "get", "pdb", "movable"]);
            (pdb["status"]["currentHealthy"] == 2 && pdb["status"]["disruptionsAllowed"] == 0)
                .then_some(())
        },
    );
}

/// Per-pod attribution from the real pods' cgroup v1 `cpuacct` (or v2 `cpu.stat`): the
/// agents export series for the pods on their node, and a pod's series go with it.
fn pod_series_come_from_real_cgroups_and_go_with_the_pods(cp: &ControlPlane) {
    let series_of = |node: &str| -> Vec<String> {
        let Some(metrics) = live_agent_on(cp, node).as_ref().and_then(pod_metrics) else {
            return Vec::new();
        };
        metrics
            .lines()
            .filter(|l| l.starts_with("carbon_kube_pod_power_watts{"))
            .filter_map(|l| {
                l.split("pod=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .collect()
    };
    for node in ["rn-2", "rn-3"] {
        let placed: Vec<String> = workload_pods(cp, "placed")
            .iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let series = wait_for(
            &format!("pod series on {node} for {placed:?}"),
            Duration::from_secs(60),
            || {
                let series = series_of(node);
                placed.iter().all(|p| series.contains(p)).then_some(series)
            },
        );
        let agent = agent_on(cp, node);
        let own = agent["metadata"]["name"].as_str().unwrap();
        assert!(
            series.iter().any(|s| s == own),
            "the agent attributes its own pod: {series:?}"
        );
        let others = workload_pods(cp, "placed");
        assert!(
            others
                .iter()
                .filter(|p| p["spec"]["nodeName"] != node)
                .all(|p| !series.contains(&p["metadata"]["name"].as_str().unwrap().to_string())),
            "only this node's pods: {series:?}"
        );
    }
    cp.kubectl_ok(&[
        "-n",
        "default",
        "delete",
        "deployment",
        "placed",
        "--wait=true",
    ]);
    wait_for(
        "the deleted pods' series gone",
        Duration::from_secs(60),
        || {
            ["rn-2", "rn-3"]
                .iter()
                .all(|n| !series_of(n).iter().any(|s| s.starts_with("placed-")))
                .then_some(())
        },
    );
}

/// Watches one node's carbon taint from now on (kubectl get -w), to show it never
/// flapped: every version of the node seen carries it.
struct TaintWatch {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

impl TaintWatch {
    fn start(cp: &ControlPlane, node: &str) -> Self {
        let mut child = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["get", "node", node, "--watch", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl get --watch");
        let stdout = child.stdout.take().expect("stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for node in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(node) = node else { break };
                let tainted = carbon_marks(&node).iter().any(|m| m.starts_with("taint "));
                record.lock().unwrap().push(tainted);
            }
        });
        TaintWatch { child, seen }
    }

    /// Every version seen so far was tainted (and there was at least one).
    fn always_tainted(&self) -> (bool, usize) {
        let seen = self.seen.lock().unwrap();
        (!seen.is_empty() && seen.iter().all(|t| *t), seen.len())
    }
}

impl Drop for TaintWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leaders among the agent pods right now, by their own `carbon_kube_is_leader`. Pods
/// are scraped one after another, so a hand-over between two scrapes could look like two
/// leaders: only a pod that says so in two rounds in a row counts.
fn leaders_now(cp: &ControlPlane) -> Vec<String> {
    let pods = agent_pods(cp);
    let round = || -> Vec<String> {
        pods.iter()
            .filter(|p| {
                pod_metrics(p)
                    .and_then(|m| sample(&m, "carbon_kube_is_leader", ""))
                    .is_some_and(|v| v == 1.0)
            })
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let first = round();
    let second = round();
    first.into_iter().filter(|p| second.contains(p)).collect()
}

/// Polls the agents' leader gauges until `until` returns true; the most leaders seen at once.
fn most_leaders_at_once(
    cp: &ControlPlane,
    timeout: Duration,
    mut until: impl FnMut() -> bool,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut most = 0;
    loop {
        most = most.max(leaders_now(cp).len());
        if until() {
            return most;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn lease_holder(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "lease",
        "carbon-kube-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deleting the leader's pod, then a follower's (the one on the tainted node): a follower
/// takes over, the DaemonSet replaces each pod, and the tainted node stays tainted
/// throughout (the new agent recovers the state instead of starting over).
fn deleted_agent_pods_fail_over_and_recover(cp: &ControlPlane, nodes: &RealNodes) {
    let watch = TaintWatch::start(cp, "rn-1");
    let leader = lease_holder(cp);
    let leader_node = agent_pods(cp)
        .iter()
        .find(|p| p["metadata"]["name"] == leader.as_str())
        .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        .expect("the leader's pod");
    cp.kubectl_ok(&["-n", NAMESPACE, "delete", "pod", &leader, "--wait=false"]);
    let new_leader = wait_for("another agent leads", Duration::from_secs(60), || {
        let holder = lease_holder(cp);
        (!holder.is_empty() && holder != leader).then_some(holder)
    });
    let pods = wait_agents_ready(cp, nodes);
    assert!(
        pods.iter()
            .all(|(_, p)| p["metadata"]["name"] != leader.as_str()),
        "the leader's pod was replaced"
    );
    eprintln!("leader pod {leader} on {leader_node} deleted; {new_leader} leads");

    // A follower: the tainted node's agent unless it now leads.
    let leading = lease_holder(cp);
    let follower_node = ["rn-1", "rn-2"]
        .into_iter()
        .find(|n| agent_on(cp, n)["metadata"]["name"] != leading.as_str())
        .expect("a follower");
    let follower = agent_on(cp, follower_node);
    let follower = follower["metadata"]["name"].as_str().unwrap().to_string();
    cp.kubectl_ok(&["-n", NAMESPACE, "delete", "pod", &follower, "--wait=false"]);
    wait_for(
        &format!("{follower_node}'s agent replaced"),
        Duration::from_secs(90),
        || {
            let pod = live_agent_on(cp, follower_node)?;
            (pod["metadata"]["name"] != follower.as_str() && is_ready(&pod)).then_some(())
        },
    );
    assert_eq!(
        lease_holder(cp),
        leading,
        "deleting a follower moves no leadership"
    );
    wait_agents_ready(cp, nodes);
    // Let the new agents reconcile at least once before judging.
    std::thread::sleep(Duration::from_secs(3));
    let (kept, versions) = watch.always_tainted();
    assert!(
        kept,
        "rn-1 stayed tainted through both deletions ({versions} versions seen)"
    );
    assert!(has_taint(cp, "rn-1"));
    assert_eq!(leaders_now(cp).len(), 1, "one leader");
}

/// `helm upgrade` rolls the DaemonSet pod by pod: never two leaders at once, and the
/// tainted node's taint does not flap.
fn helm_upgrade_rolls_with_one_leader_and_no_flap(
    cp: &ControlPlane,
    nodes: &RealNodes,
    api: &CarbonApi,
) {
    let watch = TaintWatch::start(cp, "rn-1");
    let before: Vec<String> = agent_pods(cp)
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    let chart = chart_dir();
    let mut values = helm_values(api);
    values.extend(["--set".into(), "log.level=debug".into()]);
    let upgrade = {
        let mut args: Vec<String> = ["upgrade", RELEASE, chart.to_str().unwrap(), "-n", NAMESPACE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(values);
        // Started, not awaited: the leaders are watched while it rolls the pods.
        Command::new(tool("helm"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("helm upgrade")
    };
    let mut upgrade = upgrade;
    let most = most_leaders_at_once(cp, Duration::from_secs(240), || {
        let pods = agent_pods(cp);
        let renewed = pods.len() == nodes.nodes.len()
            && pods.iter().all(|p| {
                is_ready(p)
                    && !before.contains(
                        &p["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
            });
        renewed && matches!(upgrade.try_wait(), Ok(Some(_)))
    });
    let out = upgrade.wait_with_output().expect("helm upgrade");
    assert!(
        out.status.success(),
        "helm upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        most <= 1,
        "never more than one leader during the rollout (saw {most})"
    );
    wait_for(
        "one leader after the rollout",
        Duration::from_secs(30),
        || (leaders_now(cp).len() == 1).then_some(()),
    );
    let (kept, versions) = watch.always_tainted();
    assert!(
        kept,
        "rn-1 stayed tainted through the rollout ({versions} versions seen)"
    );
}

/// A Prometheus on the host scraping the agent pods at their pod IPs, as the chart's
/// PodMonitor describes them: pods matching its selector, its named port, its path.
/// (Debian's Prometheus is built without Kubernetes discovery, so the test resolves the
/// PodMonitor as the Prometheus operator would and hands the targets over as file_sd.)
/// Every agent is up and its node's series arrive.
fn prometheus_scrapes_the_agent_pods_as_the_pod_monitor_says(cp: &ControlPlane, nodes: &RealNodes) {
    let rendered = template_ok(&[
        "--set",
        "metrics.podMonitor.enabled=true",
        "--show-only",
        "templates/monitoring.yaml",
    ]);
    let monitor = documents(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("the chart's PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let selector: Vec<String> = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let pods = cp.kubectl_json(&["-n", NAMESPACE, "get", "pods", "-l", &selector.join(",")]);
    let targets: Vec<Value> = pods["items"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|pod| {
            let port = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"] == endpoint["port"])
                .expect("the PodMonitor's named port on the pod");
            serde_json::json!({
                "targets": [format!("{}:{}", pod["status"]["podIP"].as_str().unwrap(), port["containerPort"])],
                "labels": {
                    "namespace": pod["metadata"]["namespace"],
                    "pod": pod["metadata"]["name"],
                    "kubernetes_node": pod["spec"]["nodeName"]
                }
            })
        })
        .collect();
    let dir = support::cluster::temp_dir("ck-prom");
    let targets_file = dir.join("agents.json");
    std::fs::write(&targets_file, Value::from(targets).to_string()).unwrap();
    let scrape = serde_json::json!([{
        "job_name": "carbon-kube-pods",
        "metrics_path": endpoint["path"],
        "file_sd_configs": [{ "files": [targets_file] }]
    }]);
    let prom = prometheus::Prometheus::start_with(&dir, scrape, &[]);
    let want = nodes.nodes.len();
    let up = wait_for(
        "every agent pod scraped and up",
        Duration::from_secs(60),
        || {
            let up = prom.query("up{job=\"carbon-kube-pods\"} == 1").ok()?;
            (up.len() == want).then_some(up)
        },
    );
    for target in &up {
        let instance = target["metric"]["instance"].as_str().unwrap_or_default();
        assert!(
            instance.starts_with("10.214.") && instance.ends_with(":9464"),
            "a pod IP: {target}"
        );
    }
    let power = wait_for(
        "node power from every agent",
        Duration::from_secs(30),
        || {
            let series = prom.query("carbon_kube_node_power_watts").ok()?;
            (series.len() == want).then_some(series)
        },
    );
    let mut names: Vec<&str> = power
        .iter()
        .filter_map(|s| s["metric"]["node"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["rn-1", "rn-2", "rn-3"], "{power:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent pod's own CPU and memory, read from its cgroup (v1 `cpuacct`/`memory`, or
/// v2) over its life in this suite, against the chart's requests and limits.
fn the_agents_footprint_fits_the_charts_resources(cp: &ControlPlane, nodes: &RealNodes) {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let values: yaml_serde::Value = yaml_serde::from_str(&values).unwrap();
    let resources = &values["resources"];
    let millicores = |q: &yaml_serde::Value| {
        let q = q.as_str().expect("a CPU quantity");
        q.strip_suffix('m').map_or_else(
            || q.parse::<f64>().unwrap() * 1000.0,
            |m| m.parse().unwrap(),
        )
    };
    let mebibytes = |q: &yaml_serde::Value| {
        q.as_str()
            .and_then(|q| q.strip_suffix("Mi"))
            .expect("a Mi quantity")
            .parse::<f64>()
            .unwrap()
    };
    let (cpu_request, cpu_limit) = (
        millicores(&resources["requests"]["cpu"]),
        millicores(&resources["limits"]["cpu"]),
    );
    let (mem_request, mem_limit) = (
        mebibytes(&resources["requests"]["memory"]),
        mebibytes(&resources["limits"]["memory"]),
    );
    let v1 = support::nodes::host_is_cgroup_v1();
    for node in &nodes.nodes {
        let pod = agent_on(cp, &node.name);
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let started = pod["status"]["startTime"].as_str().unwrap();
        let read = |hierarchy: &str, file: &str| -> f64 {
            let path = pod_cgroup(node, hierarchy, uid).join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if file == "cpu.stat" {
                stat_field(&text, "usage_usec") * 1000.0
            } else if file == "memory.stat" {
                stat_field(&text, "anon") + stat_field(&text, "file")
            } else {
                text.trim().parse().expect("a number")
            }
        };
        let (cpu_ns, peak_bytes) = if v1 {
            (
                read("cpuacct", "cpuacct.usage"),
                read("memory", "memory.max_usage_in_bytes"),
            )
        } else {
            (read("", "cpu.stat"), read("", "memory.peak"))
        };
        let alive = jiff::Timestamp::now()
            .duration_since(started.parse::<jiff::Timestamp>().unwrap())
            .as_secs_f64();
        let cpu_m = cpu_ns / 1e9 / alive * 1000.0;
        let peak_mib = peak_bytes / 1024.0 / 1024.0;
        eprintln!(
            "agent on {}: {:.1} millicores over {alive:.0}s (request {cpu_request}m, limit {cpu_limit}m), \
             peak {peak_mib:.1} MiB (request {mem_request} MiB, limit {mem_limit} MiB)",
            node.name, cpu_m
        );
        assert!(alive > 60.0, "measured over the pod's life: {alive}s");
        assert!(cpu_m < cpu_limit, "CPU within the limit");
        assert!(peak_mib < mem_limit, "memory peak below the limit");
        assert_eq!(
            pod["status"]["containerStatuses"][0]["restartCount"], 0,
            "never OOM-killed or restarted"
        );
    }
}

/// A `name value` line of a cgroup stat file.
fn stat_field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `helm uninstall` runs the cleanup Job as a real pod; it leaves no carbon taint, label
/// or condition on any node, and no agent.
fn helm_uninstall_cleans_up_with_a_real_job(cp: &ControlPlane, nodes: &RealNodes) {
    assert!(has_taint(cp, "rn-1"), "something to clean up");
    helm_ok(
        Some(cp),
        &[
            "uninstall",
            RELEASE,
            "-n",
            NAMESPACE,
            "--wait",
            "--timeout=3m",
        ],
    );
    for node in &nodes.nodes {
        let marks = carbon_marks(&cp.node(&node.name));
        assert!(marks.is_empty(), "{} still carries {marks:?}", node.name);
    }
    wait_for("the agents gone", Duration::from_secs(60), || {
        agent_pods(cp).is_empty().then_some(())
    });
    // The Job's pod ran on a real node: the kubelet started its container.
    let events = cp.kubectl_json(&[
        "-n",
        NAMESPACE,
        "get",
        "events",
        "--field-selector=reason=Started",
    ]);
    let started = events["items"].as_array().cloned().unwrap_or_default();
    assert!(
        started.iter().any(|e| {
            e["involvedObject"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("carbon-kube-cleanup"))
                && e["source"]["component"] == "kubelet"
        }),
        "a kubelet started the cleanup Job's container: {started:?}"
    );
}
