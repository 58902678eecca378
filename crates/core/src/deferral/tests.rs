use super::*;
use crate::carbon::{ForecastPoint, Snapshot};

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

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A zone measured at `observed` with points `(seconds after it, g/kWh)`.
pub(super) fn status(grams: f64, observed: Timestamp, forecast: &[(i64, f64)]) -> Snapshot {
    Snapshot {
        grams_per_kwh: grams,
        source: "electricity-maps".into(),
        observed_at: Some(observed),
        forecast: forecast
            .iter()
            .map(|(s, g)| ForecastPoint {
                at: plus(observed, *s),
                grams_per_kwh: *g,
            })
            .collect(),
    }
}

const MAX_AGE: Duration = Duration::from_secs(5400);

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
    // A bare number on a pod could mean hours to whoever wrote it.
    assert!(
        parse_duration("2")
            .unwrap_err()
            .contains("a unit is needed")
    );
    assert!(
        parse_duration("1.5h")
            .unwrap_err()
            .contains("whole numbers")
    );
}

#[test]
fn a_series_is_the_measurement_then_each_point_until_the_horizon() {
    let now = plus(t0(), 60);
    let status = status(
        500.0,
        t0(),
        &[(-3600, 1.0), (3600, 300.0), (7200, 100.0), (3600, 300.0)],
    );
    let s = ZoneSeries::from_snapshot(&zone("DE"), &status, now, MAX_AGE).unwrap();
    // Points at or before the measurement are older than it and dropped; duplicates once.
    assert_eq!(
        s.points,
        vec![(plus(t0(), 3600), 300.0), (plus(t0(), 7200), 100.0)]
    );
    assert_eq!(s.spacing(), SignedDuration::from_hours(1));
    assert_eq!(s.horizon(), plus(t0(), 3 * 3600));
    assert_eq!(s.value_at(plus(t0(), 60)), Some(500.0));
    assert_eq!(s.value_at(plus(t0(), 3600)), Some(300.0));
    assert_eq!(s.value_at(plus(t0(), 2 * 3600 + 59)), Some(100.0));
    assert_eq!(s.value_at(plus(t0(), 3 * 3600)), None);
}

#[test]
fn bad_forecasts_are_refused_with_the_reason() {
    let now = plus(t0(), 60);
    let why = |status: Snapshot| {
        ZoneSeries::from_snapshot(&zone("DE"), &status, now, MAX_AGE).unwrap_err()
    };
    let nan = why(status(500.0, t0(), &[(3600, 300.0), (7200, f64::NAN)]));
    assert!(
        nan.contains("invalid point (NaN at 2025-06-01T12:00:00Z)"),
        "{nan}"
    );
    let negative = why(status(500.0, t0(), &[(3600, -1.0)]));
    assert!(negative.contains("invalid point"), "{negative}");
    let gap = why(status(
        500.0,
        t0(),
        &[(3600, 300.0), (7200, 1.0), (5 * 3600, 2.0)],
    ));
    assert!(
        gap.contains("gap from 2025-06-01T12:00:00Z to 2025-06-01T15:00:00Z"),
        "{gap}"
    );
    let late_start = why(status(500.0, t0(), &[(4 * 3600, 300.0), (5 * 3600, 1.0)]));
    assert!(
        late_start.contains("gap from 2025-06-01T10:01:00Z"),
        "{late_start}"
    );
    let stale = why(status(500.0, plus(t0(), -4 * 3600), &[(3600, 1.0)]));
    assert!(stale.contains("241 min old"), "{stale}");
    let ahead = why(status(500.0, plus(t0(), 3600), &[(3600, 1.0)]));
    assert!(ahead.contains("stale or skewed clock"), "{ahead}");
    let none = why(status(500.0, t0(), &[]));
    assert!(none.contains("no forecast"), "{none}");
    let ended = ZoneSeries::from_snapshot(
        &zone("DE"),
        &status(500.0, t0(), &[(600, 1.0), (1200, 1.0)]),
        plus(t0(), 1900),
        MAX_AGE,
    )
    .unwrap_err();
    assert!(ended.contains("ends before now"), "{ended}");
    let mut unmeasured = status(500.0, t0(), &[(3600, 1.0)]);
    unmeasured.observed_at = None;
    assert!(why(unmeasured).contains("no carbon data yet"));
    let mut bad_now = status(500.0, t0(), &[(3600, 1.0)]);
    bad_now.grams_per_kwh = f64::INFINITY;
    assert!(why(bad_now).contains("not a valid number"));
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
