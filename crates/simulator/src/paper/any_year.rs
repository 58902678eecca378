//! Let's Wait Awhile's nightly experiment (Scenario I) on any hourly year:
//! a job every night of the year at 01:00 UTC that may run up to ±N hours
//! from it, for any set of zones, under each forecast error model.
//!
//! Unlike the paper's series, which start on the first night and so skip its
//! job for windows over an hour, the first night here gets its whole window:
//! the series starts `N` hours before the year, read from the previous year's
//! data, which must be there.

use jiff::civil::date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::nightly::{Nights, mean_ci};
use super::{NOISE_SEEDS, window_label};
use crate::SimError;
use crate::forecast::{ErrorModel, Forecasts};
use crate::trace::{Series, Trace};

const HOUR_SECONDS: i64 = 3600;
/// 01:00 UTC, the paper's nominal start.
const NOMINAL_HOUR: usize = 1;
/// The year itself must have readings for most of its hours.
const MIN_COVERAGE: f64 = 0.95;

/// One zone's series from `lead_in_hours` before `year` to its end, hourly.
pub fn with_lead_in(trace: &Trace, year: i16, lead_in_hours: usize) -> Result<Series, SimError> {
    let first = date(year, 1, 1);
    let midnight: Timestamp = first
        .to_zoned(TimeZone::UTC)
        .map_err(|e| SimError::Invalid(format!("year {year}: {e}")))?
        .timestamp();
    let start = midnight - SignedDuration::from_hours(lead_in_hours as i64);
    let hours = first.days_in_year() as usize * 24;
    let present = trace
        .points
        .iter()
        .filter(|&&(at, _)| {
            at >= start && at < midnight && (at.as_second() - start.as_second()) % HOUR_SECONDS == 0
        })
        .count();
    if present < lead_in_hours {
        return Err(SimError::Invalid(format!(
            "zone {}: the {lead_in_hours}-hour lead-in for the first night of {year} needs \
             hourly readings from {start} to {midnight} ({} of them missing); add {}'s data \
             to the traces or leave the zone out",
            trace.zone,
            lead_in_hours - present,
            year - 1
        )));
    }
    let series = trace.on_grid(start, HOUR_SECONDS, lead_in_hours + hours)?;
    if ((hours + lead_in_hours - series.filled) as f64) < MIN_COVERAGE * hours as f64 {
        return Err(SimError::Invalid(format!(
            "zone {}: {} of {year}'s {hours} hours have no reading",
            trace.zone, series.filled
        )));
    }
    Ok(series)
}

/// The forecast error models the table compares, and the seeds each averages over.
pub fn models() -> Vec<(&'static str, ErrorModel)> {
    vec![
        (
            "none",
            ErrorModel::Iid {
                sigma_fraction: 0.0,
            },
        ),
        (
            "iid_0.05",
            ErrorModel::Iid {
                sigma_fraction: 0.05,
            },
        ),
        ("ar1", ErrorModel::AR1_PUBLISHED),
    ]
}

/// One cell: a zone, a window and a forecast model.
#[derive(Debug, Clone, PartialEq)]
pub struct NightlyRow {
    pub zone: String,
    pub window_hours: usize,
    pub model: &'static str,
    pub mean_ci: f64,
    pub savings_pct: f64,
}

/// Every zone × window `0..=max_window_hours` × model. Savings are against
/// running at 01:00 sharp; noisy models average `NOISE_SEEDS` seeds, as the paper.
pub fn table(
    traces: &[Trace],
    year: i16,
    max_window_hours: usize,
) -> Result<Vec<NightlyRow>, SimError> {
    if !(1..=22).contains(&max_window_hours) {
        return Err(SimError::Invalid(format!(
            "--max-window-hours {max_window_hours}: must be 1 to 22 (a window may not reach the next night)"
        )));
    }
    let mut rows = Vec::new();
    for trace in traces {
        let series = with_lead_in(trace, year, max_window_hours)?;
        let nights = Nights {
            slots_per_day: 24,
            first_nominal: max_window_hours + NOMINAL_HOUR,
            jobs: (series.grams_per_kwh.len() - max_window_hours) / 24,
        };
        let truth = &series.grams_per_kwh;
        for (name, model) in models() {
            let seeds = if model.is_perfect() { 1 } else { NOISE_SEEDS };
            let forecasts: Vec<Forecasts> = (0..seeds)
                .map(|seed| Forecasts::new(std::slice::from_ref(&series), model, seed))
                .collect();
            let mean = |window: usize| {
                forecasts
                    .iter()
                    .map(|f| mean_ci(truth, nights, window, |first, len| f.issued(0, first, len)))
                    .sum::<f64>()
                    / seeds as f64
            };
            let at_nominal = mean(0);
            for window in 0..=max_window_hours {
                let mean_ci = mean(window);
                rows.push(NightlyRow {
                    zone: series.zone.to_string(),
                    window_hours: window,
                    model: name,
                    mean_ci,
                    savings_pct: (1.0 - mean_ci / at_nominal) * 100.0,
                });
            }
        }
    }
    Ok(rows)
}

/// `zone,window,forecast_error,mean_ci_g_per_kwh,savings_pct`.
pub fn csv(rows: &[NightlyRow]) -> String {
    let mut out = String::from("zone,window,forecast_error,mean_ci_g_per_kwh,savings_pct\n");
    for r in rows {
        out += &format!(
            "{},{},{},{:.4},{:.4}\n",
            r.zone,
            window_label(2 * r.window_hours),
            r.model,
            r.mean_ci,
            r.savings_pct
        );
    }
    out
}

/// Windows down, zone × model across: % saved against 01:00 sharp.
pub fn text(rows: &[NightlyRow]) -> String {
    let mut columns: Vec<(String, &str)> = Vec::new();
    for r in rows {
        if !columns.iter().any(|(z, m)| *z == r.zone && *m == r.model) {
            columns.push((r.zone.clone(), r.model));
        }
    }
    let width = columns
        .iter()
        .map(|(z, m)| z.len() + m.len() + 1)
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!("{:<8}", "window");
    for (z, m) in &columns {
        out += &format!("  {:>width$}", format!("{z} {m}"));
    }
    out.push('\n');
    let windows = rows.iter().map(|r| r.window_hours).max().unwrap_or(0);
    for window in 0..=windows {
        out += &format!("{:<8}", window_label(2 * window));
        for (z, m) in &columns {
            let cell = rows
                .iter()
                .find(|r| r.window_hours == window && r.zone == *z && r.model == *m)
                .map_or_else(|| "-".into(), |r| format!("{:.2} %", r.savings_pct));
            out += &format!("  {cell:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbon_kube_core::carbon::GridZone;

    fn trace(from: &str, hours: i64, value: impl Fn(i64) -> f64) -> Trace {
        let start: Timestamp = from.parse().unwrap();
        Trace {
            zone: GridZone::parse("X").unwrap(),
            points: (0..hours)
                .map(|h| (start + SignedDuration::from_hours(h), value(h)))
                .collect(),
        }
    }

    #[test]
    fn the_first_night_reads_the_lead_in_and_a_missing_one_is_named() {
        // 2021 plus the last 8 h of 2020; cheap at 20:00 every day.
        let t = trace("2020-12-31T16:00:00Z", 8 + 8760, |h| {
            if (h + 16) % 24 == 20 { 50.0 } else { 100.0 }
        });
        let rows = table(std::slice::from_ref(&t), 2021, 8).unwrap();
        let at = |w: usize, m: &str| {
            rows.iter()
                .find(|r| r.window_hours == w && r.model == m)
                .unwrap()
                .savings_pct
        };
        assert_eq!(at(0, "none"), 0.0);
        // 20:00 is 5 h before 01:00: within ±5 h every night saves half, the first included.
        assert_eq!(at(4, "none"), 0.0);
        assert!((at(5, "none") - 50.0).abs() < 1e-9);
        assert_eq!(rows.len(), 9 * models().len());
        let err = table(&[t], 2022, 8).unwrap_err().to_string();
        assert!(err.contains("8760 of 2022's"), "{err}");
        let no_lead_in = trace("2022-01-01T00:00:00Z", 8760, |_| 100.0);
        let err = table(&[no_lead_in], 2022, 8).unwrap_err().to_string();
        assert!(
            err.contains("zone X")
                && err.contains("8-hour lead-in")
                && err.contains("8 of them missing")
                && err.contains("add 2021's data"),
            "{err}"
        );
    }
}
