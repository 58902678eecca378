use super::*;

#[test]
fn nodes_are_counted_per_zone() {
    let label = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    let nodes = [
        label(zones::GRID_ZONE_LABEL, "DE"),
        label(zones::GRID_ZONE_LABEL, "DE"),
        label(zones::REGION_LABEL, "eu-west-3"),
        BTreeMap::new(),
    ];
    let fallback = GridZone::parse("NL").unwrap();
    let counts = zones_of_nodes(nodes.iter(), Some(&fallback));
    assert_eq!(counts.get(&GridZone::parse("DE").unwrap()), Some(&2));
    assert_eq!(counts.get(&GridZone::parse("FR").unwrap()), Some(&1));
    assert_eq!(counts.get(&fallback), Some(&1));
    let without_default = zones_of_nodes(nodes.iter(), None);
    assert_eq!(
        without_default.values().sum::<usize>(),
        3,
        "a node with no zone is not counted"
    );
}

#[test]
fn zones_are_ranked_by_the_intensity_and_the_forecast_within_the_dwell() {
    let at = |s: &str| -> Timestamp { s.parse().unwrap() };
    let point = |t: &str, g: f64| crate::carbon::ForecastPoint {
        at: at(t),
        grams_per_kwh: g,
    };
    let reading = Reading {
        zone: GridZone::parse("DE").unwrap(),
        grams_per_kwh: 400.0,
        source: "electricity-maps".into(),
        observed_at: at("2024-01-01T10:00:00Z"),
        kind: SourceKind::Measured,
        forecast: vec![
            point("2024-01-01T10:00:00Z", 999.0),
            point("2024-01-01T10:30:00Z", 300.0),
            point("2024-01-01T11:00:00Z", 200.0),
            point("2024-01-01T11:30:00Z", 999.0),
        ],
    };
    assert_eq!(rank_value(&reading, Duration::from_secs(600)), 400.0);
    assert_eq!(rank_value(&reading, Duration::from_secs(3600)), 300.0);
}

// ------------------------------------------- against a mock API server --

mod polls {
    use http::Method;
    use jiff::SignedDuration;
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::{ChainSettings, Provider, ProviderError};
    use crate::testing::THRESHOLD;
    use crate::testing::api_server::{self, ApiServer, Reply};
    use crate::testing::provider::Scripted;

    const NODES: &str = "/api/v1/nodes";
    const SCORES: &str = "/apis/carbon-kube.io/v1alpha1/carbonscores";

    fn poller(client: Client, provider: Arc<Scripted>, leading: bool) -> Poller {
        let chain = Chain::new(
            vec![provider as Arc<dyn Provider>],
            ChainSettings {
                attempt_timeout: Duration::from_secs(10),
                breaker_failures: 3,
                breaker_cooldown: Duration::from_secs(300),
                cache_ttl: Duration::ZERO,
            },
        );
        let settings = PollerSettings {
            interval: Duration::from_secs(60),
            concurrency: 1,
            default_zone: None,
            default_threshold_grams_per_kwh: THRESHOLD,
            hysteresis_grams_per_kwh: 20.0,
            max_tainted_fraction: 1.0,
            tuner: None,
            policy: TaintPolicy::Absolute,
            min_spread_grams_per_kwh: 0.0,
            min_spread_percent: 0.0,
            floor_grams_per_kwh: 0.0,
            rank_window: Duration::ZERO,
        };
        let fence = Fence::default();
        if leading {
            fence.set(Some(
                tokio::time::Instant::now() + Duration::from_secs(3600),
            ));
        }
        Poller::new(client, Arc::new(chain), Metrics::new("n1"), settings, fence)
    }

    /// Nodes `(name, zone)` as a metadata-only list.
    fn nodes(nodes: &[(&str, &str)]) -> Reply {
        let items: Vec<Value> = nodes
            .iter()
            .map(|(name, zone)| {
                json!({ "metadata": { "name": name, "labels": { zones::GRID_ZONE_LABEL: zone } } })
            })
            .collect();
        Reply::list("meta.k8s.io/v1", "PartialObjectMetadataList", &items)
    }

    fn scores(scores: &[CarbonScore]) -> Reply {
        Reply::list("carbon-kube.io/v1alpha1", "CarbonScoreList", scores)
    }

    /// Answers the request for the server's clock every poll starts with.
    async fn clock_read(server: &mut ApiServer) {
        let version = json!({ "major": "1", "minor": "34", "gitVersion": "v1.34.0" });
        server
            .expect(Method::GET, "/version", Reply::ok(&version))
            .await;
    }

    /// Answers the clock and the two lists every poll starts with.
    async fn listed(server: &mut ApiServer, existing: &[CarbonScore]) {
        clock_read(server).await;
        server
            .expect(Method::GET, NODES, nodes(&[("n1", "DE"), ("n2", "FR")]))
            .await;
        server.expect(Method::GET, SCORES, scores(existing)).await;
    }

    /// Answers a zone's status write; returns the status written.
    async fn status_written(server: &mut ApiServer, zone: &str) -> Value {
        let path = format!("{SCORES}/{zone}/status");
        let seen = server
            .expect(Method::PATCH, &path, Reply::ok(&json!({})))
            .await;
        assert!(
            seen.query.contains("fieldManager=carbon-kube-leader")
                && seen.query.contains("force=true"),
            "{}",
            seen.query
        );
        seen.body["status"].clone()
    }

    #[tokio::test(start_paused = true)]
    async fn one_zones_failed_write_leaves_the_others_written_and_is_retried_next_poll() {
        let (client, mut server) = api_server::pair();
        let mut poller = poller(
            client,
            Scripted::always("electricity-maps", Ok(520.0)),
            true,
        );
        let first = async {
            listed(&mut server, &[]).await;
            server
                .expect(
                    Method::PATCH,
                    &format!("{SCORES}/de"),
                    Reply::Failure(500, "etcd timeout"),
                )
                .await;
            let fr = CarbonScore::for_zone(&GridZone::parse("FR").unwrap());
            let created = server
                .expect(Method::PATCH, &format!("{SCORES}/fr"), Reply::ok(&fr))
                .await;
            assert_eq!(created.body["spec"]["zone"], "FR");
            let status = status_written(&mut server, "fr").await;
            assert_eq!(status["intensityGramsPerKwh"], 520.0);
            assert_eq!(status["taintAllowed"], true);
            assert_eq!(status["nodes"], 1);
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), first);
        outcome.expect("a failed zone write does not fail the poll");

        let second = async {
            listed(&mut server, &[]).await;
            let de = CarbonScore::for_zone(&GridZone::parse("DE").unwrap());
            server
                .expect(Method::PATCH, &format!("{SCORES}/de"), Reply::ok(&de))
                .await;
            status_written(&mut server, "de").await;
            // FR's object exists: only its status is written.
            status_written(&mut server, "fr").await;
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), second);
        outcome.expect("second poll");
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_are_listed_page_by_page_and_counted_across_pages() {
        let (client, mut server) = api_server::pair();
        let provider = Scripted::always("electricity-maps", Ok(520.0));
        let mut poller = poller(client, provider.clone(), false);
        let scenario = async {
            let Reply::Json(code, mut first) = nodes(&[("n1", "DE"), ("n2", "DE")]) else {
                unreachable!("a list is JSON")
            };
            first["metadata"]["continue"] = json!("page-2");
            clock_read(&mut server).await;
            let seen = server
                .expect(Method::GET, NODES, Reply::Json(code, first))
                .await;
            assert!(seen.query.contains("limit=500"), "{}", seen.query);
            let seen = server
                .expect(Method::GET, NODES, nodes(&[("n3", "FR"), ("n4", "DE")]))
                .await;
            assert!(seen.query.contains("continue=page-2"), "{}", seen.query);
            server.expect(Method::GET, SCORES, scores(&[])).await;
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        outcome.expect("poll");
        assert_eq!(provider.calls(), 2, "DE and FR, from both pages");
    }

    #[tokio::test(start_paused = true)]
    async fn a_garbled_score_list_fails_the_poll_before_any_fetch_or_write() {
        let (client, mut server) = api_server::pair();
        let provider = Scripted::always("electricity-maps", Ok(520.0));
        let mut poller = poller(client, provider.clone(), true);
        let scenario = async {
            clock_read(&mut server).await;
            server
                .expect(Method::GET, NODES, nodes(&[("n1", "DE")]))
                .await;
            server
                .expect(Method::GET, SCORES, Reply::Garbage("{\"items\": [tru"))
                .await;
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        assert!(
            matches!(outcome, Err(kube::Error::SerdeError(_))),
            "{outcome:?}"
        );
        assert_eq!(provider.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_past_its_fence_fetches_but_writes_nothing() {
        let (client, mut server) = api_server::pair();
        let provider = Scripted::always("electricity-maps", Ok(520.0));
        let mut poller = poller(client, provider.clone(), false);
        let scenario = async {
            listed(&mut server, &[]).await;
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        outcome.expect("poll");
        assert_eq!(provider.calls(), 2, "both zones fetched");
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_answer_the_last_good_reading_is_kept_with_the_error() {
        let (client, mut server) = api_server::pair();
        let provider = Scripted::always("electricity-maps", Err(ProviderError::Status(503)));
        let mut poller = poller(client, provider, true);
        let kept = crate::testing::score("DE", 420.0, true, 1);
        let fr = crate::testing::score("FR", 56.0, false, 1);
        let scenario = async {
            listed(&mut server, &[kept.clone(), fr.clone()]).await;
            for (zone, last) in [("de", &kept), ("fr", &fr)] {
                server
                    .expect(Method::PATCH, &format!("{SCORES}/{zone}"), Reply::ok(last))
                    .await;
                let status = status_written(&mut server, zone).await;
                let last = last.status.as_ref().unwrap();
                assert_eq!(status["intensityGramsPerKwh"], last.intensity_grams_per_kwh);
                assert_eq!(status["observedAt"], json!(last.observed_at));
                let error = status["lastError"].as_str().unwrap_or_default();
                assert!(error.contains("503"), "{zone}: {error}");
            }
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        outcome.expect("poll");
    }

    #[tokio::test(start_paused = true)]
    async fn under_the_absolute_policy_the_budget_moves_one_poll_after_its_release() {
        let (client, mut server) = api_server::pair();
        // DE then FR in every poll: FR has become the dirtier zone.
        let provider = Scripted::new(
            "electricity-maps",
            vec![Ok(400.0), Ok(600.0), Ok(400.0), Ok(600.0)],
        );
        let mut poller = poller(client, provider, true);
        // One node of two may be tainted. DE held it; FR was below the band.
        poller.settings.max_tainted_fraction = 0.5;
        let mut existing = vec![
            crate::testing::score("DE", 420.0, true, 1),
            crate::testing::score("FR", 56.0, true, 1),
        ];
        let counted_before = Time("2024-01-01T00:00:00Z".parse().unwrap());
        for score in &mut existing {
            score.status.as_mut().unwrap().counted_at = Some(counted_before.clone());
        }
        for (poll, want) in [
            (1, [("de", false), ("fr", false)]),
            (2, [("de", false), ("fr", true)]),
        ] {
            let scenario = async {
                listed(&mut server, &existing).await;
                let mut written = Vec::new();
                for (zone, allowed) in want {
                    if poll == 1 {
                        // The poller applies each object once, then writes statuses only.
                        let object = CarbonScore::for_zone(&GridZone::parse(zone).unwrap());
                        server
                            .expect(
                                Method::PATCH,
                                &format!("{SCORES}/{zone}"),
                                Reply::ok(&object),
                            )
                            .await;
                    }
                    let status = status_written(&mut server, zone).await;
                    assert_eq!(status["taintAllowed"], allowed, "poll {poll}, {zone}");
                    // While DE's grant is revoked, a node joining FR (or DE)
                    // is not covered: the grants cover what the last poll did.
                    assert_eq!(
                        status["countedAt"] == json!(counted_before),
                        poll == 1,
                        "poll {poll}, {zone}: {}",
                        status["countedAt"]
                    );
                    written.push(status);
                }
                server.expect_no_more().await;
                written
            };
            let (outcome, written) = tokio::join!(poller.poll_once(), scenario);
            outcome.expect("poll");
            for (score, status) in existing.iter_mut().zip(written) {
                score.status = Some(serde_json::from_value(status).expect("a status"));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_zone_left_without_nodes_loses_its_grant_and_statuses_say_when_nodes_were_counted() {
        let (client, mut server) = api_server::pair();
        let provider = Scripted::always("electricity-maps", Ok(520.0));
        let mut poller = poller(client, provider.clone(), true);
        let de = crate::testing::score("DE", 520.0, true, 1);
        let fr = crate::testing::score("FR", 640.0, true, 1);
        // The API server's clock is an hour behind the leader's: nodes are
        // counted by the clock that stamps their creation.
        server.clock = Some(SignedDuration::from_hours(-1));
        let before = Timestamp::now() - SignedDuration::from_hours(1);
        let scenario = async {
            clock_read(&mut server).await;
            // FR's only node is gone.
            server
                .expect(Method::GET, NODES, nodes(&[("n1", "DE")]))
                .await;
            server
                .expect(Method::GET, SCORES, scores(&[de.clone(), fr.clone()]))
                .await;
            let object = CarbonScore::for_zone(&GridZone::parse("DE").unwrap());
            server
                .expect(Method::PATCH, &format!("{SCORES}/de"), Reply::ok(&object))
                .await;
            let written = status_written(&mut server, "de").await;
            assert_eq!(written["taintAllowed"], true);
            let counted: Timestamp = written["countedAt"].as_str().unwrap().parse().unwrap();
            // Whole seconds, as Kubernetes writes times, by the server's clock.
            assert_eq!(counted.subsec_nanosecond(), 0, "{counted}");
            assert!(
                counted.as_second() >= before.as_second()
                    && counted <= Timestamp::now() - SignedDuration::from_hours(1),
                "{counted} {before}"
            );
            server
                .expect(Method::PATCH, &format!("{SCORES}/fr"), Reply::ok(&fr))
                .await;
            let revoked = status_written(&mut server, "fr").await;
            assert_eq!(revoked["taintAllowed"], false);
            assert_eq!(revoked["nodes"], 0);
            assert_eq!(revoked["countedAt"], written["countedAt"]);
            assert_eq!(
                revoked["intensityGramsPerKwh"], 640.0,
                "the last reading is kept"
            );
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        outcome.expect("poll");
        assert_eq!(provider.calls(), 1, "only DE, which has nodes, is fetched");
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_servers_date_no_count_time_is_written_and_nothing_is_withheld() {
        let (client, mut server) = api_server::pair();
        server.clock = None;
        let provider = Scripted::always("electricity-maps", Ok(520.0));
        let mut poller = poller(client, provider, true);
        let scenario = async {
            listed(&mut server, &[]).await;
            for zone in ["DE", "FR"] {
                let object = CarbonScore::for_zone(&GridZone::parse(zone).unwrap());
                let path = format!("{SCORES}/{}", zone.to_lowercase());
                server
                    .expect(Method::PATCH, &path, Reply::ok(&object))
                    .await;
                let status = status_written(&mut server, &zone.to_lowercase()).await;
                assert!(status.get("countedAt").is_none(), "{status}");
            }
            server.expect_no_more().await;
        };
        let (outcome, ()) = tokio::join!(poller.poll_once(), scenario);
        outcome.expect("poll");
    }
}
