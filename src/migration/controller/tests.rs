//! The migration loop's rounds against a mock API server: an eviction a
//! PodDisruptionBudget refuses (429) is counted, the pod waits its retry and
//! the next pod goes; a failed or garbled eviction is counted as failed.

use http::Method;
use k8s_openapi::api::core::v1::{PodSpec, PodStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde_json::json;

use super::*;
use crate::node::TAINT_KEY;
use crate::testing::api_server::{self, ApiServer, Reply};
use crate::testing::{node, sample, score, store};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn migrator(client: Client) -> Migrator {
    let settings = MigrationSettings {
        migrate_after: Duration::from_secs(1800),
        max_evictions_per_hour: 1,
        hysteresis_grams_per_kwh: 20.0,
        max_age: Duration::from_secs(3600),
        default_zone: None,
        identity: "carbon-kube-n1".into(),
    };
    Migrator::with_client(client, "n1", Metrics::new("n1"), settings)
}

/// Node n1 in DE, carrying the carbon taint for two hours.
fn tainted_node() -> Node {
    let since = Timestamp::now() - jiff::SignedDuration::from_hours(2);
    node(
        "n1",
        "1",
        "DE",
        vec![Taint {
            key: TAINT_KEY.into(),
            effect: "PreferNoSchedule".into(),
            time_added: Some(Time(since)),
            value: None,
        }],
    )
}

/// An opted-in ReplicaSet pod running on n1, created `age_minutes` ago.
fn pod(name: &str, age_minutes: i64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some([(OPT_IN_LABEL.to_string(), "true".to_string())].into()),
            creation_timestamp: Some(Time(
                Timestamp::now() - jiff::SignedDuration::from_mins(age_minutes),
            )),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

fn eviction(name: &str) -> String {
    format!("/api/v1/namespaces/shop/pods/{name}/eviction")
}

fn evictions(migrator: &Migrator, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    sample(
        &migrator.metrics.encode(),
        "carbon_kube_evictions_total",
        &[&label],
    )
    .unwrap_or(0.0)
}

/// Answers the event for `pod`; returns its note.
async fn event(server: &mut ApiServer, pod: &str, reason: &str) -> String {
    let seen = server
        .expect(Method::POST, EVENTS, Reply::Json(201, json!({})))
        .await;
    assert_eq!(seen.body["reason"], reason);
    assert_eq!(seen.body["regarding"]["name"], pod);
    seen.body["note"].as_str().unwrap_or_default().to_string()
}

/// A round that asks nothing of the API server.
async fn quiet_round(
    migrator: &mut Migrator,
    server: &mut ApiServer,
    (node, scores, pods): (&Store<Node>, &Store<CarbonScore>, &Store<Pod>),
) {
    tokio::join!(migrator.round(node, scores, pods), server.expect_no_more());
}

#[tokio::test(start_paused = true)]
async fn a_budget_refusal_is_counted_the_pod_waits_and_the_next_pod_goes() {
    let (client, mut server) = api_server::pair();
    let mut migrator = migrator(client);
    let node = store([tainted_node()]);
    let scores = store([score("DE", 520.0, true, 1), score("FR", 56.0, false, 2)]);
    let pods = store([pod("web-new", 10), pod("web-old", 90)]);
    let first = async {
        // Oldest first.
        server
            .expect(
                Method::POST,
                &eviction("web-old"),
                Reply::Failure(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                ),
            )
            .await;
        let note = event(&mut server, "web-old", "MigrationBlocked").await;
        assert!(note.contains("disruption budget"), "{note}");
        server.expect_no_more().await;
    };
    tokio::join!(migrator.round(&node, &scores, &pods), first);
    assert_eq!(evictions(&migrator, "blocked"), 1.0);

    // The refused pod waits its retry; the refusal used none of the hour's budget.
    let second = async {
        let seen = server
            .expect(
                Method::POST,
                &eviction("web-new"),
                Reply::Json(
                    201,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
            )
            .await;
        assert_eq!(seen.body["metadata"]["name"], "web-new");
        let note = event(&mut server, "web-new", "Migrating").await;
        assert!(note.contains("zone FR has untainted capacity"), "{note}");
        server.expect_no_more().await;
    };
    tokio::join!(migrator.round(&node, &scores, &pods), second);
    assert_eq!(evictions(&migrator, "evicted"), 1.0);

    // One eviction per hour: nothing more this round.
    quiet_round(&mut migrator, &mut server, (&node, &scores, &pods)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_garbled_eviction_counts_as_failed_and_waits_its_retry() {
    for answer in [
        Reply::Failure(500, "etcd timeout"),
        Reply::Garbage("<html>bad gateway</html>"),
    ] {
        let (client, mut server) = api_server::pair();
        let mut migrator = migrator(client);
        let node = store([tainted_node()]);
        let scores = store([score("DE", 520.0, true, 1), score("FR", 56.0, false, 2)]);
        let pods = store([pod("web-old", 90)]);
        let scenario = async {
            server
                .expect(Method::POST, &eviction("web-old"), answer)
                .await;
            event(&mut server, "web-old", "MigrationFailed").await;
            server.expect_no_more().await;
        };
        tokio::join!(migrator.round(&node, &scores, &pods), scenario);
        assert_eq!(evictions(&migrator, "failed"), 1.0);
        quiet_round(&mut migrator, &mut server, (&node, &scores, &pods)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_evicted_without_a_greener_zone_with_room() {
    let (client, mut server) = api_server::pair();
    let mut migrator = migrator(client);
    let node = store([tainted_node()]);
    // FR is greener but may itself be tainted: no capacity to move to.
    let scores = store([score("DE", 520.0, true, 1), score("FR", 400.0, true, 2)]);
    let pods = store([pod("web-old", 90)]);
    quiet_round(&mut migrator, &mut server, (&node, &scores, &pods)).await;
    assert_eq!(evictions(&migrator, "evicted"), 0.0);
}
