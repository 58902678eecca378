//! The published and reproduced numbers to match
//! (`benches/data/lets_wait_awhile_targets.csv`), and the comparison.

use std::path::Path;

use super::super::SimError;
use super::PaperRow;

/// The issue's bar: every number within 0.1 percentage point.
pub const TOLERANCE_PP: f64 = 0.1;

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub scenario: String,
    pub zone: String,
    pub window_or_deadline: String,
    pub error: f64,
    pub mode: String,
    pub savings_pct: f64,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub target: Target,
    /// `None` when the zone's series is not shipped (California 2020).
    pub ours: Option<f64>,
}

impl Comparison {
    pub fn difference_pp(&self) -> Option<f64> {
        self.ours.map(|ours| ours - self.target.savings_pct)
    }

    pub fn matches(&self) -> bool {
        self.difference_pp()
            .is_some_and(|d| d.abs() <= TOLERANCE_PP)
    }
}

/// Splits one CSV line, honouring double quotes (the `source` column has commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    out
}

pub fn load(path: &Path) -> Result<Vec<Target>, SimError> {
    let (text, bad) = SimError::read_csv(path)?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| fields(h)).unwrap_or_default();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| bad(1, format!("no column {name}")))
    };
    let (scenario, zone, window, error, mode, savings, source) = (
        column("scenario")?,
        column("zone")?,
        column("window_or_deadline")?,
        column("forecast_error_sigma_frac_of_mean")?,
        column("mode")?,
        column("savings_pct_vs_baseline")?,
        column("source")?,
    );
    let mut targets = Vec::new();
    for (index, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let row = fields(line);
        let get = |i: usize| {
            row.get(i)
                .cloned()
                .ok_or_else(|| bad(index + 1, format!("missing column {i}")))
        };
        let number = |i: usize| {
            get(i)?
                .parse::<f64>()
                .map_err(|e| bad(index + 1, format!("column {i}: {e}")))
        };
        targets.push(Target {
            scenario: get(scenario)?,
            zone: get(zone)?,
            window_or_deadline: get(window)?,
            error: number(error)?,
            mode: get(mode)?,
            savings_pct: number(savings)?,
            source: get(source)?,
        });
    }
    Ok(targets)
}

/// Pairs every target with the reproduced number for the same setting.
pub fn compare(targets: &[Target], rows: &[PaperRow]) -> Vec<Comparison> {
    targets
        .iter()
        .map(|t| Comparison {
            target: t.clone(),
            ours: rows
                .iter()
                .find(|r| {
                    r.scenario == t.scenario
                        && r.zone == t.zone
                        && r.window_or_deadline == t.window_or_deadline
                        && (r.error - t.error).abs() < 1e-9
                        && r.mode == t.mode
                })
                .map(|r| r.savings_pct),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_their_commas() {
        assert_eq!(
            fields(r#"II,DE,5.91,"cell 11, rounded""#),
            ["II", "DE", "5.91", "cell 11, rounded"]
        );
        assert_eq!(fields("I,DE,,x"), ["I", "DE", "", "x"]);
    }

    #[test]
    fn comparison_pairs_by_setting_and_applies_the_tolerance() {
        let target = Target {
            scenario: "I".into(),
            zone: "DE".into(),
            window_or_deadline: "+-1h".into(),
            error: 0.05,
            mode: String::new(),
            savings_pct: 0.539,
            source: "x".into(),
        };
        let row = PaperRow {
            scenario: "I",
            zone: "DE".into(),
            window_or_deadline: "+-1h".into(),
            error: 0.05,
            mode: "",
            mean_ci: None,
            savings_pct: 0.6,
        };
        let c = compare(std::slice::from_ref(&target), &[row]);
        assert!(c[0].matches());
        assert!((c[0].difference_pp().unwrap() - 0.061).abs() < 1e-12);
        let missing = compare(
            &[Target {
                zone: "US-CAL-CISO".into(),
                ..target
            }],
            &[],
        );
        assert!(!missing[0].matches() && missing[0].ours.is_none());
    }
}
