//! The simulator against published numbers (Let's Wait Awhile, Middleware '21)
//! and on the shipped traces.

use std::path::{Path, PathBuf};

use carbon_kube_sim::experiment::{ClusterConfig, PolicyName, hourly_year, replay};
use carbon_kube_sim::paper::any_year;
use carbon_kube_sim::paper::ml::DeadlineRule;
use carbon_kube_sim::paper::targets::{self, TOLERANCE_PP, Target};
use carbon_kube_sim::paper::{self, window_label};
use carbon_kube_sim::trace::{self, Series};
use carbon_kube_sim::workload::WorkloadParams;

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/data")
        .join(path)
}

fn series(zone: &str) -> Series {
    let trace = trace::load(&data(&format!("lets-wait-awhile_2020/{zone}.csv"))).unwrap();
    paper::paper_series(&trace).unwrap()
}

/// The reproduction row of the targets file (four decimals) for a setting.
fn target(zone: &str, scenario: &str, setting: &str, error: f64, mode: &str) -> Target {
    targets::load(&data("lets_wait_awhile_targets.csv"))
        .unwrap()
        .into_iter()
        .find(|t| {
            t.zone == zone
                && t.scenario == scenario
                && t.window_or_deadline == setting
                && (t.error - error).abs() < 1e-9
                && t.mode == mode
                && t.source == "independent_reproduction"
        })
        .unwrap_or_else(|| panic!("no target for {zone} {scenario} {setting} {error} {mode}"))
}

fn assert_close(what: &str, ours: f64, target: &Target) {
    let diff = ours - target.savings_pct;
    assert!(
        diff.abs() <= TOLERANCE_PP,
        "{what}: ours {ours:.4} %, paper {:.4} % ({})",
        target.savings_pct,
        target.source
    );
    // The no-error rows are deterministic: they match to the printed four decimals.
    if target.error == 0.0 {
        assert!(
            diff.abs() < 1e-4,
            "{what}: ours {ours:.6} vs {:.4}",
            target.savings_pct
        );
    }
}

#[test]
fn scenario_one_nightly_job_matches_the_paper() {
    for zone in ["DE", "GB", "FR"] {
        let s = series(zone);
        for (window, error) in [(16, 0.0), (4, 0.0), (1, 0.0), (8, 0.05)] {
            let at_nominal = paper::nightly_mean_ci(&s, 0, error);
            let ours = (1.0 - paper::nightly_mean_ci(&s, window, error) / at_nominal) * 100.0;
            let t = target(zone, "I", &window_label(window), error, "");
            assert_close(
                &format!("{zone} nightly {} error {error}", window_label(window)),
                ours,
                &t,
            );
        }
    }
}

#[test]
fn scenario_two_ml_jobs_match_the_paper() {
    for zone in ["DE", "GB", "FR"] {
        let s = series(zone);
        let jobs = paper::ml_jobs(&s).unwrap();
        let cases = [
            (DeadlineRule::NextWorkday, false, 0.0),
            (DeadlineRule::NextWorkday, true, 0.0),
            (DeadlineRule::SemiWeekly, false, 0.0),
            (DeadlineRule::SemiWeekly, true, 0.0),
            (DeadlineRule::NextWorkday, true, 0.05),
        ];
        for (rule, interrupting, error) in cases {
            let mode = if interrupting {
                "interrupting"
            } else {
                "non_interrupting"
            };
            let ours = paper::ml_savings_pct(&s, &jobs, rule, interrupting, error);
            let t = target(zone, "II", rule.name(), error, mode);
            assert_close(
                &format!("{zone} {} {mode} error {error}", rule.name()),
                ours,
                &t,
            );
        }
    }
}

#[test]
fn the_policies_keep_their_order_on_a_shipped_year() {
    let traces = trace::load_dir(&data("eia930-sustaindc_2022")).unwrap();
    let series = hourly_year(&traces, 2022).unwrap();
    assert_eq!(series.len(), 8);
    let config = ClusterConfig {
        nodes: 16,
        workload: WorkloadParams {
            jobs: 20_000,
            ..WorkloadParams::default()
        },
        ..ClusterConfig::default()
    };
    let r = replay(&config, series, &[]).unwrap();
    let grams = |p| r.outcome(p).unwrap().grams;
    for p in PolicyName::ALL {
        assert!(
            grams(PolicyName::Oracle) <= grams(p) + 1e-6,
            "{} below the oracle",
            p.as_str()
        );
    }
    assert!(grams(PolicyName::Relative) < grams(PolicyName::Baseline));
    // The capacity-aware schedule: above the oracle (which ignores capacity), below every
    // online policy, and below time shifting alone.
    let online = PolicyName::ALL
        .into_iter()
        .take_while(|&p| p != PolicyName::CapacityBound);
    for p in online {
        assert!(
            grams(PolicyName::CapacityBound) < grams(p),
            "{} below the capacity-aware schedule",
            p.as_str()
        );
    }
    assert!(grams(PolicyName::Oracle) < grams(PolicyName::CapacityBound));
    assert!(grams(PolicyName::Static) < grams(PolicyName::Baseline));
    assert!(grams(PolicyName::Deferral) < grams(PolicyName::Baseline));
    let base = r.outcome(PolicyName::Baseline).unwrap();
    assert_eq!(base.tainted_node_steps, 0);
    assert!(r.outcome(PolicyName::Static).unwrap().tainted_node_steps > 0);
    assert!(r.outcome(PolicyName::Relative).unwrap().tainted_node_steps > 0);
}

#[test]
fn the_nightly_table_runs_on_another_year_with_the_lead_in() {
    let traces = trace::load_dir(&data("electricitymaps")).unwrap();
    // BR, ES, NO and US-CAL-CISO have 2021, so 2022's first night has its lead-in.
    let with_2021: Vec<_> = traces
        .iter()
        .filter(|t| ["BR", "ES", "NO", "US-CAL-CISO"].contains(&t.zone.to_string().as_str()))
        .cloned()
        .collect();
    assert_eq!(with_2021.len(), 4);
    let rows = any_year::table(&with_2021, 2022, 8).unwrap();
    assert_eq!(rows.len(), 4 * 9 * any_year::models().len());
    for zone in ["BR", "ES", "NO", "US-CAL-CISO"] {
        let perfect: Vec<f64> = rows
            .iter()
            .filter(|r| r.zone == zone && r.model == "none")
            .map(|r| r.savings_pct)
            .collect();
        // A wider window contains the narrower one: with a perfect forecast it never saves less.
        assert_eq!(perfect[0], 0.0);
        assert!(
            perfect.windows(2).all(|w| w[1] >= w[0]),
            "{zone}: {perfect:?}"
        );
        assert!(perfect[8] > 1.0, "{zone}: ±8 h saves only {} %", perfect[8]);
        // A forecast error can only lose part of what the perfect forecast finds.
        for model in ["iid_0.05", "ar1"] {
            let at_8 = rows
                .iter()
                .find(|r| r.zone == zone && r.model == model && r.window_hours == 8)
                .unwrap();
            assert!(at_8.savings_pct <= perfect[8] + 1e-9, "{zone} {model}");
        }
    }
    let text = any_year::text(&rows);
    assert!(
        text.lines().count() == 10 && text.contains("+-8h"),
        "{text}"
    );
    // DE's trace starts on 2022-01-01: no lead-in for the first night.
    let de: Vec<_> = traces
        .into_iter()
        .filter(|t| t.zone.to_string() == "DE")
        .collect();
    let err = any_year::table(&de, 2022, 8).unwrap_err().to_string();
    assert!(
        err.contains("zone DE") && err.contains("lead-in") && err.contains("2021"),
        "{err}"
    );
}
