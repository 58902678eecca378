//! Shared carbon data across clusters: a worker cluster's leader reads its zone's
//! CarbonScore from the fleet's source cluster (two real control planes), with the
//! read-only access of deploy/examples/shared-scores-reader.yaml, and makes no carbon API
//! call while that data is fresh; stale data falls back to its own providers.

mod support;

use std::time::Duration;

use serde_json::json;
use support::carbon_api::{CarbonApi, EM, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, wait_for};
use support::deploy::{kubectl_as, service_account_kubeconfig};
use support::scenario::agent_args;

const READER: &str = "carbon-kube-shared-scores-reader";

/// Writes DE's CarbonScore on the source as its leader would: `grams` observed `minutes_ago`.
fn source_score(source: &ControlPlane, grams: f64, minutes_ago: i64) {
    let observed = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(minutes_ago);
    let observed = observed.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = json!({ "status": {
        "intensityGramsPerKwh": grams, "source": "electricity-maps", "estimated": false,
        "kind": "Measured", "observedAt": observed, "fetchedAt": observed,
        "forecast": [], "thresholdGramsPerKwh": 300.0, "taintAllowed": true, "nodes": 4,
    }});
    source.kubectl_ok(&[
        "patch",
        "carbonscore",
        "de",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

/// DE's status on `cp` once it says `grams`; the leader may not have created it yet.
fn local_score(cp: &ControlPlane, grams: f64) -> Option<serde_json::Value> {
    let out = cp.kubectl(&["get", "carbonscore", "de", "-o", "json"]);
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (score["status"]["intensityGramsPerKwh"].as_f64() == Some(grams))
        .then(|| score["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reads_its_zone_from_the_source_and_polls_itself_only_when_that_is_stale() {
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 500.0);
    tokio::task::block_in_place(|| {
        let source = ControlPlane::start();
        source.apply(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/examples/shared-scores-reader.yaml"),
            )
            .expect("the reader example"),
        );
        source.apply(
            &json!({
                "apiVersion": "carbon-kube.io/v1alpha1", "kind": "CarbonScore",
                "metadata": { "name": "de" }, "spec": { "zone": "DE" },
            })
            .to_string(),
        );
        source_score(&source, 123.0, 5);
        let reader = service_account_kubeconfig(&source, "carbon-kube", READER, None);
        let can = |verb: &str| {
            let out = kubectl_as(
                &reader,
                &["auth", "can-i", verb, "carbonscores.carbon-kube.io"],
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(
            (can("get"), can("list"), can("patch"), can("create")),
            ("yes".into(), "yes".into(), "no".into(), "no".into()),
            "the reader only reads"
        );

        let worker = ControlPlane::start();
        worker.create_node("w1", &[("carbon-kube.io/grid-zone", "DE")]);
        let key_file = worker.dir.join("electricity-maps-token");
        std::fs::write(&key_file, EM_TOKEN).expect("key file");
        let agent = Agent::spawn(
            &worker,
            "w1",
            &agent_args(&api, &[]),
            &[
                (
                    "CARBON_KUBE_SHARED_SCORES_KUBECONFIG",
                    reader.to_str().expect("utf-8 path"),
                ),
                (
                    "ELECTRICITY_MAPS_TOKEN_FILE",
                    key_file.to_str().expect("utf-8 path"),
                ),
            ],
        );
        let shared = wait_for(
            "the worker's DE from the source",
            Duration::from_secs(60),
            || local_score(&worker, 123.0),
        );
        assert_eq!(shared["source"], "electricity-maps", "{shared}");
        assert_eq!(shared["kind"], "Measured", "{shared}");
        // Several polls (every 2 s) on the shared data, none to the carbon API.
        wait_for("three shared reads", Duration::from_secs(30), || {
            (agent.metric_with(
                "carbon_kube_provider_requests_total",
                &[("provider", "cluster"), ("outcome", "ok")],
            )? >= 3.0)
                .then_some(())
        });
        assert_eq!(api.requests(EM), 0, "the worker called the carbon API");

        // The source's data ages past max-age (90 m): the worker polls its own provider.
        source_score(&source, 123.0, 120);
        let own = wait_for(
            "the worker's DE from its own provider",
            Duration::from_secs(60),
            || local_score(&worker, 500.0),
        );
        assert!(api.requests(EM) > 0, "{own}");
        let stale = agent
            .metric_with(
                "carbon_kube_provider_errors_total",
                &[("provider", "cluster"), ("outcome", "invalid")],
            )
            .unwrap_or(0.0);
        assert!(stale >= 1.0, "stale shared data is counted as an error");
        println!(
            "shared scores: the worker's leader made 0 carbon API calls on fresh shared data, \
             {} after it went stale",
            api.requests(EM)
        );
    });
}
