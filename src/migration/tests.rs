use k8s_openapi::api::core::v1::{
    NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

use super::*;
use crate::carbon::SourceKind;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn zone(z: &str) -> GridZone {
    GridZone::parse(z).unwrap()
}

#[test]
fn at_most_n_evictions_in_any_hour() {
    let start = Instant::now();
    let mut limiter = RateLimiter::new(2);
    assert!(limiter.allows(start));
    limiter.record(start);
    let later = start + Duration::from_secs(600);
    assert!(limiter.allows(later));
    limiter.record(later);
    assert!(!limiter.allows(later + Duration::from_secs(1)));
    assert_eq!(
        limiter.wait(later + Duration::from_secs(1200)),
        Duration::from_secs(3600 - 1200 - 600)
    );
    // The first eviction leaves the window an hour after it happened.
    assert!(limiter.allows(start + HOUR));
    assert_eq!(limiter.wait(start + HOUR), Duration::ZERO);
    limiter.record(start + HOUR);
    assert!(!limiter.allows(start + HOUR));
}

fn node(taint: Option<Option<&str>>, condition: Option<(&str, &str)>) -> Node {
    Node {
        spec: Some(NodeSpec {
            taints: Some(
                [Taint {
                    key: "dedicated".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]
                .into_iter()
                .chain(taint.map(|time| Taint {
                    key: TAINT_KEY.into(),
                    effect: "NoSchedule".into(),
                    time_added: time.map(|t| Time(at(t))),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: condition.map(|(status, time)| {
                vec![NodeCondition {
                    type_: CONDITION_TYPE.into(),
                    status: status.into(),
                    last_transition_time: Some(Time(at(time))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn tainted_since_the_taints_time_else_the_conditions() {
    let t1 = "2025-06-01T10:00:00Z";
    let t2 = "2025-06-01T09:00:00Z";
    assert_eq!(tainted_since(&node(None, Some(("True", t2)))), None);
    assert_eq!(
        tainted_since(&node(Some(Some(t1)), Some(("True", t2)))),
        Some(Some(at(t1)))
    );
    assert_eq!(
        tainted_since(&node(Some(None), Some(("True", t2)))),
        Some(Some(at(t2)))
    );
    assert_eq!(
        tainted_since(&node(Some(None), Some(("False", t2)))),
        Some(None)
    );
    assert_eq!(
        taint_effect(&node(Some(None), None)).as_deref(),
        Some("NoSchedule")
    );
    assert!(long_enough(at(t2), at(t1), Duration::from_secs(3600)));
    assert!(!long_enough(at(t2), at(t1), Duration::from_secs(3601)));
}

fn view(z: &str, grams: f64, allowed: bool, nodes: u32) -> ZoneView {
    ZoneView {
        zone: zone(z),
        grams_per_kwh: grams,
        threshold_grams_per_kwh: 300.0,
        taint_allowed: allowed,
        ranked: false,
        nodes,
        observed_at: at("2025-06-01T10:00:00Z"),
        source: SourceKind::Measured,
    }
}

#[test]
fn greener_capacity_is_a_fresh_greener_zone_with_nodes_that_is_certainly_untainted() {
    let now = at("2025-06-01T10:30:00Z");
    let max_age = Duration::from_secs(5400);
    let own = view("DE", 520.0, true, 3);
    let pick = |zones: &[ZoneView]| {
        greener_capacity(&own, zones, 20.0, max_age, now).map(|z| z.zone.to_string())
    };
    assert_eq!(pick(std::slice::from_ref(&own)), None, "not itself");
    assert_eq!(pick(&[view("FR", 56.0, true, 2)]).as_deref(), Some("FR"));
    assert_eq!(pick(&[view("FR", 56.0, true, 0)]), None, "no nodes");
    assert_eq!(pick(&[view("PL", 700.0, false, 2)]), None, "not greener");
    // Inside the hysteresis band a node may still be tainted: not certain.
    assert_eq!(pick(&[view("ES", 290.0, true, 2)]), None, "maybe tainted");
    assert_eq!(pick(&[view("ES", 279.0, true, 2)]).as_deref(), Some("ES"));
    // Dirty but the leader may not taint it: its nodes are schedulable.
    assert_eq!(pick(&[view("IT", 400.0, false, 2)]).as_deref(), Some("IT"));
    // Under the relative policy the allowance is the verdict: a low level proves nothing.
    let mut ranked = view("ES", 150.0, true, 2);
    ranked.ranked = true;
    assert_eq!(
        pick(std::slice::from_ref(&ranked)),
        None,
        "ranked for a taint"
    );
    ranked.taint_allowed = false;
    assert_eq!(pick(&[ranked]).as_deref(), Some("ES"));
    let mut stale = view("NO", 20.0, false, 2);
    stale.observed_at = at("2025-06-01T08:00:00Z");
    assert_eq!(pick(&[stale]), None, "stale");
    let mut yearly = view("SE", 30.0, false, 2);
    yearly.source = SourceKind::Static;
    assert_eq!(pick(&[yearly]), None, "a yearly average is never acted on");
    assert_eq!(
        pick(&[
            view("IT", 400.0, false, 2),
            view("FR", 56.0, true, 1),
            view("ES", 150.0, true, 5)
        ])
        .as_deref(),
        Some("FR"),
        "the greenest"
    );
}

fn pod(labels: &[(&str, &str)], owner: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|kind| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: "owner".into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

#[test]
fn only_opted_in_replaceable_pods_that_cannot_come_back_are_eligible() {
    let de = zone("DE");
    let check = |p: &Pod| eligibility(p, "n1", &de, "NoSchedule");
    let opted = [(OPT_IN_LABEL, "true")];
    assert_eq!(check(&pod(&opted, Some("ReplicaSet"))), Ok(()));
    assert_eq!(check(&pod(&opted, Some("StatefulSet"))), Ok(()));
    assert_eq!(
        check(&pod(&[(OPT_IN_LABEL, "yes")], Some("ReplicaSet"))),
        Err(Ineligible::NotOptedIn)
    );
    assert_eq!(check(&pod(&opted, None)), Err(Ineligible::NoController));
    assert_eq!(
        check(&pod(&opted, Some("Node"))),
        Err(Ineligible::NoController)
    );
    assert_eq!(
        check(&pod(&opted, Some("DaemonSet"))),
        Err(Ineligible::DaemonSet)
    );

    let mut p = pod(&opted, Some("ReplicaSet"));
    p.metadata.deletion_timestamp = Some(Time(at("2025-06-01T10:00:00Z")));
    assert_eq!(check(&p), Err(Ineligible::Terminating));
    let mut p = pod(&opted, Some("Job"));
    p.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert_eq!(check(&p), Err(Ineligible::Finished));

    let tolerating = |key: Option<&str>, operator: &str, effect: Option<&str>| {
        let mut p = pod(&opted, Some("ReplicaSet"));
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: key.map(str::to_string),
            operator: Some(operator.into()),
            effect: effect.map(str::to_string),
            ..Default::default()
        }]);
        check(&p)
    };
    assert_eq!(
        tolerating(Some(TAINT_KEY), "Exists", None),
        Err(Ineligible::ToleratesTaint)
    );
    assert_eq!(
        tolerating(None, "Exists", None),
        Err(Ineligible::ToleratesTaint)
    );
    assert_eq!(
        tolerating(Some(TAINT_KEY), "Exists", Some("NoSchedule")),
        Err(Ineligible::ToleratesTaint)
    );
    assert_eq!(
        tolerating(Some(TAINT_KEY), "Exists", Some("PreferNoSchedule")),
        Ok(())
    );
    assert_eq!(tolerating(Some("other"), "Exists", None), Ok(()));

    let pinned = |key: &str, value: &str| {
        let mut p = pod(&opted, Some("ReplicaSet"));
        p.spec.as_mut().unwrap().node_selector =
            Some([(key.to_string(), value.to_string())].into());
        check(&p)
    };
    assert_eq!(
        pinned("kubernetes.io/hostname", "n1"),
        Err(Ineligible::Pinned)
    );
    assert_eq!(pinned("kubernetes.io/hostname", "n2"), Ok(()));
    assert_eq!(
        pinned("carbon-kube.io/grid-zone", "DE"),
        Err(Ineligible::Pinned)
    );
    assert_eq!(pinned("carbon-kube.io/grid-zone", "FR"), Ok(()));
    assert_eq!(pinned("disktype", "ssd"), Ok(()));
}
