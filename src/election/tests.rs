use super::*;

fn seen(holder: Option<&str>, at: Instant) -> Observed {
    Observed {
        holder: holder.map(str::to_string),
        resource_version: "1".into(),
        seen_at: at,
    }
}

#[test]
fn no_lease_or_no_holder_means_acquire() {
    let now = Instant::now();
    let d = Duration::from_secs(15);
    assert_eq!(evaluate(None, "me", now, d), Action::Acquire);
    assert_eq!(
        evaluate(Some(&seen(None, now)), "me", now, d),
        Action::Acquire
    );
    assert_eq!(
        evaluate(Some(&seen(Some(""), now)), "me", now, d),
        Action::Acquire
    );
}

#[test]
fn our_lease_is_renewed() {
    let now = Instant::now();
    assert_eq!(
        evaluate(
            Some(&seen(Some("me"), now)),
            "me",
            now,
            Duration::from_secs(15)
        ),
        Action::Renew
    );
}

#[test]
fn a_live_lease_of_another_is_waited_out_from_when_we_saw_it() {
    let t0 = Instant::now();
    let d = Duration::from_secs(15);
    let other = seen(Some("other"), t0);
    assert_eq!(
        evaluate(Some(&other), "me", t0 + Duration::from_secs(14), d),
        Action::WaitUntil(t0 + d)
    );
    assert_eq!(evaluate(Some(&other), "me", t0 + d, d), Action::Acquire);
}

#[test]
fn leader_steps_down_before_others_may_take_over() {
    let timing = Timing::new(Duration::from_secs(15));
    let t0 = Instant::now();
    assert_eq!(timing.renew_every, Duration::from_secs(5));
    assert!(!timing.must_step_down(t0, t0 + Duration::from_secs(9)));
    assert!(timing.must_step_down(t0, t0 + Duration::from_secs(10)));
    assert!(timing.renew_deadline < timing.lease_duration);
}

#[test]
fn observation_time_moves_only_on_change() {
    let lease = |rv: &str| Lease {
        metadata: ObjectMeta {
            resource_version: Some(rv.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("other".into()),
            ..Default::default()
        }),
    };
    let first = observe(None, &lease("5"));
    let again = observe(Some(first.clone()), &lease("5"));
    assert_eq!(again.seen_at, first.seen_at);
    let changed = observe(Some(first.clone()), &lease("6"));
    assert_eq!(changed.resource_version, "6");
    assert!(changed.seen_at >= first.seen_at);
}

#[test]
fn the_fence_holds_only_until_its_deadline() {
    let fence = Fence::default();
    assert!(!fence.holds(), "a new process does not lead");
    fence.set(Some(Instant::now() + Duration::from_secs(10)));
    assert!(fence.clone().holds());
    fence.set(Some(Instant::now()));
    assert!(!fence.holds(), "past the deadline");
    fence.set(None);
    assert!(!fence.holds());
}

#[test]
fn jitter_stays_within_bounds() {
    for _ in 0..100 {
        assert!(jitter(Duration::from_secs(3)) <= Duration::from_secs(3));
    }
    assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
}

#[test]
fn jitter_spreads_over_its_range() {
    // 1,000 draws over 0..=9 ms: each value comes up (an expected 100 times each;
    // a fixed or stuck draw would leave most empty).
    let mut seen = [0u32; 10];
    for _ in 0..1000 {
        seen[jitter(Duration::from_millis(9)).as_millis() as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
}

// ------------------------------------------- against a mock API server --

mod hung {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::testing::api_server::{self, Reply};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/carbon-kube/leases";

    /// The Lease the API server holds once `holder` created it.
    fn created(holder: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("carbon-kube-leader".into()),
                namespace: Some("carbon-kube".into()),
                resource_version: Some("2".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(4),
                ..Default::default()
            }),
        }
    }

    /// A leader whose renewal hangs (a frozen apiserver keeps the connection
    /// open, and the client has no read timeout) stops leading at its renew
    /// deadline, and its fence stops leader writes from then on.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_steps_the_leader_down_at_its_renew_deadline() {
        let (client, mut server) = api_server::pair();
        let timing = Timing::new(Duration::from_secs(4));
        let (elector, mut is_leader) = Elector::new(
            Api::namespaced(client, "carbon-kube"),
            "carbon-kube-leader",
            "carbon-kube-n1",
            timing,
        );
        let fence = elector.fence();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let running = tokio::spawn(elector.run(shutdown));

        let list = server
            .expect(
                Method::GET,
                LEASES,
                Reply::list("coordination.k8s.io/v1", "LeaseList", &[] as &[Lease]),
            )
            .await;
        assert!(
            list.query.contains("metadata.name%3Dcarbon-kube-leader"),
            "{}",
            list.query
        );
        // The watch and the creation go out in either order; the watch never answers.
        let mut created_by = None;
        for _ in 0..2 {
            let seen = server
                .answer(|seen| match seen.method {
                    Method::POST => Reply::Json(201, json!(created("carbon-kube-n1"))),
                    _ => Reply::Hang,
                })
                .await;
            if seen.method == Method::POST {
                created_by = seen.body["spec"]["holderIdentity"]
                    .as_str()
                    .map(str::to_string);
            } else {
                assert!(seen.query.contains("watch=true"), "{seen:?}");
            }
        }
        assert_eq!(created_by.as_deref(), Some("carbon-kube-n1"));
        is_leader.wait_for(|leader| *leader).await.expect("leads");
        let renewed = Instant::now();
        assert!(fence.holds());

        let renewal = server
            .expect(
                Method::PUT,
                &format!("{LEASES}/carbon-kube-leader"),
                Reply::Hang,
            )
            .await;
        assert_eq!(renewal.body["metadata"]["resourceVersion"], "2");
        is_leader
            .wait_for(|leader| !*leader)
            .await
            .expect("steps down");
        // Timers tick in whole milliseconds.
        let stepped_down = renewed.elapsed();
        assert!(
            stepped_down.abs_diff(timing.renew_deadline) <= Duration::from_millis(1),
            "stepped down {stepped_down:?} after the last renewal"
        );
        assert!(!fence.holds(), "no leader write after stepping down");

        let _ = shutdown_tx.send(true);
        running.await.expect("the elector ends on shutdown");
    }
}
