use super::*;
use crate::decision::{DwellState, IntensityClass};
use crate::testing::taint;

#[test]
fn adding_ours_keeps_foreign_taints() {
    let foreign = vec![
        taint("dedicated", "NoSchedule"),
        taint("example.com/gpu", "PreferNoSchedule"),
    ];
    let out = taints_with_ours(&foreign, true, "PreferNoSchedule", Timestamp::UNIX_EPOCH).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(&out[..2], &foreign[..]);
    assert_eq!(out[2].key, TAINT_KEY);
}

#[test]
fn removing_ours_keeps_foreign_taints() {
    let list = vec![
        taint("dedicated", "NoSchedule"),
        taint(TAINT_KEY, "PreferNoSchedule"),
        taint("x", "NoExecute"),
    ];
    let out = taints_with_ours(&list, false, "PreferNoSchedule", Timestamp::UNIX_EPOCH).unwrap();
    assert_eq!(
        out,
        vec![taint("dedicated", "NoSchedule"), taint("x", "NoExecute")]
    );
}

#[test]
fn no_change_means_no_write() {
    let list = vec![taint(TAINT_KEY, "PreferNoSchedule")];
    assert_eq!(
        taints_with_ours(&list, true, "PreferNoSchedule", Timestamp::UNIX_EPOCH),
        None
    );
    assert_eq!(
        taints_with_ours(
            &[taint("a", "NoSchedule")],
            false,
            "NoSchedule",
            Timestamp::UNIX_EPOCH
        ),
        None
    );
}

#[test]
fn a_changed_effect_replaces_our_taint() {
    let list = vec![taint(TAINT_KEY, "PreferNoSchedule")];
    let out = taints_with_ours(&list, true, "NoSchedule", Timestamp::UNIX_EPOCH).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].effect, "NoSchedule");
}

#[test]
fn wanted_state_follows_the_decision() {
    let decision = |tainted, class, reason| TaintDecision {
        tainted,
        class,
        reason,
        dwell: DwellState::default(),
    };
    let red = OwnedState::wanted(&decision(
        true,
        Some(IntensityClass::Red),
        Reason::AboveThreshold,
    ));
    assert_eq!(
        (
            red.tainted,
            red.class.as_deref(),
            red.condition_status.as_deref()
        ),
        (true, Some("red"), Some("True"))
    );
    let stale = OwnedState::wanted(&decision(false, None, Reason::Stale));
    assert_eq!(
        (stale.class, stale.condition_status.as_deref()),
        (None, Some("Unknown"))
    );
    let green = OwnedState::wanted(&decision(
        false,
        Some(IntensityClass::Green),
        Reason::BelowThreshold,
    ));
    assert_eq!(green.condition_status.as_deref(), Some("False"));
}

// ------------------------------------------- against a mock API server --

mod writes {
    use http::Method;
    use serde_json::Value;

    use super::*;
    use crate::testing::api_server::{self, Reply};
    use crate::testing::node;

    const NODE: &str = "/api/v1/nodes/n1";

    fn red() -> TaintDecision {
        TaintDecision {
            tainted: true,
            class: Some(IntensityClass::Red),
            reason: Reason::AboveThreshold,
            dwell: DwellState::default(),
        }
    }

    fn writer(client: kube::Client) -> NodeWriter {
        NodeWriter::new(Api::all(client), "n1", "PreferNoSchedule")
    }

    fn taint_keys(patch: &Value) -> Vec<&str> {
        patch["spec"]["taints"]
            .as_array()
            .expect("a taint list")
            .iter()
            .map(|t| t["key"].as_str().unwrap_or_default())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_reads_the_node_again_and_retries_from_its_version() {
        let (client, mut server) = api_server::pair();
        let seen = node("n1", "1", "DE", vec![]);
        let mut changed = node("n1", "2", "DE", vec![taint("dedicated", "NoSchedule")]);
        changed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        let scenario = async {
            let first = server
                .expect(
                    Method::PATCH,
                    NODE,
                    Reply::Failure(409, "the object has been modified"),
                )
                .await;
            assert_eq!(first.body["metadata"]["resourceVersion"], "1");
            assert_eq!(taint_keys(&first.body), [TAINT_KEY]);
            server.expect(Method::GET, NODE, Reply::ok(&changed)).await;
            let retry = server
                .expect(Method::PATCH, NODE, Reply::ok(&changed))
                .await;
            assert_eq!(retry.body["metadata"]["resourceVersion"], "2");
            assert_eq!(
                taint_keys(&retry.body),
                ["dedicated", TAINT_KEY],
                "the taint another component added meanwhile is kept"
            );
            assert_eq!(retry.body["metadata"]["labels"][CLASS_LABEL], "red");
            assert!(
                retry.query.contains("fieldManager=carbon-kube"),
                "{}",
                retry.query
            );
            let condition = server
                .expect(
                    Method::PATCH,
                    &format!("{NODE}/status"),
                    Reply::ok(&changed),
                )
                .await;
            let written = &condition.body["status"]["conditions"][0];
            assert_eq!(
                (&written["type"], &written["status"]),
                (&CONDITION_TYPE.into(), &"True".into())
            );
            assert_eq!(written["message"], "why");
            server.expect_no_more().await;
        };
        let (w, decision) = (writer(client), red());
        let (outcome, ()) = tokio::join!(w.apply(&seen, &decision, "why"), scenario);
        assert!(
            outcome.expect("written after the retry"),
            "the taint changed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn conflicts_without_end_give_up_after_five_tries_and_write_no_condition() {
        let (client, mut server) = api_server::pair();
        let seen = node("n1", "1", "DE", vec![]);
        let scenario = async {
            for attempt in 1..=CONFLICT_RETRIES {
                let version = attempt.to_string();
                let patch = server
                    .expect(Method::PATCH, NODE, Reply::Failure(409, "modified"))
                    .await;
                assert_eq!(patch.body["metadata"]["resourceVersion"], version.as_str());
                if attempt < CONFLICT_RETRIES {
                    let next = node("n1", &(attempt + 1).to_string(), "DE", vec![]);
                    server.expect(Method::GET, NODE, Reply::ok(&next)).await;
                }
            }
            server.expect_no_more().await;
        };
        let (w, decision) = (writer(client), red());
        let (outcome, ()) = tokio::join!(w.apply(&seen, &decision, "why"), scenario);
        match outcome {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 409),
            other => panic!("want the last conflict, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_garbled_node_after_a_conflict_is_an_error_not_a_blind_write() {
        let (client, mut server) = api_server::pair();
        let seen = node("n1", "1", "DE", vec![]);
        let scenario = async {
            server
                .expect(Method::PATCH, NODE, Reply::Failure(409, "modified"))
                .await;
            server
                .expect(
                    Method::GET,
                    NODE,
                    Reply::Garbage("<html>proxy error</html>"),
                )
                .await;
            server.expect_no_more().await;
        };
        let (w, decision) = (writer(client), red());
        let (outcome, ()) = tokio::join!(w.apply(&seen, &decision, "why"), scenario);
        assert!(
            matches!(outcome, Err(kube::Error::SerdeError(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_already_as_decided_is_not_written() {
        let (client, mut server) = api_server::pair();
        let mut done = node("n1", "7", "DE", vec![taint(TAINT_KEY, "PreferNoSchedule")]);
        done.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(CLASS_LABEL.into(), "red".into());
        done.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: CONDITION_TYPE.into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let (w, decision) = (writer(client), red());
        let (outcome, ()) = tokio::join!(w.apply(&done, &decision, "why"), server.expect_no_more());
        assert!(!outcome.expect("nothing to write"));
    }
}
