//! Let's Wait Awhile (Wiesner et al., "Let's Wait Awhile: How Temporal
//! Workload Shifting Can Reduce Carbon Emissions in the Cloud", Middleware '21,
//! doi:10.1145/3464298.3493399), both scenarios, on the authors' DE/GB/FR 2020
//! series, as `benches/data/README.md` and PAPER_RESULTS.md define them.
//!
//! The setting is the paper's, not the agent's: one node, every job draws one
//! unit of power, 30-minute slots, emissions `Σ CI_true × active jobs`.

pub mod any_year;
pub mod ml;
pub mod nightly;
pub mod targets;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::SimError;
use super::forecast::noisy;
use super::trace::{Series, Trace};
use ml::{Calendar, DeadlineRule, MlJob};

pub const SLOTS_PER_DAY: usize = 48;
const SLOT_SECONDS: i64 = 1800;
/// The paper averages noisy runs over `default_rng(0..10)`.
pub const NOISE_SEEDS: u64 = 10;
/// The nightly job's windows: ±0 … ±8 h in half hours.
pub const NIGHTLY_WINDOWS: usize = 17;
pub const NIGHTLY_ERRORS: [f64; 2] = [0.0, 0.05];
pub const ML_ERRORS: [f64; 3] = [0.0, 0.05, 0.1];
pub const ML_RULES: [DeadlineRule; 2] = [DeadlineRule::NextWorkday, DeadlineRule::SemiWeekly];

/// One reproduced number, keyed like a row of `lets_wait_awhile_targets.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperRow {
    pub scenario: &'static str,
    pub zone: String,
    pub window_or_deadline: String,
    pub error: f64,
    /// `non_interrupting`, `interrupting`, or empty for Scenario I.
    pub mode: &'static str,
    pub mean_ci: Option<f64>,
    pub savings_pct: f64,
}

/// One zone's 2020 series as the original loads it: from 2020-01-01 00:00,
/// only timestamps on the half hour, to the end of the file.
pub fn paper_series(trace: &Trace) -> Result<Series, SimError> {
    let start: Timestamp = "2020-01-01T00:00:00Z"
        .parse()
        .map_err(|e| SimError::Invalid(format!("paper start: {e}")))?;
    trace.exact_grid(start, SLOT_SECONDS)
}

fn calendar(series: &Series) -> Calendar {
    let date = series.start.to_zoned(TimeZone::UTC).date();
    Calendar {
        first_weekday: date.weekday().to_monday_zero_offset() as usize,
        days: date.days_in_year() as usize,
    }
}

/// Index of the first smallest value (numpy's `argmin`).
pub fn first_min_index(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v < values[best] {
            best = i;
        }
    }
    best
}

fn seeds(error: f64) -> std::ops::Range<u64> {
    if error == 0.0 { 0..1 } else { 0..NOISE_SEEDS }
}

/// Scenario I for one window: mean CI of the used slots, averaged over the noise seeds.
pub fn nightly_mean_ci(series: &Series, window_slots: usize, error: f64) -> f64 {
    let truth = &series.grams_per_kwh;
    let runs = seeds(error);
    let n = runs.end - runs.start;
    runs.map(|seed| nightly::mean_ci_of_used_slots(truth, &noisy(truth, error, seed), window_slots))
        .sum::<f64>()
        / n as f64
}

/// Scenario II for one rule and mode: % emissions saved against the baseline.
pub fn ml_savings_pct(
    series: &Series,
    jobs: &[MlJob],
    rule: DeadlineRule,
    interrupting: bool,
    error: f64,
) -> f64 {
    let truth = &series.grams_per_kwh;
    let cal = calendar(series);
    let emissions = |active: &[f64]| truth.iter().zip(active).map(|(ci, a)| ci * a).sum::<f64>();
    let baseline = emissions(&ml::activity(jobs, truth, cal, DeadlineRule::None, false));
    let runs = seeds(error);
    let n = (runs.end - runs.start) as f64;
    let mut mean_active = vec![0.0; truth.len()];
    for seed in runs {
        let active = ml::activity(jobs, &noisy(truth, error, seed), cal, rule, interrupting);
        mean_active
            .iter_mut()
            .zip(active)
            .for_each(|(m, a)| *m += a);
    }
    mean_active.iter_mut().for_each(|m| *m /= n);
    (1.0 - emissions(&mean_active) / baseline) * 100.0
}

pub fn ml_jobs(series: &Series) -> Result<Vec<MlJob>, SimError> {
    ml::jobs(calendar(series))
}

pub fn window_label(window_slots: usize) -> String {
    if window_slots % 2 == 0 {
        format!("+-{}h", window_slots / 2)
    } else {
        format!("+-{}.5h", window_slots / 2)
    }
}

/// Every row of both scenarios for one zone.
pub fn reproduce_zone(series: &Series) -> Result<Vec<PaperRow>, SimError> {
    let zone = series.zone.to_string();
    let mut rows = Vec::new();
    for error in NIGHTLY_ERRORS {
        let at_nominal = nightly_mean_ci(series, 0, error);
        for window in 0..NIGHTLY_WINDOWS {
            let mean_ci = nightly_mean_ci(series, window, error);
            rows.push(PaperRow {
                scenario: "I",
                zone: zone.clone(),
                window_or_deadline: window_label(window),
                error,
                mode: "",
                mean_ci: Some(mean_ci),
                savings_pct: (1.0 - mean_ci / at_nominal) * 100.0,
            });
        }
    }
    let jobs = ml_jobs(series)?;
    for rule in ML_RULES {
        for error in ML_ERRORS {
            for interrupting in [false, true] {
                rows.push(PaperRow {
                    scenario: "II",
                    zone: zone.clone(),
                    window_or_deadline: rule.name().to_string(),
                    error,
                    mode: if interrupting {
                        "interrupting"
                    } else {
                        "non_interrupting"
                    },
                    mean_ci: None,
                    savings_pct: ml_savings_pct(series, &jobs, rule, interrupting, error),
                });
            }
        }
    }
    Ok(rows)
}

/// Both scenarios for every zone, one thread per zone.
pub fn reproduce(series: &[Series]) -> Result<Vec<PaperRow>, SimError> {
    let results: Vec<Result<Vec<PaperRow>, SimError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = series
            .iter()
            .map(|s| scope.spawn(move || reproduce_zone(s)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SimError::Invalid("a reproduction thread panicked".into()))
                })
            })
            .collect()
    });
    let mut rows = Vec::new();
    for result in results {
        rows.extend(result?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_the_first_minimum() {
        assert_eq!(first_min_index(&[3.0, 1.0, 2.0, 1.0]), 1);
        assert_eq!(first_min_index(&[5.0]), 0);
    }

    #[test]
    fn window_labels_match_the_targets_file() {
        assert_eq!(window_label(0), "+-0h");
        assert_eq!(window_label(1), "+-0.5h");
        assert_eq!(window_label(16), "+-8h");
    }
}
