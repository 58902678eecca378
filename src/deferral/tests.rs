use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::ForecastEntry;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn t0() -> Timestamp {
    at("2025-06-01T10:00:00Z")
}

fn plus(t: Timestamp, seconds: i64) -> Timestamp {
    t + SignedDuration::from_secs(seconds)
}

fn zone(z: &str) -> GridZone {
    GridZone::parse(z).unwrap()
}

/// A series measured at `t0` with `current`, then hourly points from t0 + 1 h.
fn hourly(current: f64, points: &[f64]) -> ZoneSeries {
    ZoneSeries {
        current,
        observed_at: t0(),
        points: points
            .iter()
            .enumerate()
            .map(|(k, v)| (plus(t0(), 3600 * (k as i64 + 1)), *v))
            .collect(),
    }
}

fn request(latest_start: Timestamp, duration_s: u64) -> Request {
    Request {
        latest_start,
        duration: Duration::from_secs(duration_s),
        zone: Some(zone("DE")),
    }
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_simulator_plans_with_this_very_function() {
    // `simulator::plan` re-exports the policy; both names are one item.
    let shared: fn(&Prefix, usize, usize, usize) -> (usize, f64) =
        crate::simulator::plan::cheapest_start;
    let p = crate::simulator::plan::Prefix::new(&[5.0, 1.0, 1.0, 5.0, 1.0, 1.0]);
    assert_eq!(shared(&p, 0, 10, 2), cheapest_start(&p, 0, 10, 2));
    assert_eq!(cheapest_start(&p, 0, 10, 2), (1, 2.0));
    assert_eq!(cheapest_start(&p, 2, 10, 2), (4, 2.0));
    assert_eq!(cheapest_start(&p, 0, 0, 2), (0, 6.0));
}

#[test]
fn annotations_parse_with_defaults() {
    let r = parse_request(
        &annotations(&[(LATEST_START, "2025-06-01T18:00:00Z")]),
        None,
        t0(),
    )
    .unwrap();
    assert_eq!(r.latest_start, at("2025-06-01T18:00:00Z"));
    assert_eq!(r.duration, DEFAULT_DURATION);
    assert_eq!(r.zone, None);

    let r = parse_request(
        &annotations(&[
            (LATEST_START, "2025-06-01T20:00:00+02:00"),
            (DURATION, "1h30m"),
            (ZONE, "fr"),
        ]),
        Some(zone("DE")),
        t0(),
    )
    .unwrap();
    assert_eq!(r.latest_start, at("2025-06-01T18:00:00Z"));
    assert_eq!(r.duration, Duration::from_secs(5400));
    assert_eq!(
        r.zone,
        Some(zone("FR")),
        "the annotation wins over the selector"
    );

    let r = parse_request(
        &annotations(&[(LATEST_START, "2025-06-01T18:00:00Z")]),
        Some(zone("DE")),
        t0(),
    )
    .unwrap();
    assert_eq!(r.zone, Some(zone("DE")), "else the node selector's zone");

    // A wait from creation, for pod templates; with a time too, the earlier wins.
    let delay = |pairs: &[(&str, &str)]| {
        parse_request(&annotations(pairs), None, t0())
            .unwrap()
            .latest_start
    };
    assert_eq!(delay(&[(MAX_DELAY, "6h")]), at("2025-06-01T16:00:00Z"));
    assert_eq!(
        delay(&[(MAX_DELAY, "6h"), (LATEST_START, "2025-06-01T12:00:00Z")]),
        at("2025-06-01T12:00:00Z")
    );
    assert_eq!(
        delay(&[(MAX_DELAY, "1h"), (LATEST_START, "2025-06-01T12:00:00Z")]),
        at("2025-06-01T11:00:00Z")
    );
}

#[test]
fn invalid_annotations_say_what_is_wrong() {
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[], "neither annotation"),
        (&[(MAX_DELAY, "soon")], "not a duration"),
        (&[(LATEST_START, "tomorrow")], "not an RFC 3339 time"),
        (
            &[
                (LATEST_START, "2025-06-01T18:00:00Z"),
                (DURATION, "2 hours"),
            ],
            "not a duration",
        ),
        (
            &[(LATEST_START, "2025-06-01T18:00:00Z"), (DURATION, "0s")],
            "longer than zero",
        ),
        (
            &[(LATEST_START, "2025-06-01T18:00:00Z"), (DURATION, "8d")],
            "longer than a week",
        ),
        (
            &[(LATEST_START, "2025-06-01T18:00:00Z"), (ZONE, "DE/FR")],
            "not a grid zone",
        ),
    ];
    for (pairs, needle) in cases {
        let err = parse_request(&annotations(pairs), None, t0()).unwrap_err();
        assert!(err.contains(needle), "{pairs:?}: {err}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
    assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration(" 2h "), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d2h"), Ok(Duration::from_secs(93_600)));
    for bad in ["", "h", "2", "1.5h", "-1h", "2x", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_series_is_the_measurement_then_each_point_until_the_horizon() {
    let s = hourly(500.0, &[300.0, 100.0]);
    assert_eq!(s.horizon(), plus(t0(), 3 * 3600));
    assert_eq!(s.value_at(plus(t0(), 60)), Some(500.0));
    assert_eq!(s.value_at(plus(t0(), 3600)), Some(300.0));
    assert_eq!(s.value_at(plus(t0(), 2 * 3600 + 59)), Some(100.0));
    assert_eq!(s.value_at(plus(t0(), 3 * 3600)), None);
    // Points at or before the measurement are older than it and dropped.
    let status = CarbonScoreStatus {
        intensity_grams_per_kwh: 420.0,
        observed_at: Some(Time(t0())),
        forecast: vec![
            ForecastEntry {
                at: Time(t0()),
                grams_per_kwh: 1.0,
            },
            ForecastEntry {
                at: Time(plus(t0(), 3600)),
                grams_per_kwh: 200.0,
            },
        ],
        ..Default::default()
    };
    let s = ZoneSeries::from_status(&status).unwrap();
    assert_eq!(s.points, vec![(plus(t0(), 3600), 200.0)]);
    assert_eq!(s.value_at(t0()), Some(420.0));
}

#[test]
fn holds_while_a_later_start_is_cheaper_and_releases_when_now_is() {
    let f = Forecast::zone(&zone("DE"), hourly(500.0, &[500.0, 50.0, 50.0, 400.0]));
    let r = request(plus(t0(), 4 * 3600), 3600);
    let now = plus(t0(), 600);
    match decide(now, &r, Ok(&f)) {
        Decision::Hold(plan) => {
            assert_eq!(plan.start_at, plus(t0(), 2 * 3600));
            assert_eq!((plan.now_mean, plan.best_mean), (500.0, 50.0));
            assert_eq!(plan.scope, "zone DE");
        }
        other => panic!("{other:?}"),
    }
    // Once the cheap hour has come, now is the cheapest start.
    let now = plus(t0(), 2 * 3600 + 5);
    assert!(matches!(
        decide(now, &r, Ok(&f)),
        Decision::Release(Release::Greenest { now_mean, .. }) if now_mean == 50.0
    ));
    // A flat forecast: no reason to wait (ties go to the earliest start).
    let flat = Forecast::zone(&zone("DE"), hourly(300.0, &[300.0; 6]));
    assert!(matches!(
        decide(now, &r, Ok(&flat)),
        Decision::Release(Release::Greenest { .. })
    ));
}

#[test]
fn a_window_that_straddles_a_dip_is_weighed_whole() {
    // Two-hour job: starting now costs 500 + 100; waiting one hour costs 100 + 600.
    let f = Forecast::zone(&zone("DE"), hourly(500.0, &[100.0, 600.0, 600.0]));
    let r = request(plus(t0(), 3600), 7200);
    assert!(matches!(
        decide(t0(), &r, Ok(&f)),
        Decision::Release(Release::Greenest { .. })
    ));
}

#[test]
fn never_later_than_the_latest_start() {
    // Green from 40 s after now, forever: hold until exactly then.
    let now = t0();
    let latest = plus(now, 40);
    let f = Forecast::zone(
        &zone("DE"),
        ZoneSeries {
            current: 500.0,
            observed_at: now,
            points: vec![(latest, 50.0), (plus(latest, 3600), 50.0)],
        },
    );
    let r = request(latest, 3600);
    for before in [40, 30, 1] {
        match decide(plus(latest, -before), &r, Ok(&f)) {
            Decision::Hold(plan) => assert_eq!(plan.start_at, latest, "{before}s before"),
            other => panic!("{before}s before: {other:?}"),
        }
    }
    assert!(matches!(
        decide(latest, &r, Ok(&f)),
        Decision::Release(Release::LatestStart { now_mean: Some(m) }) if m == 50.0
    ));
    // Already past, even without any forecast.
    assert!(matches!(
        decide(plus(latest, 3600), &r, Err("no data")),
        Decision::Release(Release::LatestStart { now_mean: None })
    ));
}

#[test]
fn without_a_usable_forecast_availability_wins() {
    let r = request(plus(t0(), 4 * 3600), 3600);
    assert_eq!(
        decide(t0(), &r, Err("zone DE has no forecast")),
        Decision::Release(Release::NoForecast("zone DE has no forecast".into()))
    );
    // A forecast shorter than the job: only starting now can be weighed.
    let short = Forecast::zone(&zone("DE"), hourly(500.0, &[50.0]));
    assert!(matches!(
        decide(t0(), &request(plus(t0(), 4 * 3600), 4 * 3600), Ok(&short)),
        Decision::Release(Release::Greenest { .. })
    ));
}

#[test]
fn plans_inside_the_forecast_when_the_window_outlasts_it() {
    // 24 hourly points, green at hour 20; latest start in 40 h.
    let mut points = vec![400.0; 24];
    points[19] = 20.0;
    points[20] = 20.0;
    let f = Forecast::zone(&zone("DE"), hourly(400.0, &points));
    match decide(t0(), &request(plus(t0(), 40 * 3600), 7200), Ok(&f)) {
        Decision::Hold(plan) => assert_eq!(plan.start_at, plus(t0(), 20 * 3600)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_live_plan_agrees_with_the_simulators_policy_at_hourly_resolution() {
    let truth = [
        420.0, 380.0, 150.0, 90.0, 95.0, 300.0, 500.0, 60.0, 70.0, 400.0,
    ];
    let f = Forecast::zone(&zone("DE"), hourly(truth[0], &truth[1..]));
    for (latest_hours, duration_hours) in [(6, 1), (6, 2), (8, 2), (3, 1), (0, 1), (7, 3)] {
        let (sim_start, _) = cheapest_start(&Prefix::new(&truth), 0, latest_hours, duration_hours);
        let r = request(
            plus(t0(), latest_hours as i64 * 3600),
            duration_hours as u64 * 3600,
        );
        let live = match decide(t0(), &r, Ok(&f)) {
            Decision::Hold(plan) => plan.start_at.duration_since(t0()).as_secs() / 3600,
            Decision::Release(_) => 0,
        };
        assert_eq!(
            live as usize, sim_start,
            "latest {latest_hours} h, duration {duration_hours} h"
        );
    }
}

fn status(
    grams: f64,
    nodes: u32,
    observed: Timestamp,
    forecast: &[(i64, f64)],
) -> CarbonScoreStatus {
    CarbonScoreStatus {
        intensity_grams_per_kwh: grams,
        source: "electricity-maps".into(),
        observed_at: Some(Time(observed)),
        forecast: forecast
            .iter()
            .map(|(s, g)| ForecastEntry {
                at: Time(plus(observed, *s)),
                grams_per_kwh: *g,
            })
            .collect(),
        nodes,
        ..Default::default()
    }
}

#[test]
fn the_forecast_is_the_zones_or_the_clusters_node_weighted_mean() {
    let now = plus(t0(), 60);
    let max_age = Duration::from_secs(5400);
    let scores = vec![
        (zone("DE"), status(400.0, 1, t0(), &[(3600, 100.0)])),
        (zone("FR"), status(100.0, 2, t0(), &[(3600, 40.0)])),
        (zone("PL"), status(700.0, 0, t0(), &[(3600, 700.0)])),
        (zone("ES"), status(200.0, 3, t0(), &[])),
        (
            zone("NL"),
            status(300.0, 3, plus(t0(), -4 * 3600), &[(3600, 1.0)]),
        ),
    ];
    let de = forecast_for(Some(&zone("DE")), &scores, now, max_age).unwrap();
    assert_eq!(de.value_at(now), Some(400.0));
    let cluster = forecast_for(None, &scores, now, max_age).unwrap();
    // DE and FR only: PL has no nodes, ES no forecast, NL stale data.
    assert_eq!(cluster.scope, "the cluster (DE, FR)");
    assert_eq!(cluster.value_at(now), Some((400.0 + 2.0 * 100.0) / 3.0));
    assert_eq!(
        cluster.value_at(plus(t0(), 3600)),
        Some((100.0 + 2.0 * 40.0) / 3.0)
    );

    let why = |z: &str| forecast_for(Some(&zone(z)), &scores, now, max_age).unwrap_err();
    assert!(why("ES").contains("no forecast"), "{}", why("ES"));
    assert!(why("NL").contains("241 min old"), "{}", why("NL"));
    assert!(why("IT").contains("no CarbonScore"), "{}", why("IT"));
    let none = forecast_for(None, &scores[3..], now, max_age).unwrap_err();
    assert!(
        none.starts_with("no zone with nodes has a fresh forecast"),
        "{none}"
    );
}

#[test]
fn grams_use_the_simulators_marginal_power_model() {
    let c = crate::power::PowerCoefficients {
        min_watts_per_vcpu: 1.0,
        max_watts_per_vcpu: 4.0,
        memory_watts_per_gb: 0.4,
        pue: 1.5,
    };
    // (4 − 1) W × 1.5 = 4.5 W per busy vCPU; 2 vCPUs for 2 h at 100 g/kWh = 1.8 g.
    let grams = estimated_grams(&c, 2.0, Duration::from_secs(7200), 100.0);
    assert!((grams - 1.8).abs() < 1e-9, "{grams}");
}

#[test]
fn cpu_requests_in_vcpus() {
    assert_eq!(parse_cpu("500m"), Some(0.5));
    assert_eq!(parse_cpu("2"), Some(2.0));
    assert_eq!(parse_cpu("1.5"), Some(1.5));
    assert_eq!(parse_cpu("lots"), None);
    let container = |cpu: Option<&str>| Container {
        name: "c".into(),
        resources: cpu.map(|cpu| ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = |containers| Pod {
        spec: Some(PodSpec {
            containers,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        requested_vcpus(&pod(vec![container(Some("250m")), container(Some("2"))])),
        2.25
    );
    assert_eq!(requested_vcpus(&pod(vec![container(None)])), 1.0);
}
