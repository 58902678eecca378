//! End-to-end: real control plane, real scheduler, agent processes, and a
//! local carbon API speaking Electricity Maps' documented format.
//!
//! Each test gets its own control plane (the Lease, CarbonScores and the taint
//! budget are cluster-wide), and tests run one at a time on a 2-core machine.

mod support;

use std::time::Duration;

use support::carbon_api::{CarbonApi, EM, EM_TOKEN as TOKEN, Fault};
use support::cluster::{Agent, ControlPlane, wait_for};
use support::scenario::{
    Cluster, agent_args, class_label, cluster, cluster_with_intensity, condition, create_nodes,
    has_taint, leader, start_agent, transitions, tuner_steps, wait_tainted, wait_tainted_within,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_zone_nodes_are_tainted_then_cleaned() {
    let _serial = SERIAL.lock().await;
    let Cluster { cp, api, agents } =
        cluster(&[("n1", "DE"), ("n2", "DE"), ("n3", "FR")], &[]).await;
    api.set_intensity("DE", 520.0);
    api.set_intensity("FR", 56.0);

    tokio::task::block_in_place(|| {
        wait_tainted(&cp, "n1", true);
        wait_tainted(&cp, "n2", true);
        assert!(!has_taint(&cp, "n3"));
        assert_eq!(class_label(&cp, "n1").as_deref(), Some("red"));
        wait_for("n3 labelled green", Duration::from_secs(15), || {
            (class_label(&cp, "n3").as_deref() == Some("green")).then_some(())
        });
        let cond = condition(&cp, "n1").expect("condition on n1");
        assert_eq!(cond["status"], "True");
        assert_eq!(cond["reason"], "IntensityAboveThreshold");

        let described = cp.kubectl_ok(&["describe", "node", "n1"]);
        assert!(
            described.contains("carbon-kube.io/high-intensity:PreferNoSchedule"),
            "{described}"
        );
        assert!(
            described.contains("Grid zone DE: 520 gCO2/kWh, threshold 300 gCO2/kWh"),
            "{described}"
        );

        let scores = cp.kubectl_ok(&["get", "carbonscores"]);
        assert!(
            scores.contains("DE") && scores.contains("520") && scores.contains("electricity-maps"),
            "{scores}"
        );

        steady_api_load_is_one_pollers_and_one_lease_holders(&cp, 2);

        api.set_intensity("DE", 120.0);
        wait_tainted(&cp, "n1", false);
        wait_tainted(&cp, "n2", false);
        assert_eq!(class_label(&cp, "n1").as_deref(), Some("green"));
        assert_eq!(condition(&cp, "n1").expect("condition")["status"], "False");
    });
    drop(agents);
}

/// The API load of the agents in steady state (no transition): followers
/// only hold watches, which send nothing, so the requests in a quiet window
/// are those of one poller (a list of nodes and of CarbonScores and an apply
/// per zone each interval) and one lease holder (a renewal each third of the
/// lease, besides the apiserver's own), whatever the number of agents. A follower that polled or renewed
/// too would double its line; any other request (a node patch, a relist)
/// fails the test by name.
fn steady_api_load_is_one_pollers_and_one_lease_holders(cp: &ControlPlane, zones: u32) {
    // As `fast_agent_args` sets them.
    const POLL_S: f64 = 2.0;
    const RENEW_S: f64 = 4.0 / 3.0;
    // The apiserver renews its own identity Lease (kube-system) every 10 s.
    const APISERVER_RENEW_S: f64 = 10.0;
    let started = std::time::Instant::now();
    let before = cp.request_totals();
    std::thread::sleep(Duration::from_secs(30));
    let after = cp.request_totals();
    // An upper bound on the window: it includes both scrapes.
    let window_s = started.elapsed().as_secs_f64();
    let polls = (window_s / POLL_S).ceil() + 1.0;
    let renewals = (window_s / RENEW_S).ceil() + (window_s / APISERVER_RENEW_S).ceil() + 2.0;
    let bound = |verb: &str, resource: &str| match (verb, resource) {
        ("LIST", "nodes" | "carbonscores") => Some(polls),
        ("APPLY", "carbonscores") => Some(polls * f64::from(zones)),
        ("PUT", "leases") => Some(renewals),
        // This test's own scrapes of /metrics and the poller's /version (no resource).
        ("GET", "") => Some(f64::INFINITY),
        _ => None,
    };
    let mut load = Vec::new();
    for ((verb, resource), value) in &after {
        let delta = value
            - before
                .get(&(verb.clone(), resource.clone()))
                .copied()
                .unwrap_or(0.0);
        if delta > 0.0 {
            load.push((verb.as_str(), resource.as_str(), delta));
        }
    }
    println!("apiserver requests in {window_s:.1} s with 3 agents: {load:?}");
    for &(verb, resource, delta) in &load {
        let max = bound(verb, resource)
            .unwrap_or_else(|| panic!("{verb} {resource} in steady state: {load:?}"));
        assert!(
            delta <= max,
            "{verb} {resource}: {delta} > {max} in {window_s:.1} s: {load:?}"
        );
    }
    assert!(
        load.iter()
            .any(|&(verb, resource, _)| (verb, resource) == ("LIST", "carbonscores")),
        "the leader polled in the window: {load:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_places_pods_away_from_the_dirty_zone() {
    let _serial = SERIAL.lock().await;
    // NoSchedule makes the placement certain; PreferNoSchedule only weighs the score.
    let Cluster { cp, api, agents } = cluster(
        &[("a1", "DE"), ("a2", "DE"), ("b1", "FR")],
        &["--taint-effect=NoSchedule"],
    )
    .await;
    api.set_intensity("DE", 600.0);
    api.set_intensity("FR", 40.0);
    tokio::task::block_in_place(|| {
        wait_tainted(&cp, "a1", true);
        wait_tainted(&cp, "a2", true);
        cp.kubectl_ok(&[
            "create",
            "deployment",
            "batch",
            "--image=registry.invalid/batch:1",
            "--replicas=4",
        ]);
        let placed = wait_for("4 pods bound", Duration::from_secs(60), || {
            let pods = cp.kubectl_json(&["get", "pods", "-l", "app=batch"]);
            let nodes: Vec<String> = pods["items"]
                .as_array()?
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
                .collect();
            (nodes.len() == 4).then_some(nodes)
        });
        assert!(
            placed.iter().all(|n| n == "b1"),
            "pods landed on {placed:?}"
        );
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_when_the_leader_dies() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("x1", "DE"), ("x2", "DE"), ("x3", "PL")], &[]).await;
    api.set_intensity("DE", 450.0);
    api.set_intensity("PL", 700.0);
    tokio::task::block_in_place(|| {
        for node in ["x1", "x2", "x3"] {
            wait_tainted(&cp, node, true);
        }
        let first = wait_for("a leader", Duration::from_secs(20), || leader(&mut agents));
        let transitions_before: Vec<Option<f64>> = agents
            .iter()
            .map(|a| a.metric("carbon_kube_taint_transitions_total"))
            .collect();
        let fetched = |cp: &ControlPlane| {
            cp.kubectl_json(&["get", "carbonscore", "pl"])["status"]["fetchedAt"]
                .as_str()
                .map(str::to_string)
        };
        let fetched_before = fetched(&cp);

        agents[first].kill();
        let started = std::time::Instant::now();
        let second = wait_for("a new leader", Duration::from_secs(20), || {
            leader(&mut agents)
        });
        let takeover = started.elapsed();
        assert_ne!(first, second);
        assert!(
            takeover < Duration::from_secs(4 + 2 + 2),
            "takeover took {takeover:?} with a 4 s lease"
        );
        println!("leader takeover after SIGKILL: {takeover:?} (lease 4 s)");

        wait_for(
            "CarbonScores updated by the new leader",
            Duration::from_secs(15),
            || (fetched(&cp) != fetched_before).then_some(()),
        );
        for (i, agent) in agents.iter_mut().enumerate() {
            if i != first {
                assert_eq!(
                    agent.metric("carbon_kube_taint_transitions_total"),
                    transitions_before[i],
                    "{} flapped",
                    agent.node
                );
            }
        }
        for node in ["x2", "x3"] {
            assert!(has_taint(&cp, node));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_taints_labels_and_conditions_survive() {
    let _serial = SERIAL.lock().await;
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 500.0);
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        cp.create_node(
            "f1",
            &[("carbon-kube.io/grid-zone", "DE"), ("team", "batch")],
        );
        cp.kubectl_ok(&[
            "taint",
            "node",
            "f1",
            "dedicated=gpu:NoSchedule",
            "example.com/maintenance:PreferNoSchedule",
        ]);
        let foreign_condition = serde_json::json!({"status": {"conditions": [{
            "type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "fine",
            "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        cp.kubectl_ok(&[
            "patch",
            "node",
            "f1",
            "--subresource=status",
            "--type=strategic",
            "-p",
            &foreign_condition.to_string(),
        ]);

        let args = agent_args(&api, &[]);
        let mut agent = Agent::spawn(&cp, "f1", &args, &[("ELECTRICITY_MAPS_TOKEN", TOKEN)]);
        wait_tainted(&cp, "f1", true);
        // Another component changes a taint while ours is on: both must stay.
        cp.kubectl_ok(&["taint", "node", "f1", "late=1:NoExecute"]);
        api.set_intensity("DE", 100.0);
        wait_tainted(&cp, "f1", false);

        let node = cp.node("f1");
        let mut taints: Vec<&str> = node["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        taints.sort_unstable();
        assert_eq!(taints, ["dedicated", "example.com/maintenance", "late"]);
        assert_eq!(node["metadata"]["labels"]["team"], "batch");
        let types: Vec<&str> = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"Ready")
                && types.contains(&"DiskPressure")
                && types.contains(&"CarbonIntensityHigh"),
            "{types:?}"
        );
        agent.terminate();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_appears_in_output() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("k1", "DE")], &["--log-format=json"]).await;
    api.set_fault(EM, Fault::Status(401));
    tokio::task::block_in_place(|| {
        wait_for("a 401 counted", Duration::from_secs(20), || {
            agents[0]
                .metrics()
                .filter(|m| m.contains("outcome=\"unauthorized\""))
        });
        let metrics = agents[0].metrics().unwrap_or_default();
        agents[0].terminate();
        let output = agents[0].output();
        assert!(
            output.contains("credentials rejected"),
            "the 401 is logged: {output}"
        );
        assert!(!output.contains(TOKEN), "token leaked into the log");
        assert!(!metrics.contains(TOKEN));
        let scores = cp.kubectl_ok(&["get", "carbonscores", "-o", "yaml"]);
        assert!(!scores.contains(TOKEN));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taint_budget_keeps_the_greenest_share_schedulable() {
    let _serial = SERIAL.lock().await;
    let nodes = [("p1", "PL"), ("d1", "DE"), ("d2", "DE"), ("n1", "NL")];
    let Cluster { cp, api, agents } = cluster(&nodes, &["--max-tainted-fraction=0.5"]).await;
    api.set_intensity("PL", 750.0);
    api.set_intensity("DE", 480.0);
    api.set_intensity("NL", 390.0);
    tokio::task::block_in_place(|| {
        // Budget: 2 of 4 nodes. PL (1) fits, DE (2) does not, NL (1) does.
        wait_tainted(&cp, "p1", true);
        wait_tainted(&cp, "n1", true);
        std::thread::sleep(Duration::from_secs(6));
        let tainted: Vec<&str> = nodes
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| has_taint(&cp, n))
            .collect();
        assert_eq!(tainted, ["p1", "n1"]);
        let de = cp.kubectl_json(&["get", "carbonscore", "de"]);
        assert_eq!(de["status"]["taintAllowed"], false);
        assert_eq!(
            condition(&cp, "d1").expect("condition")["reason"],
            "TaintBudgetExhausted"
        );
    });
    drop(agents);
}

/// A node that joins a zone the budget granted waits for a poll that counts
/// it: following the grant at once would taint more nodes than the budget
/// allows until the next poll (the chaos soak found it with a recreated Node;
/// an autoscaler's new node is the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_granted_zone_waits_for_a_poll_that_counts_it() {
    let _serial = SERIAL.lock().await;
    // Polls far apart, so that the joining node's agent decides between two.
    let extra = ["--max-tainted-fraction=0.5", "--poll-interval=30s"];
    let intensity = [("DE", 520.0), ("FR", 56.0)];
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster_with_intensity(&[("d1", "DE"), ("f1", "FR")], &intensity, &extra).await;
    tokio::task::block_in_place(|| {
        // The budget, 1 of 2 nodes, fits DE's one node.
        wait_tainted(&cp, "d1", true);
        let counted_at =
            || cp.kubectl_json(&["get", "carbonscore", "de"])["status"]["countedAt"].clone();
        let counted = counted_at();
        assert!(counted.is_string(), "{counted}");

        agents.push(join(&cp, &api, ("d2", "DE"), &extra));
        let decided = wait_for("d2's agent decides", Duration::from_secs(20), || {
            condition(&cp, "d2")
        });
        assert_eq!(
            counted_at(),
            counted,
            "a poll came before d2's agent decided; the test needs polls further apart"
        );
        assert_eq!(decided["reason"], "TaintBudgetExhausted", "{decided}");
        assert!(!has_taint(&cp, "d2"));

        // The next poll counts d2: DE's two nodes are over the budget of 1.5.
        wait_tainted_within(&cp, "d1", false, Duration::from_secs(60));
        assert!(!has_taint(&cp, "d2"));
        assert_eq!(
            cp.kubectl_json(&["get", "carbonscore", "de"])["status"]["nodes"],
            2
        );
    });
    drop(agents);
}

/// Break before make for a joining node: when the poll that counts a node
/// joining a granted zone also revokes another zone to make room, the joined
/// node waits one poll more, until the other zone's agents have untainted
/// (the chaos soak caught the two in the same instant, one Node over budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_that_displaces_another_zone_waits_for_it_to_untaint() {
    let _serial = SERIAL.lock().await;
    let extra = ["--max-tainted-fraction=0.5", "--poll-interval=30s"];
    let nodes = [("d1", "DE"), ("f1", "FR"), ("n1", "NL"), ("n2", "NL")];
    let intensity = [("DE", 600.0), ("FR", 520.0), ("NL", 56.0)];
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster_with_intensity(&nodes, &intensity, &extra).await;
    tokio::task::block_in_place(|| {
        // The budget, 2 of 4 nodes: DE's and FR's.
        wait_tainted(&cp, "d1", true);
        wait_tainted(&cp, "f1", true);
        let status = |zone: &str| cp.kubectl_json(&["get", "carbonscore", zone])["status"].clone();
        let covered = status("de")["countedAt"].clone();

        // With d2, 2 of 5: DE's two nodes, and FR must make room.
        agents.push(join(&cp, &api, ("d2", "DE"), &extra));
        let counted = wait_for("a poll that counts d2", Duration::from_secs(60), || {
            let de = status("de");
            (de["nodes"] == 2).then_some(de)
        });
        assert_eq!(counted["taintAllowed"], true);
        assert_eq!(status("fr")["taintAllowed"], false);
        assert_eq!(
            counted["countedAt"], covered,
            "the revoking poll covers only what the last poll did"
        );
        wait_tainted(&cp, "f1", false);
        assert!(!has_taint(&cp, "d2"), "d2 tainted while FR was making room");

        // The next poll covers d2.
        wait_tainted_within(&cp, "d2", true, Duration::from_secs(60));
        assert!(has_taint(&cp, "d1") && !has_taint(&cp, "f1"));
    });
    drop(agents);
}

/// A Node that joins the running cluster, `(name, zone)`, and its agent.
fn join(cp: &ControlPlane, api: &CarbonApi, node: (&str, &str), extra: &[&str]) -> Agent {
    create_nodes(cp, &[node]);
    start_agent(cp, node.0, &api.electricity_maps_url(), extra, &[])
}

/// Which of `nodes` carry the carbon taint.
fn tainted_nodes<'a>(cp: &ControlPlane, nodes: &[(&'a str, &str)]) -> Vec<&'a str> {
    nodes
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| has_taint(cp, n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_taints_follow_a_change_of_rank_without_flapping() {
    let _serial = SERIAL.lock().await;
    let nodes = [("de1", "DE"), ("pl1", "PL"), ("fr1", "FR")];
    // Budget: one node of three. Minimum spread 50 g and 20 %, hysteresis 20 g.
    let Cluster { cp, api, agents } = cluster_with_intensity(
        &nodes,
        &[("DE", 500.0), ("PL", 450.0), ("FR", 50.0)],
        &[
            "--policy=relative",
            "--max-tainted-fraction=0.34",
            "--min-spread=50",
            "--min-spread-percent=20",
            "--hysteresis=20",
        ],
    )
    .await;
    // Long enough for several polls (every 2 s): a flap would show.
    let settle = || std::thread::sleep(Duration::from_secs(8));
    tokio::task::block_in_place(|| {
        wait_tainted(&cp, "de1", true);
        settle();
        assert_eq!(tainted_nodes(&cp, &nodes), ["de1"]);
        assert_eq!(transitions(&agents), [1, 0, 0]);
        let de = cp.kubectl_json(&["get", "carbonscore", "de"]);
        assert_eq!(de["status"]["policy"], "relative");
        assert_eq!(de["status"]["ranking"]["verdict"], "Taint");
        assert_eq!(de["status"]["ranking"]["rank"], 1);
        assert_eq!(de["status"]["ranking"]["cleanestZone"], "FR");
        let pl = cp.kubectl_json(&["get", "carbonscore", "pl"]);
        assert_eq!(pl["status"]["ranking"]["verdict"], "BudgetExhausted");
        let cond = condition(&cp, "de1").expect("condition on de1");
        assert_eq!(cond["reason"], "DirtierThanCleanestZone");
        let message = cond["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("ranked 1 of 3 (dirtiest first) at 500 gCO2/kWh, 450 g above the cleanest zone FR (50 g); a taint needs 50 g"),
            "{message}"
        );
        assert_eq!(
            condition(&cp, "fr1").expect("condition on fr1")["reason"],
            "CleanestZone"
        );

        // PL overtakes DE by 10 g, less than the hysteresis: nothing moves.
        api.set_intensity("PL", 510.0);
        settle();
        assert_eq!(tainted_nodes(&cp, &nodes), ["de1"]);
        assert_eq!(transitions(&agents), [1, 0, 0]);

        // PL clearly dirtier: the taint moves, once.
        api.set_intensity("PL", 600.0);
        wait_tainted(&cp, "pl1", true);
        wait_tainted(&cp, "de1", false);
        settle();
        assert_eq!(tainted_nodes(&cp, &nodes), ["pl1"]);
        assert_eq!(transitions(&agents), [2, 1, 0]);

        // DE back above PL by 10 g: PL keeps the taint.
        api.set_intensity("DE", 610.0);
        settle();
        assert_eq!(tainted_nodes(&cp, &nodes), ["pl1"]);
        assert_eq!(transitions(&agents), [2, 1, 0]);

        // Every zone within the minimum spread of the cleanest: no taint, however high.
        api.set_intensity("FR", 590.0);
        wait_tainted(&cp, "pl1", false);
        settle();
        assert!(tainted_nodes(&cp, &nodes).is_empty());
        assert_eq!(transitions(&agents), [2, 2, 0]);
        assert_eq!(
            condition(&cp, "pl1").expect("condition on pl1")["reason"],
            "SpreadToCleanestZoneTooSmall"
        );
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_zone_cluster_says_there_is_nothing_to_shift() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api: _api,
        agents,
    } = cluster_with_intensity(
        &[("s1", "PL"), ("s2", "PL")],
        &[("PL", 800.0)],
        &["--policy=relative"],
    )
    .await;
    tokio::task::block_in_place(|| {
        let reason = wait_for("a condition on s1", Duration::from_secs(30), || {
            condition(&cp, "s1").map(|c| c["reason"].clone())
        });
        assert_eq!(reason, "SingleGridZone");
        let message = condition(&cp, "s1").expect("condition")["message"].clone();
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.contains("PL is the cluster's only grid zone")),
            "{message}"
        );
        let pl = cp.kubectl_json(&["get", "carbonscore", "pl"]);
        assert_eq!(pl["status"]["ranking"]["verdict"], "SingleZone");
        assert!(
            pl["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing to shift between zones")),
            "{}",
            pl["status"]
        );
        std::thread::sleep(Duration::from_secs(4));
        assert!(!has_taint(&cp, "s1") && !has_taint(&cp, "s2"));
    });
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_hands_over_at_once() {
    let _serial = SERIAL.lock().await;
    // A long lease: only a release on SIGTERM explains a quick takeover.
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(&[("t1", "DE"), ("t2", "DE")], &["--lease-duration=30s"]).await;
    api.set_intensity("DE", 450.0);
    tokio::task::block_in_place(|| {
        wait_tainted(&cp, "t1", true);
        let first = wait_for("a leader", Duration::from_secs(40), || leader(&mut agents));
        let started = std::time::Instant::now();
        agents[first].terminate();
        let second = wait_for("a new leader", Duration::from_secs(20), || {
            leader(&mut agents)
        });
        let takeover = started.elapsed();
        assert_ne!(first, second);
        assert!(
            takeover < Duration::from_secs(5),
            "takeover took {takeover:?} with a 30 s lease"
        );
        println!("leader takeover after SIGTERM: {takeover:?} (lease 30 s)");
        assert!(agents[first].output().contains("released the leader lease"));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tuner_keeps_learning_across_a_leader_change() {
    let _serial = SERIAL.lock().await;
    let Cluster {
        cp,
        api,
        mut agents,
    } = cluster(
        &[("u1", "DE"), ("u2", "FR")],
        &["--tuner", "--max-tainted-fraction=0.5"],
    )
    .await;
    api.set_intensity("DE", 480.0);
    api.set_intensity("FR", 60.0);
    tokio::task::block_in_place(|| {
        let first = wait_for("a leader", Duration::from_secs(20), || leader(&mut agents));
        let before = wait_for("a few tuner steps", Duration::from_secs(30), || {
            tuner_steps(&cp, "de").filter(|s| *s >= 3)
        });
        let threshold = agents[first].metric("carbon_kube_tuner_threshold_grams_per_kwh");
        assert!(
            threshold.is_some_and(|t| (50.0..=800.0).contains(&t)),
            "tuner threshold {threshold:?}"
        );

        agents[first].kill();
        wait_for("a new leader", Duration::from_secs(20), || {
            leader(&mut agents)
        });
        // A fresh learner would restart at one step; the new leader continues the count,
        // so no value seen after the change may fall below the one before it.
        let mut seen = Vec::new();
        let after = wait_for(
            "the new leader's tuner steps",
            Duration::from_secs(30),
            || {
                let steps = tuner_steps(&cp, "de")?;
                seen.push(steps);
                (steps > before + 1).then_some(steps)
            },
        );
        assert!(
            seen.iter().all(|s| *s >= before),
            "learning restarted: {before} then {seen:?}"
        );
        println!("tuner steps: {before} before the leader change, {after} after ({seen:?})");
    });
}

/// Every long-running task is supervised: when one dies (here a panic
/// injected by the debug build's `CARBON_KUBE_FAIL_TASK`), the agent stops
/// with a non-zero exit and a log line naming the task, instead of running on
/// with part of it gone; the kubelet then restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_task_dies_exits_non_zero_naming_it() {
    let _serial = SERIAL.lock().await;
    const TASKS: [&str; 5] = [
        "metrics server",
        "leader election",
        "leader work",
        "reconciler",
        "emissions",
    ];
    let nodes: Vec<(String, &str)> = (0..TASKS.len()).map(|i| (format!("n{i}"), "DE")).collect();
    let refs: Vec<(&str, &str)> = nodes.iter().map(|(n, z)| (n.as_str(), *z)).collect();
    let Cluster { cp, api, agents } = cluster_with_intensity(&refs, &[("DE", 100.0)], &[]).await;
    drop(agents);
    tokio::task::block_in_place(|| {
        let args = agent_args(&api, &[]);
        for ((node, _), task) in nodes.iter().zip(TASKS) {
            let mut agent = Agent::spawn(
                &cp,
                node,
                &args,
                &[
                    ("ELECTRICITY_MAPS_TOKEN", TOKEN),
                    ("CARBON_KUBE_FAIL_TASK", task),
                ],
            );
            let status = agent.wait_exit(Duration::from_secs(30));
            let log = agent.output();
            assert!(!status.success(), "{task}: {status}\n{log}");
            assert!(
                log.contains(&format!("task \\\"{task}\\\" panicked"))
                    || log.contains(&format!("task \"{task}\" panicked")),
                "{task}: the log does not name the task\n{log}"
            );
        }
    });
}

/// The agent's own client stack (`src/kubeclient.rs`) against the real API
/// server: a client certificate and a token file authenticate, an exec plugin
/// is refused at start with what to use instead. `carbon-kube cleanup` is the
/// client here: it lists the Nodes and removes the carbon taint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_authenticates_with_a_certificate_or_a_token_file_and_refuses_exec() {
    let _serial = SERIAL.lock().await;
    tokio::task::block_in_place(|| {
        let cp = ControlPlane::start();
        cp.create_node("c1", &[("carbon-kube.io/grid-zone", "DE")]);
        let dir = &cp.dir;
        let admin_token = std::fs::read_to_string(dir.join("kubeconfig"))
            .unwrap()
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_string))
            .expect("the admin kubeconfig's token");
        std::fs::write(dir.join("admin.token"), &admin_token).unwrap();
        let kubeconfig = |name: &str, user: serde_json::Value| {
            let path = dir.join(format!("{name}.kubeconfig"));
            let config = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {
                    "server": cp.server, "certificate-authority": dir.join("ca.crt")}}],
                "users": [{"name": name, "user": user}],
                "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
                "current-context": name,
            });
            std::fs::write(&path, config.to_string()).unwrap();
            path
        };
        let cleanup = |kubeconfig: &std::path::Path| {
            support::deploy::carbon_kube(
                &[
                    "cleanup",
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "--timeout=20s",
                    "--settle=1s",
                ],
                &[],
            )
        };
        for (name, user) in [
            (
                "certificate",
                serde_json::json!({"client-certificate": dir.join("admin.crt"),
                                   "client-key": dir.join("admin.key")}),
            ),
            (
                "token-file",
                serde_json::json!({"tokenFile": dir.join("admin.token")}),
            ),
        ] {
            cp.kubectl_ok(&[
                "taint",
                "node",
                "c1",
                "carbon-kube.io/high-intensity=true:PreferNoSchedule",
            ]);
            let out = cleanup(&kubeconfig(name, user));
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!has_taint(&cp, "c1"), "{name}: the taint stayed");
        }

        let exec = kubeconfig(
            "exec",
            serde_json::json!({"exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "echo", "interactiveMode": "Never"}}),
        );
        let out = cleanup(&exec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "an exec kubeconfig was accepted");
        assert!(
            stderr.contains("exec plugin") && stderr.contains("kubectl create token"),
            "{stderr}"
        );
    });
}
