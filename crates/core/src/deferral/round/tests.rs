use super::*;
use crate::deferral::tests::status;

fn t0() -> Timestamp {
    "2025-06-02T10:00:00Z".parse().unwrap()
}

fn plus(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn zone(z: &str) -> GridZone {
    GridZone::parse(z).unwrap()
}

const MAX_AGE: Duration = Duration::from_secs(5400);

/// A zone with 4 vCPUs, nothing running, measured at `t0` with `current`
/// then points every `spacing` seconds.
fn state(name: &str, current: f64, spacing: i64, points: &[f64]) -> ZoneState {
    let forecast: Vec<(i64, f64)> = points
        .iter()
        .enumerate()
        .map(|(k, v)| ((k as i64 + 1) * spacing, *v))
        .collect();
    ZoneState {
        zone: zone(name),
        allocatable: 4.0,
        requested: 0.0,
        deferred: Vec::new(),
        forecast: ZoneSeries::from_snapshot(
            &zone(name),
            &status(current, t0(), &forecast),
            t0(),
            MAX_AGE,
        ),
    }
}

fn ask(latest_s: i64, duration_s: u64, zone_name: Option<&str>, vcpus: f64) -> Ask {
    Ask {
        request: Request {
            latest_start: plus(latest_s),
            duration: Duration::from_secs(duration_s),
            zone: zone_name.map(zone),
        },
        vcpus,
    }
}

fn settings(headroom: f64) -> RoundSettings {
    RoundSettings {
        planner: PlannerParams {
            headroom,
            margin: Duration::ZERO,
            k_sigma: 1.0,
        },
        forecast_error: 0.05,
    }
}

fn round(zones: &[ZoneState], asks: &[Ask], headroom: f64) -> Round {
    let mut rigid = RigidLoad::new(zones.len(), 4);
    plan_round(
        &settings(headroom),
        t0(),
        zones,
        asks,
        &mut rigid,
        Duration::ZERO,
    )
}

/// As [`round`], trusting the forecast: any gain is worth a wait.
fn exact_round(zones: &[ZoneState], asks: &[Ask]) -> Round {
    let mut rigid = RigidLoad::new(zones.len(), 4);
    let exact = RoundSettings {
        forecast_error: 0.0,
        ..settings(0.0)
    };
    plan_round(&exact, t0(), zones, asks, &mut rigid, Duration::ZERO)
}

#[test]
fn twenty_pods_fill_the_green_slots_up_to_capacity_by_deadline() {
    // 10-second slots: green (100) for one slot, then 150, 200, 250; 4 vCPUs × (1 − 0.25) = 3
    // for deferred work, i.e. six half-vCPU pods per slot.
    let zones = [state(
        "DE",
        500.0,
        10,
        &[100.0, 150.0, 200.0, 250.0, 300.0, 300.0],
    )];
    let asks: Vec<Ask> = (0..20)
        .map(|i| ask(45 + 10 * (i % 3), 10, Some("DE"), 0.5))
        .collect();
    let r = round(&zones, &asks, 0.25);
    assert_eq!(r.step, Duration::from_secs(10));
    let mut per_start = std::collections::BTreeMap::new();
    for (a, d) in asks.iter().zip(&r.decisions) {
        match d {
            Decision::Hold { start_at, .. } => per_start
                .entry(*start_at)
                .or_insert_with(Vec::new)
                .push(a.request.latest_start),
            other => panic!("expected a hold, got {other:?}"),
        }
    }
    let counts: Vec<usize> = per_start.values().map(Vec::len).collect();
    assert_eq!(counts, [6, 6, 6, 2]);
    assert_eq!(per_start.keys().next(), Some(&plus(10)));
    // Earliest deadline first: every pod of an earlier slot has a deadline no later than any
    // pod of a later slot.
    let groups: Vec<&Vec<Timestamp>> = per_start.values().collect();
    for pair in groups.windows(2) {
        let latest_early = pair[0].iter().max().unwrap();
        let earliest_late = pair[1].iter().min().unwrap();
        assert!(latest_early <= earliest_late, "{per_start:?}");
    }
    assert_eq!(r.booked[0].peak_vcpus, 3.0);
    assert!(r.release_order.is_empty());
}

#[test]
fn a_bad_forecast_releases_at_once_with_the_reason() {
    let mut gap = state("DE", 500.0, 3600, &[100.0, 100.0]);
    gap.forecast = ZoneSeries::from_snapshot(
        &zone("DE"),
        &status(
            500.0,
            t0(),
            &[(3600, 100.0), (7200, 100.0), (5 * 3600, 50.0)],
        ),
        t0(),
        MAX_AGE,
    );
    let mut nan = state("FR", 500.0, 3600, &[100.0]);
    nan.forecast = ZoneSeries::from_snapshot(
        &zone("FR"),
        &status(500.0, t0(), &[(3600, f64::NAN)]),
        t0(),
        MAX_AGE,
    );
    let zones = [gap, nan];
    let asks = [
        ask(6 * 3600, 3600, Some("DE"), 1.0),
        ask(6 * 3600, 3600, Some("FR"), 1.0),
        ask(6 * 3600, 3600, None, 1.0),
        ask(6 * 3600, 3600, Some("PL"), 1.0),
    ];
    let r = round(&zones, &asks, 0.0);
    let why: Vec<String> = r
        .decisions
        .iter()
        .map(|d| match d {
            Decision::NoForecast(why) => why.clone(),
            other => panic!("expected a release, got {other:?}"),
        })
        .collect();
    assert!(why[0].contains("gap"), "{}", why[0]);
    assert!(why[1].contains("NaN"), "{}", why[1]);
    assert!(
        why[2].starts_with("no zone with nodes has a usable forecast")
            && why[2].contains("gap")
            && why[2].contains("NaN"),
        "{}",
        why[2]
    );
    assert!(why[3].contains("no CarbonScore for zone PL"), "{}", why[3]);
    assert_eq!(r.release_order, [0, 1, 2, 3]);
}

#[test]
fn unpinned_pods_use_any_zone_with_a_good_forecast_and_pinned_ones_their_own() {
    let de = state("DE", 500.0, 3600, &[500.0, 500.0, 500.0]);
    let fr = state("FR", 300.0, 3600, &[50.0, 50.0, 300.0]);
    let mut pl = state("PL", 700.0, 3600, &[700.0]);
    pl.forecast = Err("zone PL has no forecast".into());
    let asks = [
        ask(3 * 3600, 3600, None, 1.0),
        ask(3 * 3600, 3600, Some("DE"), 1.0),
    ];
    let r = round(&[de, fr, pl], &asks, 0.0);
    assert_eq!(
        r.decisions[0],
        Decision::Hold {
            start_at: plus(3600),
            zone: zone("FR"),
            now_mean: 300.0,
            planned_mean: 50.0,
        }
    );
    // Flat in DE: nothing to wait for.
    assert!(matches!(
        &r.decisions[1],
        Decision::Release {
            reason: ReleaseReason::Greenest,
            zone: Some(z),
            ..
        } if *z == zone("DE")
    ));
    assert_eq!(r.release_order, [1]);
    assert_eq!(r.step, MAX_STEP);
}

#[test]
fn never_held_past_the_latest_start() {
    // Green from the hour on: the pod waits for the hour or as long as it may, and goes when
    // less than a slot is left.
    let zones = [state("DE", 500.0, 3600, &[10.0, 10.0])];
    for latest in [0, 30, 59, 60, 61, 3599, 3600, 5000] {
        let r = exact_round(&zones, &[ask(latest, 3600, Some("DE"), 1.0)]);
        match &r.decisions[0] {
            Decision::Hold { start_at, .. } => {
                assert!(*start_at <= plus(latest), "latest {latest}: {start_at}");
                assert_eq!(
                    *start_at,
                    plus((latest / 60 * 60).min(3600)),
                    "latest {latest}"
                );
                assert!(latest >= 60, "held with less than a slot left: {latest}");
            }
            Decision::Release { reason, .. } => {
                assert_eq!(*reason, ReleaseReason::Deadline);
                assert!(latest < 60, "released early: {latest}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A latest start that has passed is a release.
    let r = round(&zones, &[ask(-10, 3600, Some("DE"), 1.0)], 0.0);
    assert!(matches!(
        r.decisions[0],
        Decision::Release {
            reason: ReleaseReason::Deadline,
            ..
        }
    ));
}

#[test]
fn free_cpu_counts_requests_and_deferred_pods_running() {
    // 4 allocatable, 3 requested of which 2 by a deferred pod ending in 2 min: 1 rigid.
    let mut de = state("DE", 500.0, 3600, &[10.0, 10.0]);
    de.requested = 3.0;
    de.deferred = vec![(plus(120), 2.0)];
    let mut rigid = RigidLoad::new(1, 4);
    let r = plan_round(
        &settings(0.5),
        t0(),
        &[de],
        &[ask(3 * 3600, 3600, Some("DE"), 1.5)],
        &mut rigid,
        Duration::ZERO,
    );
    // (4 − 1) × 0.5 − 2 < 0 now; 1.5 from the third minute on: booked at the green hour.
    assert!(matches!(r.decisions[0], Decision::Hold { start_at, .. } if start_at == plus(3600)));
    assert_eq!(r.booked[0].room_now_vcpus, 0.0);
    assert_eq!(r.booked[0].peak_vcpus, 1.5);
    assert_eq!(rigid.expected(0, hour_of_week(t0())), Some(1.0));
}
