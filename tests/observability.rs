//! Observability end to end: the alert rules under promtool, the dashboards
//! as Grafana reads them, and a real Prometheus scraping agents in the test
//! control plane, with per-pod attribution on fake cgroup trees, until every
//! dashboard query returns data.

#[path = "observability/dashboards.rs"]
mod dashboards;
#[path = "observability/fake_cgroups.rs"]
mod fake_cgroups;
#[allow(dead_code)]
#[path = "observability/prometheus.rs"]
mod prometheus;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use carbon_kube::metrics::{Metrics, PodEmissions};
use carbon_kube::power::PowerCoefficients;
use carbon_kube::power::measured::{Breakdown, ModelInputs};
use carbon_kube::providers::Attempt;
use fake_cgroups::{Driver, FakeCgroups};
use prometheus::{INSTALL, Prometheus};
use support::carbon_api::{CarbonApi, EM, EM_TOKEN, Fault};
use support::cluster::{Agent, ControlPlane, http_get, require_tool, temp_dir, tool, wait_for};
use support::scenario::agent_args;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

const RULES: &str = "deploy/rules/carbon-kube.rules.yaml";
const RULE_TESTS: &str = "deploy/rules/carbon-kube.rules.test.yaml";
const CHART_RULES: &str = "deploy/helm/carbon-kube/files/alerts.yaml";

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    require_tool("promtool", INSTALL);
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("promtool stdin");
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml(path: &Path) -> yaml_serde::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name the agent can export: a registry with every setter used once.
fn catalogue() -> BTreeSet<String> {
    let m = Metrics::new("n");
    m.set_zone_intensity("DE", "static", 1.0);
    m.record_attempts(&[Attempt {
        provider: "static",
        outcome: "timeout",
        seconds: 0.1,
    }]);
    m.record_error(
        "poller",
        &carbon_kube::error::ConfigError::new("x", "y").into(),
    );
    m.set_tuner_threshold("DE", 1.0);
    m.set_tuner_reward("DE", 1.0);
    m.record_tuner_decision("DE", "hold");
    let step = PodEmissions {
        grams_per_hour: 1.0,
        grams: 1.0,
    };
    m.set_pod("ns", "p", 1.0, Duration::from_secs(1), Some(step));
    m.set_node_grid("DE", carbon_kube::carbon::Signal::Average);
    let model = ModelInputs {
        vcpus: 1.0,
        cpu_utilisation: 0.5,
        memory_gb: 1.0,
    };
    let coefficients = PowerCoefficients::for_architecture("x86_64");
    let breakdown = Breakdown::combine(&[], model, &coefficients);
    m.set_power_parts(&breakdown);
    m.add_node_energy(&breakdown, Duration::from_secs(1));
    for lazy in [
        &m.data_age_seconds,
        &m.threshold,
        &m.node_emissions_rate,
        &m.node_emission_score,
        &m.node_grid_intensity,
    ] {
        lazy.set(1.0);
    }
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_the_chart_ships_the_same_groups() {
    let (ok, out) = promtool(
        &["check", "rules", repo(RULES).to_str().expect("utf-8")],
        None,
    );
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(
        &["test", "rules", repo(RULE_TESTS).to_str().expect("utf-8")],
        None,
    );
    assert!(ok, "promtool test rules:\n{out}");

    let rules = yaml(&repo(RULES));
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let tests = std::fs::read_to_string(repo(RULE_TESTS)).expect("rule tests");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no unit test for alert {name}"
        );
    }
    let catalogue = catalogue();
    let groups = rules["groups"].as_sequence().expect("groups");
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
    {
        for name in dashboards::metric_names(rule["expr"].as_str().unwrap_or_default()) {
            assert!(
                catalogue.contains(&name),
                "rule uses {name}, which the agent does not export"
            );
        }
    }
    let chart = repo(CHART_RULES);
    if chart.exists() {
        let same = yaml(&chart)["groups"] == rules["groups"];
        assert!(
            same,
            "{CHART_RULES} drifted from {RULES}: copy the groups over"
        );
    }
}

#[test]
fn dashboards_are_importable_and_query_only_exported_metrics() {
    let catalogue = catalogue();
    let all = dashboards::load_all();
    let titles: Vec<&str> = all
        .iter()
        .filter_map(|(_, d)| d["title"].as_str())
        .collect();
    assert_eq!(titles.len(), 3, "three dashboards: {titles:?}");
    let mut uids = BTreeSet::new();
    for (name, dashboard) in &all {
        assert!(
            uids.insert(dashboard["uid"].as_str().expect("uid").to_string()),
            "{name}: duplicate uid"
        );
        assert!(
            dashboard["id"].is_null(),
            "{name}: id must be null to import"
        );
        assert!(
            dashboard["schemaVersion"].as_u64().is_some(),
            "{name}: schemaVersion"
        );
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("templating.list");
        assert!(
            variables.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: needs a Prometheus datasource variable"
        );
        let rows = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .filter(|p| p["type"] == "row");
        let every: Vec<&serde_json::Value> = rows.chain(dashboards::panels(dashboard)).collect();
        let ids: BTreeSet<u64> = every
            .iter()
            .map(|p| p["id"].as_u64().expect("panel id"))
            .collect();
        assert_eq!(ids.len(), every.len(), "{name}: panel ids must be unique");
        for panel in &every {
            let pos = &panel["gridPos"];
            let (x, w) = (pos["x"].as_u64().expect("x"), pos["w"].as_u64().expect("w"));
            assert!(
                x + w <= 24,
                "{name}: panel {} overflows the grid",
                panel["title"]
            );
        }
        for panel in dashboards::panels(dashboard) {
            let title = &panel["title"];
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {title} must use the datasource variable"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| d.len() > 20),
                "{name}: {title} needs a description"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{name}: {title} has no query");
            for target in targets {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{name}: {title}"
                );
            }
        }
        let queries = dashboards::panel_queries(name, dashboard);
        for query in queries
            .iter()
            .chain(&dashboards::variable_queries(name, dashboard))
        {
            let used = dashboards::metric_names(&query.expr);
            assert!(
                !used.is_empty(),
                "{name}: {} queries no carbon-kube metric",
                query.panel
            );
            for metric in used {
                assert!(
                    catalogue.contains(&metric),
                    "{name}: {} uses {metric}, which the agent does not export",
                    query.panel
                );
            }
            // Every variable must be one the end-to-end test knows how to fill in.
            dashboards::substitute(&query.expr);
        }
    }
}

/// Pods bound straight to `node` (no kubelet runs them; they exist, which is
/// all the agent's pod watch needs). Returns name → UID.
fn create_pods(cp: &ControlPlane, node: &str, pods: &[(&str, String)]) -> BTreeMap<String, String> {
    let items: Vec<serde_json::Value> = pods
        .iter()
        .map(|(namespace, name)| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": namespace },
                "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] }
            })
        })
        .collect();
    cp.apply(
        &serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string(),
    );
    let listed = cp.kubectl_json(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ]);
    listed["items"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            let text = |v: &serde_json::Value| v.as_str().expect("string").to_string();
            (text(&p["metadata"]["name"]), text(&p["metadata"]["uid"]))
        })
        .collect()
}

/// Sample lines of an exposition whose name is `name`, as (line, value).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| Some((l, l.rsplit_once(' ')?.1.parse().ok()?)))
        .collect()
}

fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agents_and_every_dashboard_query_has_data() {
    require_tool("prometheus", INSTALL);
    require_tool("promtool", INSTALL);
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 520.0);
    api.set_intensity("FR", 60.0);
    // The first polls fail, so that the provider-error panels have series.
    api.set_fault(EM, Fault::Status(503));
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        cp.create_node("o1", &[("carbon-kube.io/grid-zone", "DE")]);
        cp.create_node("o2", &[("carbon-kube.io/grid-zone", "FR")]);
        for namespace in ["shop", "batch"] {
            cp.kubectl_ok(&["create", "namespace", namespace]);
        }
        // o1: 20 pods (systemd driver), pod-NN burning 2 × (NN + 1) millicores; o2: 3 (cgroupfs).
        let o1_pods: Vec<(&str, String)> = (0..20)
            .map(|i| (if i < 12 { "shop" } else { "batch" }, format!("pod-{i:02}")))
            .collect();
        let o2_pods: Vec<(&str, String)> =
            (0..3).map(|i| ("batch", format!("o2-pod-{i}"))).collect();
        let o1_uids = create_pods(&cp, "o1", &o1_pods);
        let o2_uids = create_pods(&cp, "o2", &o2_pods);
        let work = temp_dir("ck-obs");
        let o1_tree = FakeCgroups::new(work.join("o1-cgroup"), Driver::Systemd);
        let o2_tree = FakeCgroups::new(work.join("o2-cgroup"), Driver::Cgroupfs);
        for (i, (_, name)) in o1_pods.iter().enumerate() {
            o1_tree.add_pod(&o1_uids[name], 2 * (i as u64 + 1));
        }
        for (_, name) in &o2_pods {
            o2_tree.add_pod(&o2_uids[name], 20);
        }

        let args = agent_args(&api, &[]);
        let spawn = |node: &str, tree: &FakeCgroups| {
            let root = tree.root.to_str().expect("utf-8").to_string();
            Agent::spawn(
                &cp,
                node,
                &args,
                &[
                    ("ELECTRICITY_MAPS_TOKEN", EM_TOKEN),
                    ("CARBON_KUBE_CGROUP_ROOT", &root),
                ],
            )
        };
        let agents = [spawn("o1", &o1_tree), spawn("o2", &o2_tree)];
        wait_for("a provider error counted", Duration::from_secs(30), || {
            agents.iter().find_map(|a| {
                a.metrics()
                    .filter(|m| m.contains("carbon_kube_provider_errors_total{"))
            })
        });
        api.clear_fault(EM);
        wait_for(
            "o1 tainted and all 20 pods attributed",
            Duration::from_secs(60),
            || {
                let tainted = agents[0].metric("carbon_kube_node_tainted") == Some(1.0);
                (tainted && agents[0].metric("carbon_kube_attributed_pods") == Some(20.0))
                    .then_some(())
            },
        );
        wait_for("o2's 3 pods attributed", Duration::from_secs(30), || {
            (agents[1].metric("carbon_kube_attributed_pods") == Some(3.0)).then_some(())
        });

        let targets: Vec<String> = agents
            .iter()
            .map(|a| format!("127.0.0.1:{}", a.metrics_port))
            .collect();
        let prom = Prometheus::start(&work, &targets, &repo(RULES));
        wait_for("both agents scraped", Duration::from_secs(30), || {
            let up = prom.query("sum(up{job=\"carbon-kube\"})").ok()?;
            (up.first()?["value"][1] == "2").then_some(())
        });
        // Enough scrapes for every rate and increase window the dashboards use.
        std::thread::sleep(Duration::from_secs(20));

        rules_evaluate_cleanly(&prom);
        every_dashboard_query_has_data(&prom);
        pod_power_follows_cpu_time(&prom);
        let text = agents[0].metrics().expect("o1 metrics");
        let (ok, out) = promtool(&["check", "metrics"], Some(&text));
        assert!(
            ok && out.trim().is_empty(),
            "promtool check metrics on a live agent:\n{out}"
        );
        let dynamic = sum(&text, "carbon_kube_node_power_watts")
            - sum(&text, "carbon_kube_node_idle_power_watts");
        let pods = sum(&text, "carbon_kube_pod_power_watts");
        assert!(
            pods <= dynamic + 1e-6,
            "pods draw {pods} W of {dynamic} W dynamic power"
        );
        let grams = sum(&text, "carbon_kube_pod_emitted_grams_total");
        assert!(grams > 0.0, "pods have emitted no CO2:\n{text}");
        measure(&prom, &agents[0], &text);

        // A pod deleted from the API (its cgroup not yet gone) and a pod whose cgroup
        // went both lose every series.
        cp.kubectl_ok(&[
            "delete",
            "pod",
            "-n",
            "shop",
            "pod-00",
            "--grace-period=0",
            "--force",
        ]);
        o1_tree.remove_pod(&o1_uids["pod-01"]);
        wait_for(
            "pod-00 and pod-01 series gone",
            Duration::from_secs(30),
            || {
                let text = agents[0].metrics()?;
                let gone = !text.contains("pod=\"pod-00\"") && !text.contains("pod=\"pod-01\"");
                (gone
                    && text.contains("pod=\"pod-02\"")
                    && agents[0].metric("carbon_kube_attributed_pods") == Some(18.0))
                .then_some(())
            },
        );
        drop(prom);
        let _ = std::fs::remove_dir_all(&work);
    });
}

/// The alerts; the accounting group records once an hour, too rarely to wait
/// for here (its rules have promtool unit tests instead).
fn rules_evaluate_cleanly(prom: &Prometheus) {
    let rules = wait_for(
        "every alert rule evaluated",
        Duration::from_secs(30),
        || {
            let mut rules = prom.rules();
            rules.retain(|(name, _, _)| !name.starts_with("carbon_kube:"));
            (rules.len() == 7 && rules.iter().all(|(_, health, _)| health != "unknown"))
                .then_some(rules)
        },
    );
    for (name, health, error) in rules {
        assert_eq!(
            health,
            "ok",
            "rule {name} fails on live data: {error}\n{}",
            prom.log()
        );
    }
}

/// Every panel target and variable of every dashboard, with Grafana's variables
/// filled in, returns at least one series. The tuner's series exist only once a
/// leader runs the tuner; until it is wired into the agent, its queries must
/// still parse, and are listed as waiting for it.
fn every_dashboard_query_has_data(prom: &Prometheus) {
    let tuner_live = prom
        .query("carbon_kube_tuner_threshold_grams_per_kwh")
        .is_ok_and(|r| !r.is_empty());
    let mut failures = Vec::new();
    let mut waiting = Vec::new();
    let mut checked = 0;
    for (name, dashboard) in dashboards::load_all() {
        let queries = dashboards::panel_queries(&name, &dashboard);
        for query in queries
            .iter()
            .chain(&dashboards::variable_queries(&name, &dashboard))
        {
            let expr = dashboards::substitute(&query.expr);
            checked += 1;
            match prom.query(&expr) {
                Err(e) => failures.push(format!(
                    "{} / {}: {e}\n    {expr}",
                    query.dashboard, query.panel
                )),
                Ok(result)
                    if result.is_empty() && !tuner_live && expr.contains("carbon_kube_tuner_") =>
                {
                    waiting.push(format!("{} / {}", query.dashboard, query.panel))
                }
                Ok(result) if result.is_empty() => failures.push(format!(
                    "{} / {}: no series\n    {expr}",
                    query.dashboard, query.panel
                )),
                Ok(_) => {}
            }
        }
    }
    println!(
        "dashboard queries with data: {} of {checked}",
        checked - failures.len() - waiting.len()
    );
    if !waiting.is_empty() {
        println!(
            "waiting for the tuner to be wired into the leader (queries parse, no series yet):\n  {}",
            waiting.join("\n  ")
        );
    }
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}",
        failures.join("\n")
    );
}

/// pod-19 burns 40 millicores and pod-04 10: over the run their average power is 4:1.
fn pod_power_follows_cpu_time(prom: &Prometheus) {
    let avg = |pod: &str| {
        let result = prom
            .query(&format!(
                "avg_over_time(carbon_kube_pod_power_watts{{pod=\"{pod}\"}}[15s])"
            ))
            .expect("query");
        result
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .expect("a value")
    };
    let (busy, light) = (avg("pod-19"), avg("pod-04"));
    assert!(light > 0.0, "pod-04 has no power: is the host idle?");
    let ratio = busy / light;
    assert!(
        (3.2..=4.8).contains(&ratio),
        "pod-19 / pod-04 power = {busy} / {light} = {ratio}, expected 4"
    );
}

/// Series per node at 20 pods, and how long /metrics takes to serve.
fn measure(prom: &Prometheus, agent: &Agent, text: &str) {
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let pod_series = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("pod=\""))
        .count();
    let role = match samples(text, "carbon_kube_is_leader").first() {
        Some((_, v)) if *v == 1.0 => "leader",
        _ => "follower",
    };
    println!(
        "series on a node with 20 pods ({role}): {series} ({pod_series} per-pod, {} node-level); exposition {} bytes",
        series - pod_series,
        text.len()
    );
    let addr = format!("127.0.0.1:{}", agent.metrics_port);
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let started = Instant::now();
            http_get(&addr, "/metrics").expect("/metrics");
            started.elapsed()
        })
        .collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / 200;
    println!(
        "GET /metrics over 200 requests: mean {mean:?}, p50 {:?}, p99 {:?}",
        times[100], times[197]
    );
    let scrape = prom
        .query("avg_over_time(scrape_duration_seconds{job=\"carbon-kube\"}[1m])")
        .expect("scrape duration");
    for s in scrape {
        println!(
            "Prometheus scrape_duration_seconds avg for {}: {}",
            s["metric"]["instance"], s["value"][1]
        );
    }
}
