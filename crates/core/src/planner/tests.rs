use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn params(headroom: f64, margin_hours: u64, k_sigma: f64) -> PlannerParams {
    PlannerParams {
        headroom,
        margin: HOUR * margin_hours as u32,
        k_sigma,
    }
}

fn capacity(allocatable: f64, rigid: f64) -> ZoneCapacity {
    ZoneCapacity {
        allocatable,
        rigid: vec![rigid],
        deferred_running: Vec::new(),
    }
}

fn pod(vcpus: f64, duration: usize, latest_start: usize, zones: &[usize]) -> Waiting {
    Waiting {
        vcpus,
        duration,
        latest_start,
        zones: zones.to_vec(),
    }
}

fn forecast<'a>(values: &'a [f64], sigma: &'a [f64]) -> ZoneForecast<'a> {
    ZoneForecast {
        grams_per_kwh: values,
        sigma,
    }
}

fn hold_at(step: &Step) -> Option<(usize, usize)> {
    match step {
        Step::Hold { zone, start, .. } => Some((*zone, *start)),
        Step::Release { .. } => None,
    }
}

#[test]
fn a_pod_is_booked_at_the_cheapest_window_and_released_when_it_comes() {
    let values = [400.0, 300.0, 100.0, 100.0, 300.0, 300.0];
    let p = params(0.0, 1, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 6);
    let f = [forecast(&values, &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 2, 5, &[0])]);
    assert_eq!(hold_at(&steps[0]), Some((0, 2)));
    assert_eq!(ledger.booked(0), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    match steps[0] {
        Step::Hold {
            now_mean,
            planned_mean,
            ..
        } => assert_eq!((now_mean, planned_mean), (350.0, 100.0)),
        _ => unreachable!(),
    }
    // Two slots later the same window is now.
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 4);
    let f = [forecast(&values[2..], &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 2, 3, &[0])]);
    assert_eq!(
        steps[0],
        Step::Release {
            zone: Some(0),
            reason: ReleaseReason::Greenest,
            now_mean: Some(100.0)
        }
    );
    assert_eq!(ledger.booked(0), [1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn capacity_spreads_pods_over_the_cheapest_hours_earliest_deadline_first() {
    // One green hour that fits two 1-vCPU pods; the next cheapest hour takes the rest.
    let values = [500.0, 100.0, 200.0, 300.0, 400.0, 400.0];
    let p = params(0.0, 1, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(2.0, 0.0)], 6);
    let f = [forecast(&values, &[0.0])];
    // Listed latest deadline first: the order must not matter, deadlines must.
    let waiting = [
        pod(1.0, 1, 5, &[0]),
        pod(1.0, 1, 4, &[0]),
        pod(1.0, 1, 3, &[0]),
        pod(1.0, 1, 2, &[0]),
    ];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &waiting);
    let starts: Vec<_> = steps.iter().map(|s| hold_at(s).map(|h| h.1)).collect();
    // The two earliest deadlines get the green hour, the others the next one.
    assert_eq!(starts, [Some(2), Some(2), Some(1), Some(1)]);
    assert_eq!(ledger.booked(0), [0.0, 2.0, 2.0, 0.0, 0.0, 0.0]);
    assert!(ledger.room(0).iter().all(|r| *r >= 0.0));
    assert_eq!(release_order(&waiting), [3, 2, 1, 0]);
}

#[test]
fn headroom_and_rigid_load_shrink_the_room() {
    let p = params(0.5, 0, 0.0);
    // 10 allocatable, 4 expected busy with other work: (10 − 4) × 0.5 = 3; 1 already running.
    let zone = ZoneCapacity {
        allocatable: 10.0,
        rigid: vec![4.0, 4.0, 8.0],
        deferred_running: vec![1.0, 0.0],
    };
    let ledger = Ledger::new(&p, &[zone], 4);
    assert_eq!(ledger.room(0), [2.0, 3.0, 1.0, 1.0]);
}

#[test]
fn pods_use_the_cheapest_zone_they_may_run_in() {
    let dirty = [400.0; 4];
    let clean = [500.0, 100.0, 100.0, 100.0];
    let p = params(0.0, 1, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0), capacity(4.0, 0.0)], 4);
    let f = [forecast(&dirty, &[0.0]), forecast(&clean, &[0.0])];
    let steps = plan(
        &p,
        HOUR,
        0.0,
        &f,
        &mut ledger,
        &[pod(2.0, 1, 3, &[0, 1]), pod(2.0, 1, 3, &[0])],
    );
    assert_eq!(hold_at(&steps[0]), Some((1, 1)));
    // The pinned pod has no cheaper start in its zone: it goes now.
    assert!(matches!(
        steps[1],
        Step::Release {
            zone: Some(0),
            reason: ReleaseReason::Greenest,
            ..
        }
    ));
}

#[test]
fn the_last_margin_of_a_window_is_never_booked() {
    // Cheapest at slot 4, but the latest start is 5 and the margin 2 hours: slot 3 is the last.
    let values = [500.0, 450.0, 400.0, 300.0, 100.0, 100.0];
    let p = params(0.0, 2, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 6);
    let f = [forecast(&values, &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 1, 5, &[0])]);
    assert_eq!(hold_at(&steps[0]), Some((0, 3)));
    // A margin in minutes rounds up to a whole slot, never down.
    let p = PlannerParams {
        margin: Duration::from_secs(90 * 60),
        ..p
    };
    assert_eq!(p.margin_slots(HOUR), 2);
}

#[test]
fn slack_below_margin_plus_expected_wait_releases_at_once() {
    let values = [500.0, 100.0, 100.0, 100.0, 100.0];
    let p = params(0.0, 2, 0.0);
    let f = [forecast(&values, &[0.0])];
    let steps_with = |wait: f64| {
        let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 5);
        plan(&p, HOUR, wait, &f, &mut ledger, &[pod(1.0, 1, 4, &[0])])
    };
    assert_eq!(hold_at(&steps_with(0.0)[0]), Some((0, 1)));
    assert_eq!(hold_at(&steps_with(1.0)[0]), Some((0, 1)));
    assert!(matches!(
        steps_with(2.5)[0],
        Step::Release {
            reason: ReleaseReason::Deadline,
            ..
        }
    ));
    // A latest start that has come is always a release, whatever the margin.
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 5);
    let zero = params(0.0, 0, 0.0);
    let steps = plan(&zero, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 1, 0, &[0])]);
    assert!(matches!(
        steps[0],
        Step::Release {
            reason: ReleaseReason::Deadline,
            ..
        }
    ));
}

#[test]
fn a_gain_within_the_forecast_error_is_not_worth_waiting_for() {
    let values = [300.0, 280.0, 280.0];
    let f = [forecast(&values, &[0.0, 15.0, 30.0])];
    let run = |k: f64| {
        let p = params(0.0, 0, k);
        let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 3);
        plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 1, 2, &[0])])[0]
    };
    // Gain 20 g: more than 1σ at one hour (15), less than 2σ (30).
    assert_eq!(hold_at(&run(1.0)), Some((0, 1)));
    assert!(matches!(
        run(2.0),
        Step::Release {
            reason: ReleaseReason::GainWithinError,
            ..
        }
    ));
}

#[test]
fn with_no_room_anywhere_the_pod_goes_now_rather_than_risk_its_deadline() {
    let values = [500.0, 100.0, 100.0];
    let p = params(0.0, 0, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(1.0, 0.0)], 3);
    let f = [forecast(&values, &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(2.0, 1, 2, &[0])]);
    assert_eq!(
        steps[0],
        Step::Release {
            zone: None,
            reason: ReleaseReason::NoRoom,
            now_mean: Some(500.0)
        }
    );
    assert_eq!(ledger.booked(0), [0.0; 3]);
}

#[test]
fn a_full_now_does_not_stop_a_hold_for_a_later_window_with_room() {
    // Now is cheapest but full; the pod waits for the first slot with room.
    let values = [100.0, 200.0, 300.0];
    let zone = ZoneCapacity {
        allocatable: 2.0,
        rigid: vec![2.0, 0.0],
        deferred_running: Vec::new(),
    };
    let p = params(0.0, 0, 0.0);
    let mut ledger = Ledger::new(&p, &[zone], 3);
    let f = [forecast(&values, &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 1, 2, &[0])]);
    assert_eq!(hold_at(&steps[0]), Some((0, 1)));
}

#[test]
fn windows_stay_inside_the_forecast() {
    // The cheap point is the forecast's last: a 2-slot run cannot start there.
    let values = [300.0, 200.0, 250.0, 10.0];
    let p = params(0.0, 0, 0.0);
    let mut ledger = Ledger::new(&p, &[capacity(4.0, 0.0)], 8);
    let f = [forecast(&values, &[0.0])];
    let steps = plan(&p, HOUR, 0.0, &f, &mut ledger, &[pod(1.0, 2, 6, &[0])]);
    assert_eq!(hold_at(&steps[0]), Some((0, 2)));
}

#[test]
fn rigid_load_is_learned_per_hour_of_week() {
    let mut load = RigidLoad::new(2, 2);
    assert_eq!(load.expected(0, 10), None);
    load.observe(0, 10, 4.0);
    load.observe(0, 10 + 168, 8.0);
    assert_eq!(load.expected(0, 10), Some(6.0));
    // A memory of two: older weeks fade.
    load.observe(0, 10, 8.0);
    assert_eq!(load.expected(0, 10), Some(7.0));
    load.observe(0, 10, f64::NAN);
    assert_eq!(load.expected(0, 10), Some(7.0));
    assert_eq!(load.expected(1, 10), None);
    let monday: Timestamp = "2024-01-01T10:30:00Z".parse().unwrap();
    assert_eq!(hour_of_week(monday), 10);
    let sunday: Timestamp = "2024-01-07T23:00:00Z".parse().unwrap();
    assert_eq!(hour_of_week(sunday), 167);
}

#[test]
fn parameters_are_validated_and_the_wait_is_a_running_mean() {
    assert!(PlannerParams::default().validate().is_ok());
    let bad = PlannerParams {
        headroom: 1.0,
        ..PlannerParams::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "deferral-headroom");
    let bad = PlannerParams {
        k_sigma: f64::NAN,
        ..PlannerParams::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "deferral-k-sigma");
    let mut wait = ExpectedWait::default();
    wait.observe(2.0);
    wait.observe(4.0);
    assert_eq!(wait.get(), 3.0);
    assert_eq!(slots(Duration::from_secs(7200), HOUR), 2);
    assert_eq!(slots(Duration::from_secs(7201), HOUR), 3);
    assert_eq!(slots(Duration::ZERO, HOUR), 0);
}
