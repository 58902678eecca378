//! Moving work in time and space, end to end: the leader's deferral of pods
//! behind the `carbon-kube.io/defer` scheduling gate, and each agent's
//! migration of opted-in pods off its tainted node, against the real
//! control plane (apiserver, scheduler, controller-manager with the
//! ReplicaSet and disruption controllers) and a local Electricity Maps API
//! whose forecast the test steers.
//!
//! No kubelet runs: bound pods stay Pending unless a test patches their
//! status, and evicted pods stay Terminating (their controller replaces them
//! at once all the same).

mod support;

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use support::carbon_api::{CarbonApi, EM_TOKEN as TOKEN};
use support::cluster::{Agent, ControlPlane, require_tool, tool, wait_for};
use support::scenario::{self, Cluster, agent_args, cluster_with_intensity as cluster, has_taint};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GATE: &str = "carbon-kube.io/defer";

fn seconds_from_now(seconds: i64) -> Timestamp {
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now + seconds).expect("a time")
}

fn rfc3339(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Hourly points from `first` on.
fn hourly(first: Timestamp, values: &[f64]) -> Vec<(Timestamp, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| (first + SignedDuration::from_hours(k as i64), *v))
        .collect()
}

/// Waits until the leader has written `zone`'s CarbonScore with this intensity and a forecast
/// whose lowest point is `forecast_min`.
fn wait_score(cp: &ControlPlane, zone: &str, intensity: f64, forecast_min: f64) {
    wait_for(
        &format!("CarbonScore {zone} at {intensity} with forecast minimum {forecast_min}"),
        Duration::from_secs(40),
        || {
            let out = cp.kubectl(&[
                "get",
                "carbonscore",
                &zone.to_ascii_lowercase(),
                "-o",
                "json",
            ]);
            let score: Value = serde_json::from_slice(&out.stdout).ok()?;
            let status = &score["status"];
            (status["intensityGramsPerKwh"].as_f64() == Some(intensity)
                && status["forecastMinGramsPerKwh"].as_f64() == Some(forecast_min))
            .then_some(())
        },
    );
}

/// A pod held by our gate (and `extra_gates`), asking for half a vCPU.
fn gated_pod(name: &str, annotations: &[(&str, &str)], extra_gates: &[&str]) -> String {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    let gates: Vec<Value> = std::iter::once(GATE)
        .chain(extra_gates.iter().copied())
        .map(|g| json!({ "name": g }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default", "annotations": annotations },
        "spec": {
            "schedulingGates": gates,
            "containers": [{
                "name": "job",
                "image": "registry.invalid/batch:1",
                "resources": { "requests": { "cpu": "500m" } }
            }]
        }
    })
    .to_string()
}

fn pod(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl_json(&["get", "pod", name])
}

fn gates(pod: &Value) -> Vec<String> {
    pod["spec"]["schedulingGates"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|g| g["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn node_of(pod: &Value) -> Option<String> {
    pod["spec"]["nodeName"].as_str().map(str::to_string)
}

/// Events about one object: (reason, message).
fn events(cp: &ControlPlane, namespace: &str, name: &str) -> Vec<(String, String)> {
    let list = cp.kubectl_json(&[
        "-n",
        namespace,
        "get",
        "events",
        &format!("--field-selector=involvedObject.name={name}"),
    ]);
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| {
                    (
                        e["reason"].as_str().unwrap_or_default().to_string(),
                        e["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_event(cp: &ControlPlane, namespace: &str, name: &str, reason: &str) -> String {
    wait_for(
        &format!("event {reason} on {name}"),
        Duration::from_secs(30),
        || {
            events(cp, namespace, name)
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, m)| m)
        },
    )
}

fn leader(agents: &mut [Agent]) -> usize {
    wait_for("a leader", Duration::from_secs(30), || {
        scenario::leader(agents)
    })
}

/// The value of the first sample of `name` whose line contains `label`.
fn sample(agent: &Agent, name: &str, label: &str) -> Option<f64> {
    agent.metrics()?.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !rest.starts_with(['{', ' ']) || !line.contains(label) {
            return None;
        }
        line.rsplit_once(' ')?.1.parse().ok()
    })
}

/// `promtool check metrics` finds nothing to complain about in an agent's /metrics.
fn promtool_clean(agent: &Agent) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    require_tool(
        "promtool",
        "install Prometheus' promtool (Debian: apt-get install prometheus)",
    );
    let text = agent.metrics().expect("metrics");
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("promtool stdin");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_waits_for_the_green_hour_and_is_bound_once_released() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("g1", "DE")], &[("DE", 500.0)], &[]).await;
    // Dirty now; green in an hour for two hours.
    let green_from = seconds_from_now(3600);
    api.set_forecast("DE", &hourly(green_from, &[50.0, 50.0, 400.0]));
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 500.0, 50.0);
        let latest = rfc3339(seconds_from_now(3 * 3600));
        let annotations = [
            ("carbon-kube.io/latest-start", latest.as_str()),
            ("carbon-kube.io/duration", "1h"),
        ];
        cp.apply(&gated_pod("batch", &annotations, &[]));
        // Another controller's gate on a second pod must survive our release.
        cp.apply(&gated_pod("shared", &annotations, &["example.com/quota"]));

        let held = wait_event(&cp, "default", "batch", "Deferred");
        assert!(
            held.contains("Waiting for greener power") && held.contains("500 starting now"),
            "{held}"
        );
        wait_event(&cp, "default", "shared", "Deferred");
        // Held: several planning rounds later, still gated and unbound.
        std::thread::sleep(Duration::from_secs(8));
        for name in ["batch", "shared"] {
            let p = pod(&cp, name);
            assert!(gates(&p).contains(&GATE.to_string()), "{name}: {p}");
            assert_eq!(node_of(&p), None, "{name} bound while held");
        }
        let lead = leader(&mut agents);
        assert_eq!(
            sample(&agents[lead], "carbon_kube_pods_deferred", ""),
            Some(2.0)
        );

        // The grid turns green now and stays green: now is the cheapest start.
        let turned = Instant::now();
        api.set_intensity("DE", 40.0);
        api.clear_forecast("DE");
        wait_for("batch released", Duration::from_secs(30), || {
            (!gates(&pod(&cp, "batch")).contains(&GATE.to_string())).then_some(())
        });
        let release_latency = turned.elapsed();
        let node = wait_for(
            "batch bound by the scheduler",
            Duration::from_secs(30),
            || node_of(&pod(&cp, "batch")),
        );
        let bound_latency = turned.elapsed();
        assert_eq!(node, "g1");
        let released = wait_event(&cp, "default", "batch", "Released");
        assert!(released.contains("greenest start"), "{released}");
        assert!(released.contains("Estimated saving"), "{released}");

        // Only our gate went: the other controller's gate still holds its pod.
        let shared = wait_for("shared released", Duration::from_secs(30), || {
            let p = pod(&cp, "shared");
            (!gates(&p).contains(&GATE.to_string())).then_some(p)
        });
        assert_eq!(gates(&shared), ["example.com/quota"]);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(node_of(&pod(&cp, "shared")), None);

        let lead = leader(&mut agents);
        let lead = &agents[lead];
        assert_eq!(sample(lead, "carbon_kube_pods_deferred", ""), Some(0.0));
        assert_eq!(
            sample(
                lead,
                "carbon_kube_deferral_releases_total",
                "reason=\"greenest_now\""
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(lead, "carbon_kube_deferral_seconds_count", ""),
            Some(2.0)
        );
        let saved = sample(lead, "carbon_kube_deferral_saved_grams_total", "").unwrap_or(0.0);
        assert!(saved > 0.0, "saved {saved} g");
        promtool_clean(lead);
        println!(
            "deferral: released {release_latency:?} after the grid turned green (poll 2 s), \
             bound {bound_latency:?} after; estimated saving {saved:.2} g for 2 × 0.5 vCPU × 1 h"
        );
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_is_released_at_its_latest_start_even_if_never_green() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("l1", "DE")], &[("DE", 500.0)], &["--deferral-margin=0s"]).await;
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 500.0, 500.0);
        // The forecast promises green power from the latest start on, which never
        // comes sooner: the pod waits for it, and goes in the last planning slot
        // (a minute, with hourly forecast points) before its latest start.
        let latest = seconds_from_now(90);
        api.set_forecast("DE", &hourly(latest, &[60.0, 60.0]));
        wait_score(&cp, "DE", 500.0, 60.0);
        let latest_text = rfc3339(latest);
        cp.apply(&gated_pod(
            "deadline",
            &[("carbon-kube.io/latest-start", latest_text.as_str())],
            &[],
        ));
        let held = wait_event(&cp, "default", "deadline", "Deferred");
        assert!(held.contains(&latest.to_string()), "{held}");
        wait_for("deadline released", Duration::from_secs(120), || {
            (!gates(&pod(&cp, "deadline")).contains(&GATE.to_string())).then_some(())
        });
        let released_at = Timestamp::now();
        let early = latest.duration_since(released_at);
        let late = released_at.duration_since(latest);
        println!("latest start {latest}, released at {released_at} ({early:?} before it)");
        assert!(
            early < SignedDuration::from_secs(62),
            "released {early:?} before its latest start: more than a slot"
        );
        assert!(
            late < SignedDuration::from_secs(1),
            "released {late:?} after its latest start"
        );
        let message = wait_event(&cp, "default", "deadline", "ReleasedNearDeadline");
        assert!(message.contains("latest start"), "{message}");
        wait_for("deadline bound", Duration::from_secs(30), || {
            node_of(&pod(&cp, "deadline"))
        });
        let lead = leader(&mut agents);
        let lead = &agents[lead];
        assert_eq!(
            sample(
                lead,
                "carbon_kube_deferral_releases_total",
                "reason=\"deadline\""
            ),
            Some(1.0)
        );
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_annotation_releases_the_pod_at_once_with_an_event() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("i1", "DE")], &[("DE", 500.0)], &[]).await;
    api.set_forecast("DE", &hourly(seconds_from_now(3600), &[10.0, 10.0]));
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 500.0, 10.0);
        let created = Instant::now();
        cp.apply(&gated_pod(
            "typo",
            &[("carbon-kube.io/latest-start", "tomorrow")],
            &[],
        ));
        cp.apply(&gated_pod("bare", &[], &[]));
        for name in ["typo", "bare"] {
            wait_for(&format!("{name} released"), Duration::from_secs(20), || {
                (!gates(&pod(&cp, name)).contains(&GATE.to_string())).then_some(())
            });
        }
        let latency = created.elapsed();
        let typo = wait_event(&cp, "default", "typo", "InvalidDeferral");
        assert!(
            typo.contains("\"tomorrow\" is not an RFC 3339 time"),
            "{typo}"
        );
        let bare = wait_event(&cp, "default", "bare", "InvalidDeferral");
        assert!(bare.contains("neither annotation"), "{bare}");
        let kinds = cp.kubectl_ok(&["get", "events", "--field-selector=reason=InvalidDeferral"]);
        assert!(kinds.contains("Warning"), "{kinds}");
        wait_for("typo bound", Duration::from_secs(30), || {
            node_of(&pod(&cp, "typo"))
        });
        let lead = leader(&mut agents);
        let lead = &agents[lead];
        assert_eq!(
            sample(
                lead,
                "carbon_kube_deferral_releases_total",
                "reason=\"invalid\""
            ),
            Some(2.0)
        );
        println!("invalid annotations: both pods released {latency:?} after creation");
    });
    drop(agents);
}

/// A Deployment of opted-in pods, all placed on `node` (the other nodes are
/// cordoned while they are scheduled), then marked Running and Ready as a
/// kubelet would.
fn deployment_on(
    cp: &ControlPlane,
    name: &str,
    replicas: u32,
    node: &str,
    others: &[&str],
) -> Vec<String> {
    for other in others {
        cp.kubectl_ok(&["cordon", other]);
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name, "carbon-kube.io/migrate": "true" } },
                "spec": { "containers": [{
                    "name": "web",
                    "image": "registry.invalid/web:1",
                    "resources": { "requests": { "cpu": "100m" } }
                }] }
            }
        }
    });
    cp.apply(&deployment.to_string());
    let pods = wait_for(
        &format!("{replicas} {name} pods on {node}"),
        Duration::from_secs(60),
        || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", &format!("app={name}")]);
            let names: Vec<String> = pods["items"]
                .as_array()?
                .iter()
                .filter(|p| node_of(p).as_deref() == Some(node))
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            (names.len() == replicas as usize).then_some(names)
        },
    );
    for other in others {
        cp.kubectl_ok(&["uncordon", other]);
    }
    let now = rfc3339(Timestamp::now());
    for pod in &pods {
        let status = json!({ "status": {
            "phase": "Running",
            "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }]
        }});
        cp.kubectl_ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }
    pods
}

fn force_delete_all(cp: &ControlPlane) {
    let _ = cp.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_pod_on_a_tainted_node_moves_to_a_green_node() {
    let _serial = SERIAL.lock().await;
    // NoSchedule makes the replacement's placement certain.
    let Cluster { cp, api, agents } = cluster(
        &[("d1", "DE"), ("f1", "FR")],
        &[("DE", 100.0), ("FR", 40.0)],
        &[
            "--taint-effect=NoSchedule",
            "--migration",
            "--migrate-after=3s",
            "--max-evictions-per-hour=3",
        ],
    )
    .await;
    tokio::task::block_in_place(|| {
        wait_score(&cp, "FR", 40.0, 40.0);
        let original = deployment_on(&cp, "mover", 1, "d1", &["f1"]).remove(0);

        let dirty = Instant::now();
        api.set_intensity("DE", 600.0);
        wait_for("d1 tainted", Duration::from_secs(30), || {
            has_taint(&cp, "d1").then_some(())
        });
        let tainted = dirty.elapsed();
        wait_for("the pod evicted", Duration::from_secs(40), || {
            pod(&cp, &original)["metadata"]["deletionTimestamp"]
                .as_str()
                .map(str::to_string)
        });
        let evicted = dirty.elapsed();
        let replacement = wait_for("a replacement bound", Duration::from_secs(40), || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", "app=mover"]);
            pods["items"].as_array()?.iter().find_map(|p| {
                let name = p["metadata"]["name"].as_str()?;
                (name != original).then(|| node_of(p)).flatten()
            })
        });
        let replaced = dirty.elapsed();
        assert_eq!(replacement, "f1", "the replacement avoids the tainted node");
        let note = wait_event(&cp, "default", &original, "Migrating");
        assert!(
            note.contains("zone DE at 600")
                && note.contains("zone FR has untainted capacity at 40"),
            "{note}"
        );
        assert!(!has_taint(&cp, "f1"));
        assert_eq!(
            sample(
                &agents[0],
                "carbon_kube_evictions_total",
                "outcome=\"evicted\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&agents[1], "carbon_kube_evictions_total", ""),
            None,
            "the green node's agent evicts nothing"
        );
        println!(
            "migration: tainted {tainted:?}, evicted {evicted:?}, replacement bound on f1 \
             {replaced:?} after the grid turned dirty (--migrate-after=3s)"
        );
        force_delete_all(&cp);
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_disruption_budget_blocks_migration() {
    let _serial = SERIAL.lock().await;
    let Cluster { cp, api, agents } = cluster(
        &[("d1", "DE"), ("f1", "FR")],
        &[("DE", 100.0), ("FR", 40.0)],
        &[
            "--taint-effect=NoSchedule",
            "--migration",
            "--migrate-after=2s",
        ],
    )
    .await;
    tokio::task::block_in_place(|| {
        wait_score(&cp, "FR", 40.0, 40.0);
        let pods = deployment_on(&cp, "guarded", 2, "d1", &["f1"]);
        let pdb = json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": { "name": "guarded", "namespace": "default" },
            "spec": { "minAvailable": 2, "selector": { "matchLabels": { "app": "guarded" } } }
        });
        cp.apply(&pdb.to_string());
        wait_for(
            "the PDB counts 2 healthy pods",
            Duration::from_secs(30),
            || {
                let pdb = cp.kubectl_json(&["get", "pdb", "guarded"]);
                (pdb["status"]["currentHealthy"] == 2 && pdb["status"]["disruptionsAllowed"] == 0)
                    .then_some(())
            },
        );

        api.set_intensity("DE", 600.0);
        wait_for("d1 tainted", Duration::from_secs(30), || {
            has_taint(&cp, "d1").then_some(())
        });
        wait_for("an eviction blocked", Duration::from_secs(40), || {
            sample(
                &agents[0],
                "carbon_kube_evictions_total",
                "outcome=\"blocked\"",
            )
            .filter(|n| *n >= 1.0)
        });
        let message = wait_for("a MigrationBlocked event", Duration::from_secs(30), || {
            pods.iter().find_map(|p| {
                events(&cp, "default", p)
                    .into_iter()
                    .find(|(r, _)| r == "MigrationBlocked")
                    .map(|(_, m)| m)
            })
        });
        assert!(message.contains("disruption budget"), "{message}");
        // The pods stay: none terminating, none replaced, for a while.
        std::thread::sleep(Duration::from_secs(10));
        let listed = cp.kubectl_json(&["get", "pods", "-l", "app=guarded"]);
        let items = listed["items"].as_array().expect("pods");
        assert_eq!(items.len(), 2, "{listed}");
        for p in items {
            assert!(p["metadata"]["deletionTimestamp"].is_null(), "{p}");
            assert_eq!(node_of(p).as_deref(), Some("d1"));
        }
        assert_eq!(
            sample(
                &agents[0],
                "carbon_kube_evictions_total",
                "outcome=\"evicted\""
            ),
            None
        );
        promtool_clean(&agents[0]);
        println!(
            "PDB: {} blocked eviction attempt(s) counted, pods stay",
            sample(
                &agents[0],
                "carbon_kube_evictions_total",
                "outcome=\"blocked\""
            )
            .unwrap_or(0.0)
        );
        force_delete_all(&cp);
    });
    drop(agents);
}

/// The chart's RBAC and admission policies with deferral and migration on: the agent
/// may remove our gate from a pod and nothing else, may evict but not delete, and does
/// both jobs with exactly these rights (its token bound to its node, as in the pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_charts_least_privilege_the_agent_defers_and_migrates_and_nothing_more() {
    use support::deploy::{
        AGENT_SA, NAMESPACE, Verdict, kubectl_as, require_helm, service_account_kubeconfig,
        template_ok,
    };
    const POD_POLICY: &str = "carbon-kube-pod-writes";
    let _serial = SERIAL.lock().await;
    require_helm();
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 100.0);
    api.set_intensity("FR", 40.0);
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        cp.create_node("n1", &[("carbon-kube.io/grid-zone", "DE")]);
        cp.create_node("f1", &[("carbon-kube.io/grid-zone", "FR")]);
        let rendered = template_ok(&[
            "--set",
            "deferral.enabled=true",
            "--set",
            "migration.enabled=true",
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/admission-policy.yaml",
        ]);
        cp.apply(&rendered);
        let agent_kc = service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, Some(("Node", "n1")));
        cp.apply(&gated_pod(
            "probe",
            &[("carbon-kube.io/latest-start", "2030-01-01T00:00:00Z")],
            &["example.com/other"],
        ));
        let as_agent = |args: &[&str]| {
            let mut all = args.to_vec();
            all.push("--dry-run=server");
            Verdict::of_kubectl(&kubectl_as(&agent_kc, &all))
        };
        wait_for(
            "the pod-writes policy enforced",
            Duration::from_secs(60),
            || {
                as_agent(&["label", "pod", "probe", "x=y"])
                    .is_policy(POD_POLICY)
                    .then_some(())
            },
        );
        let ours = json!({"spec": {"schedulingGates": [{"name": GATE, "$patch": "delete"}]}});
        let ours = ours.to_string();
        assert_eq!(
            as_agent(&["patch", "pod", "probe", "--type=strategic", "-p", &ours]),
            Verdict::Allowed,
            "removing our gate"
        );
        let other =
            json!({"spec": {"schedulingGates": [{"name": "example.com/other", "$patch": "delete"}]}})
                .to_string();
        let ours_and_label = json!({
            "metadata": {"labels": {"x": "y"}},
            "spec": {"schedulingGates": [{"name": GATE, "$patch": "delete"}]}
        })
        .to_string();
        let denied: [(&[&str], &str); 5] = [
            (&["annotate", "pod", "probe", "x=y"], "an annotation"),
            (
                &["set", "image", "pod/probe", "job=registry.invalid/evil:1"],
                "the image",
            ),
            (
                &["patch", "pod", "probe", "--type=strategic", "-p", &other],
                "another gate",
            ),
            (
                &[
                    "patch",
                    "pod",
                    "probe",
                    "--type=strategic",
                    "-p",
                    &ours_and_label,
                ],
                "our gate and a label at once",
            ),
            (
                &[
                    "patch",
                    "pod",
                    "probe",
                    "--type=json",
                    "-p",
                    r#"[{"op":"add","path":"/spec/tolerations/-","value":{"operator":"Exists"}}]"#,
                ],
                "a toleration",
            ),
        ];
        for (args, what) in denied {
            let verdict = as_agent(args);
            assert!(verdict.is_policy(POD_POLICY), "{what}: {verdict:?}");
        }
        let can = |args: &[&str]| {
            let mut all = vec!["auth", "can-i"];
            all.extend_from_slice(args);
            String::from_utf8_lossy(&kubectl_as(&agent_kc, &all).stdout)
                .trim()
                .to_string()
        };
        assert_eq!(
            can(&["create", "pods", "--subresource=eviction", "-A"]),
            "yes"
        );
        assert_eq!(can(&["patch", "pods", "-A"]), "yes");
        assert_eq!(can(&["create", "events.events.k8s.io", "-A"]), "yes");
        for denied in [
            &["delete", "pods", "-A"][..],
            &["create", "pods", "-A"],
            &["update", "pods/status", "-A"],
            &["get", "secrets", "-n", NAMESPACE],
        ] {
            assert_eq!(can(denied), "no", "{denied:?}");
        }
        cp.kubectl_ok(&["delete", "pod", "probe", "--grace-period=0", "--force"]);

        // Now the real agent with this token: defer, release, migrate.
        let original = deployment_on(&cp, "mover", 1, "n1", &["f1"]).remove(0);
        let key_file = cp.dir.join("electricity-maps-token");
        std::fs::write(&key_file, TOKEN).unwrap();
        let args = agent_args(
            &api,
            &[
                "--taint-effect=NoSchedule",
                "--migration",
                "--migrate-after=2s",
            ],
        );
        let agent = Agent::spawn(
            &cp,
            "n1",
            &args,
            &[
                ("KUBECONFIG", agent_kc.to_str().unwrap()),
                ("ELECTRICITY_MAPS_TOKEN_FILE", key_file.to_str().unwrap()),
            ],
        );
        wait_score(&cp, "FR", 40.0, 40.0);
        let latest = rfc3339(seconds_from_now(4 * 3600));
        cp.apply(&gated_pod(
            "flat",
            &[("carbon-kube.io/latest-start", latest.as_str())],
            &[],
        ));
        wait_event(&cp, "default", "flat", "Released");
        wait_for("flat bound", Duration::from_secs(30), || {
            node_of(&pod(&cp, "flat"))
        });

        api.set_intensity("DE", 600.0);
        wait_for("the pod evicted", Duration::from_secs(60), || {
            pod(&cp, &original)["metadata"]["deletionTimestamp"]
                .as_str()
                .map(str::to_string)
        });
        wait_event(&cp, "default", &original, "Migrating");
        let replacement = wait_for("a replacement bound", Duration::from_secs(40), || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", "app=mover"]);
            pods["items"].as_array()?.iter().find_map(|p| {
                let name = p["metadata"]["name"].as_str()?;
                (name != original).then(|| node_of(p)).flatten()
            })
        });
        assert_eq!(replacement, "f1");
        let log = agent.output();
        assert!(
            !log.contains("Forbidden") && !log.contains("forbidden"),
            "the agent hit a permission error:\n{log}"
        );
        force_delete_all(&cp);
        drop(agent);
    });
}

/// The examples in deploy/examples apply as they are and do what they say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_manifests_run() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(
        &[("e1", "DE"), ("e2", "FR")],
        &[("DE", 450.0), ("FR", 350.0)],
        &["--migration"],
    )
    .await;
    let green_from = seconds_from_now(3600);
    api.set_forecast("DE", &hourly(green_from, &[90.0, 90.0, 90.0]));
    api.set_forecast("FR", &hourly(green_from, &[30.0, 30.0, 30.0]));
    let example = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/examples")
                .join(name),
        )
        .expect("example manifest")
    };
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 450.0, 90.0);
        wait_score(&cp, "FR", 350.0, 30.0);
        cp.apply(&example("deferred-job.yaml"));
        cp.apply(&example("migrating-deployment.yaml"));

        let job_pod = wait_for("the Job's pod", Duration::from_secs(30), || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", "job-name=carbon-aware-report"]);
            pods["items"][0]["metadata"]["name"]
                .as_str()
                .map(str::to_string)
        });
        let held = wait_event(&cp, "default", &job_pod, "Deferred");
        // Any zone with nodes: the cheapest, FR.
        assert!(
            held.contains("in zone FR") && held.contains("over 2h"),
            "{held}"
        );
        assert!(gates(&pod(&cp, &job_pod)).contains(&GATE.to_string()));

        let web = wait_for("3 web pods bound", Duration::from_secs(60), || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", "app=carbon-aware-web"]);
            let items = pods["items"].as_array()?.clone();
            (items.len() == 3 && items.iter().all(|p| node_of(p).is_some())).then_some(items)
        });
        for p in &web {
            assert_eq!(p["metadata"]["labels"]["carbon-kube.io/migrate"], "true");
        }
        let pdb = cp.kubectl_json(&["get", "pdb", "carbon-aware-web"]);
        assert_eq!(pdb["spec"]["minAvailable"], 2);

        // Green now and from now on: the Job's pod goes.
        api.set_intensity("DE", 80.0);
        api.set_intensity("FR", 20.0);
        api.clear_forecast("DE");
        api.clear_forecast("FR");
        wait_event(&cp, "default", &job_pod, "Released");
        wait_for("the Job's pod bound", Duration::from_secs(30), || {
            node_of(&pod(&cp, &job_pod))
        });
        let lead = leader(&mut agents);
        let lead = &agents[lead];
        assert_eq!(sample(lead, "carbon_kube_pods_deferred", ""), Some(0.0));
        force_delete_all(&cp);
    });
    drop(agents);
}

/// `manifest` (a pod) pinned to grid zone `zone` by its node selector.
fn pinned(manifest: String, zone: &str) -> Value {
    let mut pod: Value = serde_json::from_str(&manifest).expect("pod JSON");
    pod["spec"]["nodeSelector"] = json!({ "carbon-kube.io/grid-zone": zone });
    pod
}

/// Points every `spacing_s` seconds from `first`.
fn every(first: Timestamp, spacing_s: i64, values: &[f64]) -> Vec<(Timestamp, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| (first + SignedDuration::from_secs(spacing_s * k as i64), *v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_pods_fill_the_cheapest_slots_up_to_capacity_earliest_deadline_first() {
    let _serial = SERIAL.lock().await;
    // A compressed clock: forecast points 10 s apart stand for hours, and the planner's slot
    // follows the forecast's spacing. Node d1 (DE) has 4 vCPUs; with headroom 0.25 deferred
    // pods may book 3 of them, six half-vCPU pods per slot, while 20 such pods wait.
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(
        &[("d1", "DE"), ("f1", "FR"), ("s1", "ES")],
        &[("DE", 500.0), ("FR", 400.0), ("ES", 450.0)],
        &["--deferral-margin=0s", "--deferral-headroom=0.25"],
    )
    .await;
    const SLOT: i64 = 10;
    let first = seconds_from_now(0);
    let green_slot = 9;
    let green = first + SignedDuration::from_secs(SLOT * green_slot);
    let mut de = vec![500.0; green_slot as usize];
    de.extend([100.0, 150.0, 200.0, 250.0]);
    de.extend([400.0; 8]);
    api.set_forecast("DE", &every(first, SLOT, &de));
    api.set_forecast("FR", &every(first, SLOT, &[400.0; 21]));
    api.set_forecast("ES", &every(first, SLOT, &[450.0; 21]));
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 500.0, 100.0);
        // Four deadline groups of five pods, 10 s apart, all well after the green slot.
        let latest = |group: i64| green + SignedDuration::from_secs(45 + SLOT * group);
        let pods: Vec<(String, i64)> = (0..20)
            .map(|i| (format!("batch-{i:02}"), (i * 7) % 4))
            .collect();
        let items: Vec<Value> = pods
            .iter()
            .map(|(name, group)| {
                let latest = rfc3339(latest(*group));
                let annotations = [
                    ("carbon-kube.io/latest-start", latest.as_str()),
                    ("carbon-kube.io/duration", "10s"),
                ];
                pinned(gated_pod(name, &annotations, &[]), "DE")
            })
            .collect();
        cp.apply(&json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string());
        assert!(
            Timestamp::now() < green - SignedDuration::from_secs(10),
            "the pods came too late for the test's green slot"
        );

        // Act as the kubelet: a bound pod runs its 10 s, then succeeds, freeing its CPU.
        let mut released: std::collections::BTreeMap<String, Timestamp> = Default::default();
        let mut bound: std::collections::BTreeMap<String, Timestamp> = Default::default();
        let mut finished: std::collections::BTreeMap<String, Timestamp> = Default::default();
        let mut peak_booked: f64 = 0.0;
        let deadline = Instant::now() + Duration::from_secs(240);
        while finished.len() < pods.len() {
            assert!(
                Instant::now() < deadline,
                "only {} of 20 pods finished",
                finished.len()
            );
            let list = cp.kubectl_json(&["get", "pods", "-l", "!app"]);
            let now = Timestamp::now();
            for p in list["items"].as_array().into_iter().flatten() {
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if !gates(p).contains(&GATE.to_string()) {
                    released.entry(name.clone()).or_insert(now);
                }
                if node_of(p).is_some() {
                    bound.entry(name.clone()).or_insert(now);
                }
                let due = bound
                    .get(&name)
                    .is_some_and(|b| now.duration_since(*b) >= SignedDuration::from_secs(SLOT));
                if due && !finished.contains_key(&name) {
                    // Noted before the write: its CPU cannot be free any earlier.
                    finished.insert(name.clone(), Timestamp::now());
                    cp.kubectl_ok(&[
                        "patch",
                        "pod",
                        &name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        r#"{"status":{"phase":"Succeeded"}}"#,
                    ]);
                }
            }
            if let Some(lead) = scenario::leader(&mut agents) {
                if let Some(booked) = sample(
                    &agents[lead],
                    "carbon_kube_deferral_booked_vcpus",
                    "zone=\"DE\"",
                ) {
                    peak_booked = peak_booked.max(booked);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        // The ledger: the green slot was booked full, and never beyond what may be booked.
        assert!(
            (peak_booked - 3.0).abs() < 1e-9,
            "peak booked {peak_booked} vCPU in DE (capacity 4 × (1 − 0.25) = 3)"
        );
        let mut order: Vec<(&String, &Timestamp)> = released.iter().collect();
        order.sort_by_key(|(_, at)| **at);
        for (name, at) in &order {
            let group = pods.iter().find(|(n, _)| n == *name).unwrap().1;
            println!(
                "{name}: group {group}, released {:+.1} s after the green slot began",
                at.duration_since(green).as_secs_f64()
            );
        }
        // Not before the green slot: nothing was worth starting while DE was at 500.
        for (name, at) in &released {
            assert!(
                *at >= green,
                "{name} released {:?} before the green slot",
                green.duration_since(*at)
            );
        }
        // Never more than 3 vCPU (six pods) of deferred work at once. A release is seen after it
        // happened and a finish noted before it happened, so the count cannot come out low.
        for (name, at) in &released {
            let running = released
                .iter()
                .filter(|(other, start)| {
                    *start <= at && finished.get(*other).is_none_or(|end| end > at)
                })
                .count();
            assert!(
                running <= 6,
                "{running} pods running when {name} was released"
            );
        }
        // Earliest deadline first: every pod of a group goes before any pod of a group with a
        // deadline 20 s later (adjacent groups share a slot).
        let group_times = |g: i64| -> Vec<Timestamp> {
            pods.iter()
                .filter(|(_, group)| *group == g)
                .map(|(name, _)| released[name])
                .collect()
        };
        for g in 0..2 {
            let early = group_times(g).into_iter().max().unwrap();
            let late = group_times(g + 2).into_iter().min().unwrap();
            assert!(
                early < late,
                "group {g} released until {early}, group {} from {late}",
                g + 2
            );
        }
        // None after its latest start (seen released, so released no later than that).
        for (name, group) in &pods {
            let at = released[name];
            assert!(
                at <= latest(*group),
                "{name} released at {at}, latest start {}",
                latest(*group)
            );
            let held = events(&cp, "default", name);
            assert!(
                held.iter()
                    .any(|(r, m)| r == "Deferred" && m.contains("planned start")),
                "{name}: {held:?}"
            );
        }
        let spread = order.last().unwrap().1.duration_since(*order[0].1);
        println!("20 pods released over {spread:?}; peak booked {peak_booked} vCPU");
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_that_turns_bad_releases_the_held_pod_at_once_with_a_warning() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("b1", "DE")], &[("DE", 500.0)], &[]).await;
    let green_from = seconds_from_now(3600);
    api.set_forecast("DE", &hourly(green_from, &[50.0, 50.0, 400.0]));
    tokio::task::block_in_place(|| {
        wait_score(&cp, "DE", 500.0, 50.0);
        let latest = rfc3339(seconds_from_now(6 * 3600));
        cp.apply(&gated_pod(
            "held",
            &[
                ("carbon-kube.io/latest-start", latest.as_str()),
                ("carbon-kube.io/zone", "DE"),
            ],
            &[],
        ));
        wait_event(&cp, "default", "held", "Deferred");
        // Hours 2 and 3 go missing (a provider skips hours without a value).
        let broken = Instant::now();
        let gapped: Vec<(Timestamp, f64)> = hourly(green_from, &[50.0, 50.0, 400.0, 400.0, 400.0])
            .into_iter()
            .enumerate()
            .filter(|(k, _)| !(2..4).contains(k))
            .map(|(_, p)| p)
            .collect();
        api.set_forecast("DE", &gapped);
        wait_for("held released", Duration::from_secs(30), || {
            (!gates(&pod(&cp, "held")).contains(&GATE.to_string())).then_some(())
        });
        let latency = broken.elapsed();
        let warning = wait_event(&cp, "default", "held", "ReleasedWithoutForecast");
        assert!(
            warning.contains("has a gap from") && warning.contains("Availability wins"),
            "{warning}"
        );
        let kinds = cp.kubectl_ok(&[
            "get",
            "events",
            "--field-selector=reason=ReleasedWithoutForecast",
        ]);
        assert!(kinds.contains("Warning"), "{kinds}");
        let lead = leader(&mut agents);
        assert_eq!(
            sample(
                &agents[lead],
                "carbon_kube_deferral_releases_total",
                "reason=\"no_forecast\""
            ),
            Some(1.0)
        );
        println!("a gap in the forecast released the held pod {latency:?} after it appeared");
    });
    drop(agents);
}
