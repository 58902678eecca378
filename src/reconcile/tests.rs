use super::*;
use crate::decision::IntensityClass;

fn decision(reason: Reason, tainted: bool) -> TaintDecision {
    TaintDecision {
        tainted,
        class: Some(IntensityClass::Amber),
        reason,
        dwell: DwellState::default(),
    }
}

#[test]
fn messages_say_why_the_node_is_left_alone() {
    let zone = GridZone::parse("DE").unwrap();
    let now: Timestamp = "2024-05-01T10:30:00Z".parse().unwrap();
    let score = ZoneScore {
        grams_per_kwh: 314.0,
        threshold_grams_per_kwh: 300.0,
        observed_at: "2024-05-01T10:00:00Z".parse().unwrap(),
        taint_allowed: false,
        ranking: None,
    };
    let message = |source, reason| {
        condition_message(
            Some(&zone),
            Some(&score),
            source,
            &decision(reason, false),
            "PreferNoSchedule",
            now,
        )
    };
    let static_only = message("static", Reason::StaticOnly);
    assert!(
        static_only.contains("(source static, observed 2024-05-01T10:00:00Z, 30 min before")
            && static_only.contains("static yearly average is shown but never acted on"),
        "{static_only}"
    );
    let budget = message("electricity-maps", Reason::BudgetExhausted);
    assert!(budget.contains("taint budget"), "{budget}");
    assert_eq!(Reason::StaticOnly.as_str(), "StaticAverageNotActedOn");
}

#[test]
fn ranked_messages_give_the_rank_the_spread_and_the_cleanest_zone() {
    use crate::budget::Verdict;
    use crate::decision::ZoneRanking;
    let zone = GridZone::parse("PL").unwrap();
    let now: Timestamp = "2024-05-01T10:30:00Z".parse().unwrap();
    let score = |verdict, ranked_zones| ZoneScore {
        grams_per_kwh: 610.0,
        threshold_grams_per_kwh: 0.0,
        observed_at: "2024-05-01T10:00:00Z".parse().unwrap(),
        taint_allowed: verdict == Verdict::Taint,
        ranking: Some(ZoneRanking {
            verdict,
            rank: Some(1),
            ranked_zones,
            ranked_by_grams_per_kwh: Some(600.0),
            cleanest_zone: Some("FR".into()),
            cleanest_grams_per_kwh: Some(40.0),
            required_spread_grams_per_kwh: 50.0,
        }),
    };
    let message = |verdict, ranked_zones, reason, tainted| {
        condition_message(
            Some(&zone),
            Some(&score(verdict, ranked_zones)),
            "electricity-maps",
            &decision(reason, tainted),
            "PreferNoSchedule",
            now,
        )
    };
    let tainted = message(Verdict::Taint, 3, Reason::DirtierThanCleanest, true);
    assert_eq!(
        tainted,
        "Grid zone PL: 610 gCO2/kWh (source electricity-maps, observed 2024-05-01T10:00:00Z, 30 min before this update); \
         ranked 1 of 3 (dirtiest first) at 600 gCO2/kWh, 560 g above the cleanest zone FR (40 g); a taint needs 50 g. \
         Node tainted carbon-kube.io/high-intensity:PreferNoSchedule so that new pods prefer cleaner zones; pods that tolerate it may still land here."
    );
    let alone = message(Verdict::SingleZone, 1, Reason::SingleZone, false);
    assert!(
        alone.contains("PL is the cluster's only grid zone: there is nothing to shift")
            && alone.contains("metrics and deferral"),
        "{alone}"
    );
    let small = message(Verdict::SpreadTooSmall, 3, Reason::SpreadTooSmall, false);
    assert!(small.contains("minimum spread"), "{small}");
}

// ------------------------------------------- against a mock API server --

mod rounds {
    use http::Method;

    use super::*;
    use crate::testing::api_server::{self, Reply};
    use crate::testing::{node, sample, score, store};

    const NODE: &str = "/api/v1/nodes/n1";

    fn reconciler(client: Client) -> Reconciler {
        let settings = ReconcilerSettings {
            default_zone: None,
            decision: DecisionParams {
                hysteresis_grams_per_kwh: 20.0,
                dwell: Duration::ZERO,
                max_age: Duration::from_secs(3600),
            },
            taint_effect: TaintEffect::PreferNoSchedule,
        };
        let intensity = watch::channel(None).0;
        Reconciler::new(client, "n1", settings, Metrics::new("n1"), intensity)
            .with_power_note(watch::channel("Power: modelled (test).".to_string()).1)
    }

    fn counter(reconciler: &Reconciler, name: &str) -> Option<f64> {
        sample(&reconciler.metrics.encode(), name, &[])
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_node_write_is_counted_and_the_next_round_writes() {
        let (client, mut server) = api_server::pair();
        let reconciler = reconciler(client);
        let scores = store([score("DE", 520.0, true, 1)]);
        let untainted = node("n1", "1", "DE", vec![]);
        let mut zone = None;
        let first = async {
            let seen = server
                .expect(Method::PATCH, NODE, Reply::Failure(500, "etcd timeout"))
                .await;
            assert_eq!(seen.body["spec"]["taints"][0]["key"], TAINT_KEY);
            server.expect_no_more().await;
        };
        let (dwell, ()) = tokio::join!(
            reconciler.reconcile(&untainted, &scores, DwellState::default(), &mut zone),
            first
        );
        assert_eq!(
            counter(&reconciler, "carbon_kube_node_write_errors_total"),
            Some(1.0)
        );
        assert_eq!(
            counter(&reconciler, "carbon_kube_taint_transitions_total"),
            Some(0.0)
        );
        // The crate error counter says which part met it and what kind it was.
        let errors = sample(
            &reconciler.metrics.encode(),
            "carbon_kube_errors_total",
            &["part=\"reconciler\"", "kind=\"server_error\""],
        );
        assert_eq!(errors, Some(1.0));
        assert_eq!(zone.as_ref().map(GridZone::as_str), Some("DE"));
        // The zone and its provider's signal type label the node's figures, for accounting.
        let grid = sample(
            &reconciler.metrics.encode(),
            "carbon_kube_node_grid_info",
            &["zone=\"DE\"", "signal=\"average\""],
        );
        assert_eq!(grid, Some(1.0));
        // The node does not carry the taint the write failed to add.
        assert_eq!(counter(&reconciler, "carbon_kube_node_tainted"), Some(0.0));

        // The node is as it was: the next round writes it again.
        let second = async {
            server
                .expect(Method::PATCH, NODE, Reply::ok(&untainted))
                .await;
            let status = server
                .expect(
                    Method::PATCH,
                    &format!("{NODE}/status"),
                    Reply::ok(&untainted),
                )
                .await;
            let message = status.body["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                message.starts_with("Grid zone DE: 520 gCO2/kWh"),
                "{message}"
            );
            server.expect_no_more().await;
        };
        tokio::join!(
            reconciler.reconcile(&untainted, &scores, dwell, &mut zone),
            second
        );
        assert_eq!(counter(&reconciler, "carbon_kube_node_tainted"), Some(1.0));
        assert_eq!(
            counter(&reconciler, "carbon_kube_node_write_errors_total"),
            Some(1.0)
        );
        assert_eq!(
            counter(&reconciler, "carbon_kube_taint_transitions_total"),
            Some(1.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_without_a_score_is_left_schedulable_and_says_why() {
        let (client, mut server) = api_server::pair();
        let reconciler = reconciler(client);
        let tainted = node(
            "n1",
            "3",
            "DE",
            vec![crate::testing::taint(TAINT_KEY, "PreferNoSchedule")],
        );
        let scenario = async {
            let patch = server
                .expect(Method::PATCH, NODE, Reply::ok(&tainted))
                .await;
            assert_eq!(patch.body["spec"]["taints"], serde_json::json!([]));
            let status = server
                .expect(
                    Method::PATCH,
                    &format!("{NODE}/status"),
                    Reply::ok(&tainted),
                )
                .await;
            let condition = &status.body["status"]["conditions"][0];
            assert_eq!(condition["status"], "Unknown");
            assert_eq!(
                condition["message"],
                "No carbon data for grid zone DE yet; the node is left schedulable. Power: modelled (test).",
                "the emissions loop's note on measured or modelled power ends the message"
            );
            server.expect_no_more().await;
        };
        let (mut zone, scores) = (None, store([]));
        tokio::join!(
            reconciler.reconcile(&tainted, &scores, DwellState::default(), &mut zone),
            scenario
        );
        assert_eq!(
            counter(&reconciler, "carbon_kube_taint_transitions_total"),
            Some(1.0)
        );
    }
}
