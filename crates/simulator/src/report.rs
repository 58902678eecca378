//! The results table, as aligned text and as CSV.

use std::fmt::Write as _;

use crate::engine::Outcome;
use crate::experiment::{PolicyName, Replay};

/// One policy's line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub policy: String,
    pub co2_kg: f64,
    pub saved_pct: f64,
    /// Share of the oracle's savings achieved; `None` if the oracle saves nothing.
    pub oracle_share_pct: Option<f64>,
    /// Share of the capacity-aware schedule's savings; `None` where it was not computed.
    pub bound_share_pct: Option<f64>,
    pub deadline_misses: usize,
    pub mean_delay_hours: f64,
    pub p95_delay_hours: f64,
    pub tainted_pct: f64,
}

fn percentile(sorted: &[usize], fraction: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank: the smallest delay at least `fraction` of the jobs do not exceed.
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn row(
    policy: &str,
    outcome: &Outcome,
    baseline_grams: f64,
    oracle_grams: f64,
    step_hours: f64,
) -> Row {
    let mut delays = outcome.delays.clone();
    delays.sort_unstable();
    let saved = baseline_grams - outcome.grams;
    Row {
        policy: policy.to_string(),
        co2_kg: outcome.grams / 1000.0,
        saved_pct: 100.0 * saved / baseline_grams.max(f64::MIN_POSITIVE),
        oracle_share_pct: share(baseline_grams, outcome.grams, oracle_grams),
        bound_share_pct: None,
        deadline_misses: outcome.deadline_misses,
        mean_delay_hours: delays.iter().sum::<usize>() as f64 / delays.len().max(1) as f64
            * step_hours,
        p95_delay_hours: percentile(&delays, 0.95) as f64 * step_hours,
        tainted_pct: 100.0 * outcome.tainted_node_steps as f64 / outcome.node_steps.max(1) as f64,
    }
}

/// The table for a replay: every policy against the baseline, the oracle and
/// the capacity-aware schedule.
pub fn rows(replay: &Replay) -> Vec<Row> {
    let grams = |n| replay.outcome(n).map_or(0.0, |o| o.grams);
    let (baseline, oracle) = (grams(PolicyName::Baseline), grams(PolicyName::Oracle));
    let bound = replay.outcome(PolicyName::CapacityBound).map(|o| o.grams);
    let step_hours = replay
        .series
        .first()
        .map_or(1.0, |s| s.step_seconds as f64 / 3600.0);
    replay
        .outcomes
        .iter()
        .map(|(name, outcome)| {
            let mut r = row(name.as_str(), outcome, baseline, oracle, step_hours);
            r.bound_share_pct = bound.and_then(|b| share(baseline, outcome.grams, b));
            r
        })
        .collect()
}

/// Savings of `grams` as a percentage of the savings of `reference`, both against `baseline`.
fn share(baseline: f64, grams: f64, reference: f64) -> Option<f64> {
    let possible = baseline - reference;
    (possible > 0.0).then(|| 100.0 * (baseline - grams) / possible)
}

const COLUMNS: usize = 9;

const HEADER: [&str; COLUMNS] = [
    "policy",
    "co2_kg",
    "saved_vs_baseline_pct",
    "share_of_capacity_aware_savings_pct",
    "share_of_oracle_savings_pct",
    "deadline_misses",
    "mean_delay_h",
    "p95_delay_h",
    "time_tainted_pct",
];

fn cells(r: &Row) -> [String; COLUMNS] {
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("{s:.1}"));
    [
        r.policy.clone(),
        format!("{:.1}", r.co2_kg),
        format!("{:.2}", r.saved_pct),
        pct(r.bound_share_pct),
        pct(r.oracle_share_pct),
        r.deadline_misses.to_string(),
        format!("{:.2}", r.mean_delay_hours),
        format!("{:.1}", r.p95_delay_hours),
        format!("{:.1}", r.tainted_pct),
    ]
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = HEADER.join(",") + "\n";
    for r in rows {
        out += &(cells(r).join(",") + "\n");
    }
    out
}

/// Columns padded to their widest cell, numbers right-aligned.
pub fn text(rows: &[Row]) -> String {
    let table: Vec<[String; COLUMNS]> = std::iter::once(HEADER.map(String::from))
        .chain(rows.iter().map(cells))
        .collect();
    let widths: Vec<usize> = (0..COLUMNS)
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &table {
        for (c, cell) in line.iter().enumerate() {
            let sep = if c == 0 { "" } else { "  " };
            if c == 0 {
                let _ = write!(out, "{sep}{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "{sep}{cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(grams: f64, delays: Vec<usize>) -> Outcome {
        Outcome {
            grams,
            grams_by_home: vec![grams],
            delays,
            delay_vcpu_hours: 0.0,
            deadline_misses: 1,
            tainted_node_steps: 25,
            node_steps: 100,
            tainted: vec![],
            thresholds: vec![],
        }
    }

    #[test]
    fn savings_oracle_share_and_delays() {
        let r = row(
            "static",
            &outcome(900.0, (0..20).collect()),
            1000.0,
            800.0,
            1.0,
        );
        assert!((r.saved_pct - 10.0).abs() < 1e-9);
        assert!((r.oracle_share_pct.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(r.p95_delay_hours, 18.0);
        assert!((r.mean_delay_hours - 9.5).abs() < 1e-9);
        assert_eq!(r.tainted_pct, 25.0);
        assert_eq!(
            row("x", &outcome(1.0, vec![]), 1.0, 1.0, 1.0).oracle_share_pct,
            None
        );
    }

    #[test]
    fn text_and_csv_have_a_line_per_policy() {
        let rows = [row(
            "baseline",
            &outcome(1000.0, vec![0]),
            1000.0,
            800.0,
            1.0,
        )];
        assert_eq!(csv(&rows).lines().count(), 2);
        let text = text(&rows);
        assert!(
            text.starts_with("policy  ") && text.contains("baseline"),
            "{text}"
        );
    }
}
