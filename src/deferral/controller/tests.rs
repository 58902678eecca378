//! The deferral loop's rounds against a mock API server: a gate removal that
//! fails is retried, one pod's failure does not hold the others, a pod gone
//! meanwhile is dropped, a refused event does not undo a release.

use http::Method;
use k8s_openapi::api::core::v1::PodSchedulingGate;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::deferral::round::RoundSettings;
use crate::planner::PlannerParams;
use crate::testing::api_server::{self, ApiServer, Reply};
use crate::testing::{sample, store};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/jobs/events";

fn deferral(client: Client) -> Deferral {
    let settings = DeferralSettings {
        max_age: Duration::from_secs(3600),
        round: RoundSettings {
            planner: PlannerParams::default(),
            forecast_error: 0.1,
        },
        default_zone: None,
        identity: "carbon-kube-n1".into(),
    };
    let power = PowerCoefficients::for_architecture("x86_64");
    Deferral::new(client, Metrics::new("n1"), settings, power)
}

/// A pod held by our gate whose deferral annotation cannot be read.
fn invalid(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("jobs".into()),
            uid: Some(format!("uid-{name}")),
            annotations: Some([(MAX_DELAY.to_string(), "soon".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            scheduling_gates: Some(vec![PodSchedulingGate { name: GATE.into() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/jobs/pods/{name}")
}

fn released(deferral: &Deferral) -> f64 {
    let text = deferral.metrics.encode();
    sample(
        &text,
        "carbon_kube_deferral_releases_total",
        &["reason=\"invalid\""],
    )
    .unwrap_or(0.0)
}

/// Answers the gate removal for `name` with 200 and the event it brings.
async fn released_with_event(server: &mut ApiServer, name: &str) {
    let patch = server
        .expect(Method::PATCH, &pod_path(name), Reply::ok(&invalid(name)))
        .await;
    assert_eq!(
        patch.body,
        serde_json::json!({"spec": {"schedulingGates": [{"name": GATE, "$patch": "delete"}]}})
    );
    let event = server
        .expect(
            Method::POST,
            EVENTS,
            Reply::Json(201, serde_json::json!({})),
        )
        .await;
    assert_eq!(event.body["reason"], "InvalidDeferral");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["regarding"]["name"], name);
}

/// A round in which p1's gate removal is answered `reply`, and nothing else is asked.
async fn refused(deferral: &mut Deferral, server: &mut ApiServer, pods: &Store<Pod>, reply: Reply) {
    let scenario = async {
        server.expect(Method::PATCH, &pod_path("p1"), reply).await;
        server.expect_no_more().await;
    };
    let (nodes, scores) = (store([]), store([]));
    tokio::join!(deferral.round(pods, &nodes, &scores), scenario);
}

#[tokio::test(start_paused = true)]
async fn a_failed_gate_removal_is_retried_next_round_and_only_then_counted() {
    let (client, mut server) = api_server::pair();
    let mut deferral = deferral(client);
    let (pods, nodes, scores) = (store([invalid("p1")]), store([]), store([]));
    refused(
        &mut deferral,
        &mut server,
        &pods,
        Reply::Failure(500, "etcd timeout"),
    )
    .await;
    assert_eq!(released(&deferral), 0.0);

    let second = async {
        released_with_event(&mut server, "p1").await;
        server.expect_no_more().await;
    };
    tokio::join!(deferral.round(&pods, &nodes, &scores), second);
    assert_eq!(released(&deferral), 1.0);

    // The cache may show the gate a moment longer: the pod is not released twice.
    tokio::join!(
        deferral.round(&pods, &nodes, &scores),
        server.expect_no_more()
    );
    assert_eq!(released(&deferral), 1.0);
}

#[tokio::test(start_paused = true)]
async fn one_pods_failure_does_not_hold_the_others() {
    let (client, mut server) = api_server::pair();
    let mut deferral = deferral(client);
    let (pods, nodes, scores) = (store([invalid("p1"), invalid("p2")]), store([]), store([]));
    let (p1, p2) = (pod_path("p1"), pod_path("p2"));
    let mut failed = String::new();
    let first = async {
        // The cache gives the pods in no set order: the first one asked fails.
        let seen = server
            .expect_one_of(Method::PATCH, &[&p1, &p2], Reply::Failure(503, "try again"))
            .await;
        failed = seen.path.rsplit('/').next().unwrap().to_string();
        let other = if failed == "p1" { "p2" } else { "p1" };
        released_with_event(&mut server, other).await;
        server.expect_no_more().await;
    };
    tokio::join!(deferral.round(&pods, &nodes, &scores), first);
    assert_eq!(released(&deferral), 1.0);
    let second = async {
        released_with_event(&mut server, &failed).await;
        server.expect_no_more().await;
    };
    tokio::join!(deferral.round(&pods, &nodes, &scores), second);
    assert_eq!(released(&deferral), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_pod_gone_meanwhile_is_dropped_without_an_event() {
    let (client, mut server) = api_server::pair();
    let mut deferral = deferral(client);
    let pods = store([invalid("p1")]);
    let gone = Reply::Failure(404, "pods \"p1\" not found");
    refused(&mut deferral, &mut server, &pods, gone).await;
    assert_eq!(released(&deferral), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_event_does_not_undo_the_release() {
    let (client, mut server) = api_server::pair();
    let mut deferral = deferral(client);
    let (pods, nodes, scores) = (store([invalid("p1")]), store([]), store([]));
    let scenario = async {
        server
            .expect(Method::PATCH, &pod_path("p1"), Reply::ok(&invalid("p1")))
            .await;
        server
            .expect(
                Method::POST,
                EVENTS,
                Reply::Failure(403, "cannot create events"),
            )
            .await;
        server.expect_no_more().await;
    };
    tokio::join!(deferral.round(&pods, &nodes, &scores), scenario);
    assert_eq!(released(&deferral), 1.0);
    tokio::join!(
        deferral.round(&pods, &nodes, &scores),
        server.expect_no_more()
    );
}
