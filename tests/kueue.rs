//! Batch admission with real Kueue (v0.17.0, built from its Go module into the test
//! control-plane binary) on the real control plane: Jobs queued through a LocalQueue and
//! a ClusterQueue.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::{ControlPlane, wait_for};
use support::kueue::{Kueue, is_true, job, queues, workload_of};

fn job_json(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl_json(&["get", "job", name])
}

fn suspended(cp: &ControlPlane, name: &str) -> bool {
    job_json(cp, name)["spec"]["suspend"] == Value::Bool(true)
}

fn wait_admitted(cp: &ControlPlane, name: &str) -> Value {
    wait_for(
        &format!("the Workload of Job {name} admitted"),
        Duration::from_secs(60),
        || workload_of(cp, "default", name).filter(|w| is_true(w, "Admitted")),
    )
}

#[test]
fn a_queued_job_is_suspended_until_kueue_admits_it_within_quota() {
    let cp = ControlPlane::start();
    let _kueue = Kueue::start(&cp);
    // One CPU of quota: the second one-CPU Job waits for the first.
    cp.apply(&queues("batch", "work", "default", "1", &[]));
    wait_for("ClusterQueue batch active", Duration::from_secs(30), || {
        let cq = cp.kubectl_json(&["get", "clusterqueues.kueue.x-k8s.io", "batch"]);
        is_true(&cq, "Active").then_some(())
    });

    cp.apply(&job("first", "default", "work", 1, "1").to_string());
    // Kueue's webhook suspended it at creation: no pod may start before admission.
    let created = job_json(&cp, "first");
    assert_eq!(created["spec"]["suspend"], Value::Bool(true), "{created}");
    let workload = wait_admitted(&cp, "first");
    assert_eq!(
        workload["status"]["admission"]["clusterQueue"], "batch",
        "{workload}"
    );
    wait_for("Job first unsuspended", Duration::from_secs(30), || {
        (!suspended(&cp, "first")).then_some(())
    });

    cp.apply(&job("second", "default", "work", 1, "1").to_string());
    let pending = wait_for(
        "the Workload of Job second, pending for quota",
        Duration::from_secs(30),
        || {
            workload_of(&cp, "default", "second").filter(|w| {
                w["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
        },
    );
    assert!(!is_true(&pending, "QuotaReserved"), "{pending}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(suspended(&cp, "second"), "second ran past the quota");
    assert!(!is_true(
        &workload_of(&cp, "default", "second").unwrap_or_default(),
        "Admitted"
    ));

    // The first Job's quota comes back when it is gone: the second is admitted.
    cp.kubectl_ok(&["delete", "job", "first", "--wait=false"]);
    wait_admitted(&cp, "second");
    wait_for("Job second unsuspended", Duration::from_secs(30), || {
        (!suspended(&cp, "second")).then_some(())
    });
}

// ---------------------------------------------------------------------------
// carbon-kube's green-window AdmissionCheck, decided by the leader.
// ---------------------------------------------------------------------------

mod green_window {
    use std::time::{Duration, Instant};

    use jiff::{SignedDuration, Timestamp};
    use serde_json::{Value, json};

    use super::support::cluster::{Agent, ControlPlane, wait_for};
    use super::support::kueue::{API, Kueue, is_true, job, queues, workload_of};
    use super::support::scenario::{Cluster, cluster_with_intensity, leader};

    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A compressed clock: forecast points this many seconds apart stand for hours.
    const SLOT: i64 = 10;

    fn every(first: Timestamp, values: &[f64]) -> Vec<(Timestamp, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(k, v)| (first + SignedDuration::from_secs(SLOT * k as i64), *v))
            .collect()
    }

    /// Waits until the leader has written `zone`'s forecast with this lowest point.
    fn wait_forecast_min(cp: &ControlPlane, zone: &str, min: f64) {
        wait_for(
            &format!("{zone}'s forecast in its CarbonScore"),
            Duration::from_secs(40),
            || {
                let s = cp.kubectl_json(&["get", "carbonscore", &zone.to_ascii_lowercase()]);
                (s["status"]["forecastMinGramsPerKwh"].as_f64() == Some(min)).then_some(())
            },
        );
    }

    /// Our parameters CRD, then a GreenWindowConfig, an AdmissionCheck using it, and queues
    /// `cq-NAME` / `lq-NAME` with that check and 8 CPUs of quota.
    fn green_queue(cp: &ControlPlane, name: &str, config: Value) {
        let config = json!({
            "apiVersion": "carbon-kube.io/v1alpha1", "kind": "GreenWindowConfig",
            "metadata": { "name": name }, "spec": config,
        });
        let check = json!({
            "apiVersion": API, "kind": "AdmissionCheck",
            "metadata": { "name": name },
            "spec": {
                "controllerName": "carbon-kube.io/green-window",
                "parameters": { "apiGroup": "carbon-kube.io", "kind": "GreenWindowConfig", "name": name },
            },
        });
        cp.apply(&format!("{config}\n---\n{check}"));
        cp.apply(&queues(
            &format!("cq-{name}"),
            &format!("lq-{name}"),
            "default",
            "8",
            &[name],
        ));
        wait_for(
            &format!("ClusterQueue cq-{name} active (our check marked Active)"),
            Duration::from_secs(40),
            || {
                let cq = cp.kubectl_json(&[
                    "get",
                    "clusterqueues.kueue.x-k8s.io",
                    &format!("cq-{name}"),
                ]);
                is_true(&cq, "Active").then_some(())
            },
        );
    }

    fn install_parameters_crd(cp: &ControlPlane) {
        let crd = std::process::Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
            .arg("kueue-crd")
            .output()
            .expect("carbon-kube kueue-crd");
        assert!(crd.status.success());
        cp.apply(&String::from_utf8_lossy(&crd.stdout));
        cp.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/greenwindowconfigs.carbon-kube.io",
            "--timeout=30s",
        ]);
    }

    async fn green_cluster(
        nodes: &[(&str, &str)],
        intensity: &[(&str, f64)],
        extra: &[&str],
    ) -> (Cluster, Kueue) {
        let mut args = vec!["--kueue-green-window", "--deferral-margin=0s"];
        args.extend_from_slice(extra);
        let cluster = cluster_with_intensity(nodes, intensity, &args).await;
        let kueue = tokio::task::block_in_place(|| {
            install_parameters_crd(&cluster.cp);
            Kueue::start(&cluster.cp)
        });
        (cluster, kueue)
    }

    /// Our check's entry in the Workload's status.
    fn our_check(workload: &Value, name: &str) -> Option<Value> {
        workload["status"]["admissionChecks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    }

    fn time_in(message: &str, after: &str) -> Timestamp {
        let rest = message.split(after).nth(1).expect(after);
        rest.split_whitespace()
            .next()
            .and_then(|t| t.trim_end_matches(['.', ',']).parse().ok())
            .unwrap_or_else(|| panic!("no time after {after:?} in {message:?}"))
    }

    fn sample(agent: &Agent, name: &str, label: &str) -> Option<f64> {
        let text = agent.metrics()?;
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_is_admitted_at_the_planned_green_hour_not_before_and_pinned_to_that_zone() {
        let _serial = SERIAL.lock().await;
        let (
            Cluster {
                cp,
                api,
                mut agents,
            },
            _kueue,
        ) = green_cluster(
            &[("d1", "DE"), ("f1", "FR")],
            &[("DE", 500.0), ("FR", 400.0)],
            &[],
        )
        .await;
        // DE turns green after five slots, for six; FR stays at 400.
        let first = Timestamp::now();
        let green_from = first + SignedDuration::from_secs(SLOT * 5);
        let mut de = vec![500.0; 5];
        de.extend([50.0; 6]);
        de.extend([500.0; 10]);
        api.set_forecast("DE", &every(first, &de));
        api.set_forecast("FR", &every(first, &[400.0; 21]));
        tokio::task::block_in_place(|| {
            wait_forecast_min(&cp, "DE", 50.0);
            green_queue(
                &cp,
                "night",
                json!({ "maxDelay": "3m", "defaultDuration": "20s" }),
            );
            let submitted = Instant::now();
            cp.apply(&job("render", "default", "lq-night", 1, "1").to_string());

            let held = wait_for(
                "the check Pending with a plan",
                Duration::from_secs(30),
                || {
                    let w = workload_of(&cp, "default", "render")?;
                    our_check(&w, "night").filter(|c| {
                        c["state"] == "Pending"
                            && c["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("planned start"))
                    })
                },
            );
            let message = held["message"].as_str().unwrap_or_default().to_string();
            assert!(message.contains("in zone DE"), "{message}");
            let planned = time_in(&message, "planned start ");
            assert!(
                planned >= green_from - SignedDuration::from_secs(SLOT),
                "planned {planned}, green from {green_from}: {message}"
            );
            let lead = leader(&mut agents).expect("a leader");
            assert_eq!(
                sample(&agents[lead], "carbon_kube_kueue_workloads_held", ""),
                Some(1.0)
            );

            // Not before: the Job stays suspended and the Workload unadmitted until the plan.
            // The Job is read before the Workload: Kueue admits, then unsuspends, so a Job seen
            // running before its Workload reads admitted really ran early.
            let admitted = wait_for("the Workload admitted", Duration::from_secs(120), || {
                let job = cp.kubectl_json(&["get", "job", "render"]);
                let w = workload_of(&cp, "default", "render")?;
                if is_true(&w, "Admitted") {
                    return Some(Timestamp::now());
                }
                assert_eq!(
                    job["spec"]["suspend"],
                    Value::Bool(true),
                    "ran before admission"
                );
                None
            });
            // Slots run from now in steps of the forecast's spacing, so the release lands in
            // the slot of the planned start: at most one slot early.
            let early = planned.duration_since(admitted);
            assert!(
                early < SignedDuration::from_secs(SLOT),
                "admitted at {admitted}, {early:?} before the planned start {planned}"
            );
            let delay = admitted.duration_since(planned);
            let w = workload_of(&cp, "default", "render").expect("workload");
            let ready = our_check(&w, "night").expect("our check");
            assert_eq!(ready["state"], "Ready", "{ready}");
            let text = ready["message"].as_str().unwrap_or_default();
            assert!(
                text.contains("greenest start") && text.contains("zone DE"),
                "{text}"
            );
            // The cluster spans two zones: the pods are pinned to the booked one.
            let job = wait_for("Job render unsuspended", Duration::from_secs(30), || {
                let job = cp.kubectl_json(&["get", "job", "render"]);
                (job["spec"]["suspend"] == Value::Bool(false)).then_some(job)
            });
            assert_eq!(
                job["spec"]["template"]["spec"]["nodeSelector"]["carbon-kube.io/grid-zone"], "DE",
                "{job}"
            );
            let lead = leader(&mut agents).expect("a leader");
            let lead = &agents[lead];
            assert_eq!(
                sample(lead, "carbon_kube_kueue_workloads_held", ""),
                Some(0.0)
            );
            assert_eq!(
                sample(
                    lead,
                    "carbon_kube_kueue_checks_ready_total",
                    "reason=\"greenest_now\""
                ),
                Some(1.0)
            );
            println!(
                "kueue green-window: planned start {planned} (green from {green_from}, slot {SLOT} s); \
                 admitted {:+.1} s from the planned start, {:+.1} s from the start of the green \
                 period, {:.1} s after submission",
                delay.as_secs_f64(),
                admitted.duration_since(green_from).as_secs_f64(),
                submitted.elapsed().as_secs_f64()
            );
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_is_admitted_by_its_latest_start_even_if_greener_later() {
        let _serial = SERIAL.lock().await;
        let (
            Cluster {
                cp,
                api,
                agents: _agents,
            },
            _kueue,
        ) = green_cluster(&[("d1", "DE")], &[("DE", 500.0)], &["--deferral-k-sigma=0"]).await;
        // Greener with every slot, well past the 40 s maximum delay: the best start the
        // Workload may take is its latest.
        let first = Timestamp::now();
        let de: Vec<f64> = (0..14).map(|k| 500.0 - 20.0 * f64::from(k)).collect();
        api.set_forecast("DE", &every(first, &de));
        tokio::task::block_in_place(|| {
            wait_forecast_min(&cp, "DE", 240.0);
            green_queue(
                &cp,
                "late",
                json!({ "zone": "DE", "maxDelay": "40s", "defaultDuration": "10s" }),
            );
            cp.apply(&job("report", "default", "lq-late", 1, "500m").to_string());
            let created: Timestamp = wait_for("the Workload", Duration::from_secs(30), || {
                workload_of(&cp, "default", "report")
            })["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("creationTimestamp");
            let latest = created + SignedDuration::from_secs(40);
            let held = wait_for(
                "the check Pending with a plan",
                Duration::from_secs(30),
                || {
                    our_check(&workload_of(&cp, "default", "report")?, "late").filter(|c| {
                        c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("planned start"))
                    })
                },
            );
            let message = held["message"].as_str().unwrap_or_default().to_string();
            assert_eq!(time_in(&message, "Ready by "), latest, "{message}");
            let admitted = wait_for("the Workload admitted", Duration::from_secs(90), || {
                let w = workload_of(&cp, "default", "report")?;
                is_true(&w, "Admitted").then(|| (Timestamp::now(), w))
            });
            let (admitted_at, w) = admitted;
            let ready = our_check(&w, "late").expect("our check");
            let ready_at: Timestamp = ready["lastTransitionTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("lastTransitionTime");
            // Never after the latest start (second resolution of the API's times).
            assert!(
                ready_at <= latest,
                "Ready at {ready_at}, latest start {latest}: {ready}"
            );
            assert!(
                ready_at >= latest - SignedDuration::from_secs(SLOT + 2),
                "Ready at {ready_at}, long before the latest start {latest}: {ready}"
            );
            let text = ready["message"].as_str().unwrap_or_default();
            assert!(text.contains("latest start"), "{text}");
            println!(
                "kueue green-window: greener after the latest start; check Ready {:.0} s before the latest start, \
                 Workload admitted {:+.1} s from it",
                latest.duration_since(ready_at).as_secs_f64(),
                admitted_at.duration_since(latest).as_secs_f64()
            );
        });
    }

    /// The agent with the chart's RBAC (kueue.enabled) and a node-bound service-account
    /// token, as in a cluster: it marks its check Active and decides a Workload, and may write
    /// nothing of Kueue's but the two statuses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_charts_rbac_the_agent_decides_checks_and_writes_only_statuses() {
        use super::support::carbon_api::{CarbonApi, EM_TOKEN};
        use super::support::deploy::{
            AGENT_SA, NAMESPACE, kubectl_as, require_helm, service_account_kubeconfig, template_ok,
        };
        use super::support::scenario::agent_args;
        let _serial = SERIAL.lock().await;
        require_helm();
        let api = CarbonApi::start().await;
        api.set_intensity("DE", 100.0);
        tokio::task::block_in_place(|| {
            let cp = ControlPlane::start();
            cp.create_node("n1", &[("carbon-kube.io/grid-zone", "DE")]);
            let _kueue = Kueue::start(&cp);
            cp.apply(&template_ok(&[
                "--set",
                "kueue.enabled=true",
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/crd-kueue.yaml",
            ]));
            cp.kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "crd/greenwindowconfigs.carbon-kube.io",
                "--timeout=30s",
            ]);
            let agent_kc =
                service_account_kubeconfig(&cp, NAMESPACE, AGENT_SA, Some(("Node", "n1")));
            let can = |args: &[&str]| {
                let mut all = vec!["auth", "can-i"];
                all.extend_from_slice(args);
                String::from_utf8_lossy(&kubectl_as(&agent_kc, &all).stdout)
                    .trim()
                    .to_string()
            };
            for allowed in [
                &[
                    "patch",
                    "workloads.kueue.x-k8s.io",
                    "--subresource=status",
                    "-A",
                ][..],
                &[
                    "patch",
                    "admissionchecks.kueue.x-k8s.io",
                    "--subresource=status",
                ],
                &["watch", "workloads.kueue.x-k8s.io", "-A"],
                &["list", "greenwindowconfigs.carbon-kube.io"],
            ] {
                assert_eq!(can(allowed), "yes", "{allowed:?}");
            }
            for denied in [
                &["patch", "workloads.kueue.x-k8s.io", "-A"][..],
                &["delete", "workloads.kueue.x-k8s.io", "-A"],
                &["patch", "admissionchecks.kueue.x-k8s.io"],
                &[
                    "patch",
                    "clusterqueues.kueue.x-k8s.io",
                    "--subresource=status",
                ],
                &["create", "greenwindowconfigs.carbon-kube.io"],
                &["patch", "pods", "-A"],
            ] {
                assert_eq!(can(denied), "no", "{denied:?}");
            }

            let key_file = cp.dir.join("electricity-maps-token");
            std::fs::write(&key_file, EM_TOKEN).expect("key file");
            let args = agent_args(&api, &["--kueue-green-window", "--deferral=false"]);
            let agent = Agent::spawn(
                &cp,
                "n1",
                &args,
                &[
                    ("KUBECONFIG", agent_kc.to_str().expect("utf-8 path")),
                    (
                        "ELECTRICITY_MAPS_TOKEN_FILE",
                        key_file.to_str().expect("utf-8 path"),
                    ),
                ],
            );
            green_queue(&cp, "rbac", json!({ "zone": "DE", "maxDelay": "1h" }));
            cp.apply(&job("flat", "default", "lq-rbac", 1, "100m").to_string());
            let w = wait_for("flat admitted", Duration::from_secs(60), || {
                workload_of(&cp, "default", "flat").filter(|w| is_true(w, "Admitted"))
            });
            let state = our_check(&w, "rbac").expect("our check");
            assert_eq!(state["state"], "Ready", "{state}");

            let log = agent.output();
            assert!(
                !log.contains("Forbidden") && !log.contains("forbidden"),
                "the agent hit a permission error:\n{log}"
            );
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_made_ready_at_once_with_a_message_on_the_workload() {
        let _serial = SERIAL.lock().await;
        let (Cluster { cp, api, mut agents }, _kueue) =
            // The local API dates each reading at the start of its hour (as Electricity Maps
            // does), so with a one-second --max-age every CarbonScore is stale data.
            green_cluster(&[("d1", "DE")], &[("DE", 500.0)], &["--max-age=1s"]).await;
        let first = Timestamp::now();
        let mut de = vec![500.0; 6];
        de.extend([40.0; 30]);
        api.set_forecast("DE", &every(first, &de));
        tokio::task::block_in_place(|| {
            wait_forecast_min(&cp, "DE", 40.0);
            green_queue(&cp, "broken", json!({ "maxDelay": "soon" }));
            green_queue(&cp, "nowhere", json!({ "zone": "PL", "maxDelay": "1h" }));
            green_queue(&cp, "fine", json!({ "zone": "DE", "maxDelay": "1h" }));
            let mut bad_annotation = job("typo", "default", "lq-fine", 1, "100m");
            bad_annotation["spec"]["template"]["metadata"] =
                json!({ "annotations": { "carbon-kube.io/duration": "a while" } });
            let cases = [
                (
                    job("broken", "default", "lq-broken", 1, "100m"),
                    "broken",
                    "GreenWindowConfig broken: spec.maxDelay \"soon\"",
                ),
                (
                    job("nowhere", "default", "lq-nowhere", 1, "100m"),
                    "nowhere",
                    "no CarbonScore for zone PL",
                ),
                (
                    bad_annotation,
                    "fine",
                    "annotation carbon-kube.io/duration=\"a while\"",
                ),
            ];
            for (job, _, _) in &cases {
                cp.apply(&job.to_string());
            }
            for (job, check, says) in &cases {
                let name = job["metadata"]["name"].as_str().unwrap_or_default();
                let w = wait_for(
                    &format!("{name} admitted at once"),
                    Duration::from_secs(30),
                    || workload_of(&cp, "default", name).filter(|w| is_true(w, "Admitted")),
                );
                let state = our_check(&w, check).expect("our check");
                let message = state["message"].as_str().unwrap_or_default();
                assert_eq!(state["state"], "Ready", "{state}");
                assert!(
                    message.contains("Ready at once") && message.contains(says),
                    "{name}: {message}"
                );
            }

            // A well-formed request in a known zone, on stale data.
            cp.apply(&job("stale", "default", "lq-fine", 1, "100m").to_string());
            let w = wait_for("stale admitted at once", Duration::from_secs(30), || {
                workload_of(&cp, "default", "stale").filter(|w| is_true(w, "Admitted"))
            });
            let message = our_check(&w, "fine").expect("our check")["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(message.contains("carbon data of zone DE is"), "{message}");

            let lead = leader(&mut agents).expect("a leader");
            let lead = &agents[lead];
            assert_eq!(
                sample(
                    lead,
                    "carbon_kube_kueue_checks_ready_total",
                    "reason=\"invalid\""
                ),
                Some(2.0)
            );
            assert_eq!(
                sample(
                    lead,
                    "carbon_kube_kueue_checks_ready_total",
                    "reason=\"no_forecast\""
                ),
                Some(2.0)
            );
            assert_eq!(
                sample(lead, "carbon_kube_kueue_workloads_held", ""),
                Some(0.0)
            );
        });
    }
}

#[test]
fn chart_green_window_crd_is_the_binarys_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .arg("kueue-crd")
        .output()
        .expect("carbon-kube kueue-crd");
    assert!(out.status.success());
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/helm/carbon-kube/files/greenwindowconfigs.carbon-kube.io.yaml");
    let checked_in = std::fs::read_to_string(&file).expect("the chart's copy");
    assert!(
        String::from_utf8_lossy(&out.stdout) == checked_in,
        "{} differs from `carbon-kube kueue-crd`, which embeds it: rebuild, or regenerate it from the types with `CARBON_KUBE_UPDATE_CRD=1 cargo test --lib crd`",
        file.display()
    );
}

// ---------------------------------------------------------------------------
// MultiKueue: a manager and two workers in different zones, dispatched by carbon-kube.
// ---------------------------------------------------------------------------

mod multikueue {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::support::cluster::{ControlPlane, wait_for};
    use super::support::kueue::{API, Kueue, is_true, job, queues, workload_of};

    fn worker(queue_cpu: &str) -> (ControlPlane, Kueue) {
        let cp = ControlPlane::start();
        let kueue = Kueue::start(&cp);
        cp.apply(&queues("cq", "lq", "default", queue_cpu, &[]));
        (cp, kueue)
    }

    fn nominated(manager: &ControlPlane, job: &str) -> Option<Vec<String>> {
        let w = workload_of(manager, "default", job)?;
        let names: Vec<String> = w["status"]["nominatedClusterNames"]
            .as_array()?
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        (!names.is_empty()).then_some(names)
    }

    /// `zone`'s CarbonScore on a worker, as the worker's own leader would write it.
    fn worker_score(worker: &ControlPlane, zone: &str, grams: f64) {
        let name = zone.to_ascii_lowercase();
        worker.apply(
            &json!({
                "apiVersion": "carbon-kube.io/v1alpha1", "kind": "CarbonScore",
                "metadata": { "name": name }, "spec": { "zone": zone },
            })
            .to_string(),
        );
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let hour = |k: i64| {
            (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(k))
                .strftime("%Y-%m-%dT%H:00:00Z")
                .to_string()
        };
        let status = json!({ "status": {
            "intensityGramsPerKwh": grams, "source": "electricity-maps", "estimated": false,
            "kind": "Measured", "observedAt": now, "fetchedAt": now,
            "forecast": (1..=4).map(|k| json!({ "at": hour(k), "gramsPerKwh": grams })).collect::<Vec<_>>(),
            "thresholdGramsPerKwh": 300.0, "taintAllowed": false, "nodes": 1,
        }});
        worker.kubectl_ok(&[
            "patch",
            "carbonscore",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }

    fn has_job(cp: &ControlPlane, name: &str) -> bool {
        cp.kubectl(&["get", "job", name]).status.success()
    }

    fn wait_score(cp: &ControlPlane, zone: &str, intensity: f64) {
        wait_for(
            &format!("CarbonScore {zone} at {intensity}"),
            Duration::from_secs(40),
            || {
                let s = cp.kubectl_json(&["get", "carbonscore", &zone.to_ascii_lowercase()]);
                (s["status"]["intensityGramsPerKwh"].as_f64() == Some(intensity)).then_some(())
            },
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_goes_to_the_greener_worker_and_the_next_follows_a_flip() {
        use super::support::carbon_api::{CarbonApi, EM_TOKEN};
        use super::support::cluster::Agent;
        use super::support::deploy::{
            AGENT_SA, NAMESPACE, require_helm, service_account_kubeconfig, template_ok,
        };
        use super::support::scenario::agent_args;
        require_helm();
        let api = CarbonApi::start().await;
        api.set_intensity("DE", 500.0);
        api.set_intensity("FR", 100.0);
        tokio::task::block_in_place(|| {
            // The manager's leader polls the zone of its own node, DE; FR comes from the FR
            // worker's own CarbonScore, read with Kueue's kubeconfig Secret for it.
            let manager = ControlPlane::start();
            manager.create_node("m-de", &[("carbon-kube.io/grid-zone", "DE")]);
            let _ = manager.kubectl(&["create", "namespace", "kueue-system"]);
            // The agent runs with the chart's RBAC (kueue.dispatcher) and a node-bound token.
            manager.apply(&template_ok(&[
                "--set",
                "kueue.dispatcher=true",
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
            ]));
            let agent_kc =
                service_account_kubeconfig(&manager, NAMESPACE, AGENT_SA, Some(("Node", "m-de")));
            let key_file = manager.dir.join("electricity-maps-token");
            std::fs::write(&key_file, EM_TOKEN).expect("key file");
            let agent = Agent::spawn(
                &manager,
                "m-de",
                &agent_args(
                    &api,
                    &[
                        "--kueue-dispatcher",
                        "--deferral=false",
                        "--kueue-widen-after=5s",
                    ],
                ),
                &[
                    ("KUBECONFIG", agent_kc.to_str().expect("utf-8 path")),
                    (
                        "ELECTRICITY_MAPS_TOKEN_FILE",
                        key_file.to_str().expect("utf-8 path"),
                    ),
                ],
            );
            // w-de has room for small Jobs only (the third Job below does not fit).
            let (w_de, _kueue_de) = worker("2");
            let (w_fr, _kueue_fr) = worker("8");
            let _kueue = Kueue::start_with(
                &manager,
                "multiKueue:\n  dispatcherName: carbon-kube.io/greenest",
            );
            for (name, zone, worker) in [("w-de", "DE", &w_de), ("w-fr", "FR", &w_fr)] {
                manager.kubectl_ok(&[
                    "create",
                    "secret",
                    "generic",
                    &format!("{name}-kubeconfig"),
                    "-n",
                    "kueue-system",
                    &format!("--from-file=kubeconfig={}", worker.kubeconfig.display()),
                ]);
                manager.apply(
                    &json!({
                        "apiVersion": API, "kind": "MultiKueueCluster",
                        "metadata": { "name": name, "labels": { "carbon-kube.io/grid-zone": zone } },
                        "spec": { "clusterSource": { "kubeConfig": {
                            "locationType": "Secret", "location": format!("{name}-kubeconfig"),
                        }}},
                    })
                    .to_string(),
                );
            }
            let config = json!({
                "apiVersion": API, "kind": "MultiKueueConfig",
                "metadata": { "name": "workers" },
                "spec": { "clusters": ["w-de", "w-fr"] },
            });
            let check = json!({
                "apiVersion": API, "kind": "AdmissionCheck",
                "metadata": { "name": "multikueue" },
                "spec": {
                    "controllerName": "kueue.x-k8s.io/multikueue",
                    "parameters": { "apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": "workers" },
                },
            });
            manager.apply(&format!("{config}\n---\n{check}"));
            manager.apply(&queues("cq", "lq", "default", "8", &["multikueue"]));
            wait_for(
                "the manager's ClusterQueue active (workers connected)",
                Duration::from_secs(90),
                || {
                    let cq = manager.kubectl_json(&["get", "clusterqueues.kueue.x-k8s.io", "cq"]);
                    is_true(&cq, "Active").then_some(())
                },
            );
            wait_score(&manager, "DE", 500.0);
            worker_score(&w_fr, "FR", 100.0);
            // The leader reads a worker's score at most every 10 s.
            std::thread::sleep(Duration::from_secs(11));
            assert!(
                !manager
                    .kubectl(&["get", "carbonscore", "fr"])
                    .status
                    .success(),
                "the manager polls FR itself"
            );

            let submitted = std::time::Instant::now();
            manager.apply(&job("first", "default", "lq", 1, "500m").to_string());
            let names = wait_for("first nominated", Duration::from_secs(60), || {
                nominated(&manager, "first")
            });
            let nominated_after = submitted.elapsed();
            assert_eq!(names, ["w-fr"]);
            wait_for("first's copy on w-fr", Duration::from_secs(60), || {
                has_job(&w_fr, "first").then_some(())
            });
            assert!(!has_job(&w_de, "first"), "a copy on the dirtier worker");
            let placed: Value = wait_for("first placed on w-fr", Duration::from_secs(60), || {
                workload_of(&manager, "default", "first")
                    .filter(|w| w["status"]["clusterName"].as_str() == Some("w-fr"))
            });
            assert!(is_true(&placed, "QuotaReserved"), "{placed}");
            let placed_after = submitted.elapsed();

            // The order of the zones flips: the next Job goes to the other worker.
            api.set_intensity("DE", 50.0);
            wait_score(&manager, "DE", 50.0);
            worker_score(&w_fr, "FR", 400.0);
            // The leader reads a worker's score at most every 10 s.
            std::thread::sleep(Duration::from_secs(11));
            manager.apply(&job("second", "default", "lq", 1, "500m").to_string());
            let names = wait_for("second nominated", Duration::from_secs(60), || {
                nominated(&manager, "second")
            });
            assert_eq!(names, ["w-de"]);
            wait_for("second's copy on w-de", Duration::from_secs(60), || {
                has_job(&w_de, "second").then_some(())
            });
            assert!(!has_job(&w_fr, "second"), "a copy on the dirtier worker");

            println!(
                "multikueue greenest: first Job nominated to w-fr {:.1} s after submission, \
                 admitted there (clusterName) after {:.1} s; after the flip the next went to w-de",
                nominated_after.as_secs_f64(),
                placed_after.as_secs_f64()
            );
            let metrics = agent.metrics().unwrap_or_default();
            for cluster in ["w-fr", "w-de"] {
                let line = format!("cluster=\"{cluster}\"");
                assert!(
                    metrics
                        .lines()
                        .any(|l| l.starts_with("carbon_kube_kueue_dispatched_total")
                            && l.contains(&line)
                            && l.contains("reason=\"greenest\"")
                            && l.ends_with(" 1")),
                    "{cluster}:\n{metrics}"
                );
            }
            // The greenest worker has no room for the third Job: after --kueue-widen-after
            // it is offered to the next greenest too, which admits it.
            let submitted = std::time::Instant::now();
            manager.apply(&job("third", "default", "lq", 1, "4").to_string());
            let names = wait_for("third nominated", Duration::from_secs(60), || {
                nominated(&manager, "third")
            });
            assert_eq!(names, ["w-de"], "the greenest first");
            wait_for("third placed on w-fr", Duration::from_secs(90), || {
                workload_of(&manager, "default", "third")
                    .filter(|w| w["status"]["clusterName"].as_str() == Some("w-fr"))
            });
            println!(
                "multikueue greenest: a Job the greenest worker had no room for was admitted by \
                 the next greenest {:.1} s after submission (widen after 5 s)",
                submitted.elapsed().as_secs_f64()
            );
            let widened = agent.metric_with(
                "carbon_kube_kueue_dispatched_total",
                &[("cluster", "w-fr"), ("reason", "widened")],
            );
            assert_eq!(widened, Some(1.0));

            let log = agent.output();
            assert!(
                !log.contains("Forbidden") && !log.contains("forbidden"),
                "the agent hit a permission error:\n{log}"
            );
        });
    }
}
