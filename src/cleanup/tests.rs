//! `cleanup` against a mock API server: conflicts, partial failures, a
//! denial, a hung request and a garbled answer.

use http::Method;
use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};

use super::*;
use crate::node::TAINT_KEY;
use crate::testing::api_server::{self, ApiServer, Reply};
use crate::testing::{node, taint};

const NODES: &str = "/api/v1/nodes";
const TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(4);

/// A node with carbon-kube's taint, label and condition, and a foreign taint.
fn marked(name: &str, version: &str) -> Node {
    let mut node = node(
        name,
        version,
        "DE",
        vec![
            taint("dedicated", "NoSchedule"),
            taint(TAINT_KEY, "NoSchedule"),
        ],
    );
    node.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(CLASS_LABEL.into(), "red".into());
    node.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: CONDITION_TYPE.into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    node
}

fn clean_node(name: &str) -> Node {
    node(name, "9", "DE", vec![taint("dedicated", "NoSchedule")])
}

/// Answers a pass's list of the Nodes with `nodes`.
async fn listed(server: &mut ApiServer, nodes: &[Node]) {
    let reply = Reply::list("v1", "NodeList", nodes);
    server.expect(Method::GET, NODES, reply).await;
}

/// Answers the taint-and-label patch and the condition removal for `name`.
async fn cleaned(server: &mut ApiServer, name: &str) {
    let path = format!("{NODES}/{name}");
    let patch = server
        .expect(Method::PATCH, &path, Reply::ok(&clean_node(name)))
        .await;
    assert_eq!(patch.body["spec"]["taints"][0]["key"], "dedicated");
    assert_eq!(
        patch.body["spec"]["taints"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(patch.body["metadata"]["labels"][CLASS_LABEL].is_null());
    let status = server
        .expect(
            Method::PATCH,
            &format!("{path}/status"),
            Reply::ok(&clean_node(name)),
        )
        .await;
    assert_eq!(
        status.body["status"]["conditions"][0]["$patch"], "delete",
        "{:?}",
        status.body
    );
}

#[tokio::test(start_paused = true)]
async fn a_conflict_is_retried_on_the_new_version_and_a_pass_after_settling_confirms() {
    let (client, mut server) = api_server::pair();
    let scenario = async {
        listed(&mut server, &[marked("n1", "1"), clean_node("n2")]).await;
        let first = server
            .expect(
                Method::PATCH,
                "/api/v1/nodes/n1",
                Reply::Failure(409, "the object has been modified"),
            )
            .await;
        assert_eq!(first.body["metadata"]["resourceVersion"], "1");
        server
            .expect(
                Method::GET,
                "/api/v1/nodes/n1",
                Reply::ok(&marked("n1", "2")),
            )
            .await;
        cleaned(&mut server, "n1").await;
        let started = Instant::now();
        listed(&mut server, &[clean_node("n1"), clean_node("n2")]).await;
        assert_eq!(started.elapsed(), SETTLE, "the second pass waits to settle");
        server.expect_no_more().await;
    };
    let (outcome, ()) = tokio::join!(run(Api::all(client), TIMEOUT, SETTLE), scenario);
    outcome.expect("clean");
}

#[tokio::test(start_paused = true)]
async fn one_nodes_failure_does_not_stop_the_others_and_is_retried_next_pass() {
    let (client, mut server) = api_server::pair();
    let scenario = async {
        let all = [marked("n1", "1"), marked("n2", "1"), marked("n3", "1")];
        listed(&mut server, &all).await;
        server
            .expect(
                Method::PATCH,
                "/api/v1/nodes/n1",
                Reply::Failure(500, "etcd timeout"),
            )
            .await;
        cleaned(&mut server, "n2").await;
        // Deleted meanwhile: nothing to clean, and not an error.
        server
            .expect(
                Method::PATCH,
                "/api/v1/nodes/n3",
                Reply::Failure(404, "nodes \"n3\" not found"),
            )
            .await;
        listed(&mut server, &[marked("n1", "1"), clean_node("n2")]).await;
        cleaned(&mut server, "n1").await;
        listed(&mut server, &[clean_node("n1"), clean_node("n2")]).await;
        server.expect_no_more().await;
    };
    let (outcome, ()) = tokio::join!(run(Api::all(client), TIMEOUT, SETTLE), scenario);
    outcome.expect("clean after the retry");
}

#[tokio::test(start_paused = true)]
async fn a_denial_stops_the_run_at_once() {
    let (client, mut server) = api_server::pair();
    let scenario = async {
        listed(&mut server, &[marked("n1", "1"), marked("n2", "1")]).await;
        server
            .expect(
                Method::PATCH,
                "/api/v1/nodes/n1",
                Reply::Failure(403, "cannot patch nodes"),
            )
            .await;
        server.expect_no_more().await;
    };
    let (outcome, ()) = tokio::join!(run(Api::all(client), TIMEOUT, SETTLE), scenario);
    let error = outcome.expect_err("forbidden").to_string();
    assert!(error.contains("not allowed: cannot patch nodes"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn marks_that_keep_coming_back_fail_at_the_timeout_naming_the_nodes() {
    let (client, mut server) = api_server::pair();
    let started = Instant::now();
    let scenario = async {
        // Passes at 0, 4 and 8 s clean n1; an agent still running marks it again.
        for _ in 0..3 {
            listed(&mut server, &[marked("n1", "1")]).await;
            cleaned(&mut server, "n1").await;
        }
        listed(&mut server, &[marked("n1", "1")]).await;
        server.expect_no_more().await;
    };
    let timeout = Duration::from_secs(10);
    let (outcome, ()) = tokio::join!(run(Api::all(client), timeout, SETTLE), scenario);
    let error = outcome.expect_err("marks left").to_string();
    assert_eq!(error, "timed out with carbon-kube marks still on: n1");
    assert!(started.elapsed() >= timeout);
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_fails_the_run_at_the_timeout() {
    let (client, mut server) = api_server::pair();
    let started = Instant::now();
    let scenario = async {
        listed(&mut server, &[marked("n1", "1")]).await;
        server
            .expect(Method::PATCH, "/api/v1/nodes/n1", Reply::Hang)
            .await;
    };
    let (outcome, ()) = tokio::join!(run(Api::all(client), TIMEOUT, SETTLE), scenario);
    let error = outcome.expect_err("hung").to_string();
    assert!(error.contains("the API server did not answer"), "{error}");
    assert_eq!(started.elapsed(), TIMEOUT + LAST_LIST);
}

#[tokio::test(start_paused = true)]
async fn a_garbled_node_list_is_an_error() {
    let (client, mut server) = api_server::pair();
    let scenario = async {
        server
            .expect(
                Method::GET,
                NODES,
                Reply::Json(200, serde_json::json!({"items": "nodes"})),
            )
            .await;
        server.expect_no_more().await;
    };
    let (outcome, ()) = tokio::join!(run(Api::all(client), TIMEOUT, SETTLE), scenario);
    let error = format!("{:#}", outcome.expect_err("garbled"));
    assert!(error.contains("invalid type"), "{error}");
}
