//! Intensity traces: the normalised CSV files of `benches/data/`
//! (`zone,timestamp_utc,g_co2_per_kwh`, one reading per line, ascending).

use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::SimError;
use carbon_kube_core::carbon::{GridZone, check_intensity};

/// One zone's readings as published, at native resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub zone: GridZone,
    pub points: Vec<(Timestamp, f64)>,
}

/// A trace sampled on a regular grid, as the simulator steps through it.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub zone: GridZone,
    pub start: Timestamp,
    pub step_seconds: i64,
    pub grams_per_kwh: Vec<f64>,
    /// Grid steps without a reading of their own, filled with the previous one.
    pub filled: usize,
}

impl Series {
    pub fn mean(&self) -> f64 {
        self.grams_per_kwh.iter().sum::<f64>() / self.grams_per_kwh.len().max(1) as f64
    }

    pub fn at(&self, index: usize) -> Timestamp {
        self.start + jiff::SignedDuration::from_secs(self.step_seconds * index as i64)
    }
}

#[cfg(test)]
impl Series {
    /// An hourly series from 2022-01-01 00:00 UTC.
    pub fn hourly_for_tests(zone: &str, values: &[f64]) -> Self {
        Self {
            zone: GridZone::parse(zone).unwrap(),
            start: "2022-01-01T00:00:00Z".parse().unwrap(),
            step_seconds: 3600,
            grams_per_kwh: values.to_vec(),
            filled: 0,
        }
    }
}

/// Reads one normalised CSV file.
pub fn load(path: &Path) -> Result<Trace, SimError> {
    let (text, bad) = SimError::read_csv(path)?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "zone,timestamp_utc,g_co2_per_kwh" => {}
        _ => {
            return Err(bad(
                1,
                "expected the header zone,timestamp_utc,g_co2_per_kwh".into(),
            ));
        }
    }
    let mut zone = None;
    let mut points: Vec<(Timestamp, f64)> = Vec::new();
    for (index, line) in lines {
        let number = index + 1;
        let mut fields = line.trim().split(',');
        let (Some(z), Some(at), Some(value), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(number, format!("expected three fields, got {line:?}")));
        };
        let z = GridZone::parse(z).map_err(|e| bad(number, e))?;
        if zone.get_or_insert_with(|| z.clone()) != &z {
            return Err(bad(
                number,
                format!("zone {z} differs from the file's first zone"),
            ));
        }
        let at: Timestamp = at
            .parse()
            .map_err(|e| bad(number, format!("timestamp {at:?}: {e}")))?;
        let value = value
            .parse::<f64>()
            .map_err(|e| bad(number, format!("intensity {value:?}: {e}")))
            .and_then(|v| check_intensity(v).map_err(|e| bad(number, e)))?;
        if points.last().is_some_and(|&(last, _)| last >= at) {
            return Err(bad(
                number,
                format!("timestamp {at} is not after the previous one"),
            ));
        }
        points.push((at, value));
    }
    let zone = zone.ok_or_else(|| bad(2, "no readings".into()))?;
    Ok(Trace { zone, points })
}

/// Reads every `*.csv` trace in `dir`, ordered by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Trace>, SimError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SimError::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "csv"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(SimError::Invalid(format!(
            "no *.csv traces in {}",
            dir.display()
        )));
    }
    paths.iter().map(|p| load(p)).collect()
}

impl Trace {
    /// `len` steps from `start`. Readings between grid points are ignored (the
    /// reading at the step is the one a poll at that time would see); a step
    /// without a reading repeats the previous step, as a provider cache would.
    pub fn on_grid(
        &self,
        start: Timestamp,
        step_seconds: i64,
        len: usize,
    ) -> Result<Series, SimError> {
        let mut slots: Vec<Option<f64>> = vec![None; len];
        for &(at, value) in &self.points {
            let offset = at.as_second() - start.as_second();
            if offset >= 0 && offset % step_seconds == 0 {
                if let Some(slot) = slots.get_mut((offset / step_seconds) as usize) {
                    *slot = Some(value);
                }
            }
        }
        let first = slots.iter().flatten().next().copied().ok_or_else(|| {
            SimError::Invalid(format!(
                "trace {} has no reading on the grid from {start}",
                self.zone
            ))
        })?;
        let filled = slots.iter().filter(|s| s.is_none()).count();
        let mut last = first;
        let grams_per_kwh = slots
            .into_iter()
            .map(|slot| {
                last = slot.unwrap_or(last);
                last
            })
            .collect();
        Ok(Series {
            zone: self.zone.clone(),
            start,
            step_seconds,
            grams_per_kwh,
            filled,
        })
    }

    /// Every reading on the grid from `start` to the end of the trace, which must
    /// have no gap there (the paper's series are used exactly as published).
    pub fn exact_grid(&self, start: Timestamp, step_seconds: i64) -> Result<Series, SimError> {
        let last = self
            .points
            .last()
            .map(|&(at, _)| at.as_second())
            .filter(|&end| end >= start.as_second())
            .ok_or_else(|| SimError::Invalid(format!("trace {} ends before {start}", self.zone)))?;
        let len = ((last - start.as_second()) / step_seconds + 1) as usize;
        let series = self.on_grid(start, step_seconds, len)?;
        if series.filled > 0 {
            return Err(SimError::Invalid(format!(
                "trace {} misses {} steps of {step_seconds} s after {start}",
                self.zone, series.filled
            )));
        }
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(points: &[(&str, f64)]) -> Trace {
        Trace {
            zone: GridZone::parse("DE").unwrap(),
            points: points
                .iter()
                .map(|(t, v)| (t.parse().unwrap(), *v))
                .collect(),
        }
    }

    #[test]
    fn grid_ignores_off_grid_points_and_fills_gaps() {
        let t = trace(&[
            ("2020-01-01T00:00:00Z", 1.0),
            ("2020-01-01T00:15:00Z", 9.0),
            ("2020-01-01T02:00:00Z", 3.0),
        ]);
        let series = t
            .on_grid("2020-01-01T00:00:00Z".parse().unwrap(), 3600, 4)
            .unwrap();
        assert_eq!(series.grams_per_kwh, [1.0, 1.0, 3.0, 3.0]);
        assert_eq!(series.filled, 2);
        assert_eq!(
            series.at(2),
            "2020-01-01T02:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_late_first_reading_is_used_for_the_steps_before_it() {
        let t = trace(&[("2020-01-01T01:00:00Z", 5.0)]);
        let series = t
            .on_grid("2020-01-01T00:00:00Z".parse().unwrap(), 3600, 2)
            .unwrap();
        assert_eq!(series.grams_per_kwh, [5.0, 5.0]);
    }

    #[test]
    fn exact_grid_refuses_gaps() {
        let t = trace(&[("2020-01-01T00:00:00Z", 1.0), ("2020-01-01T01:00:00Z", 2.0)]);
        let start = "2020-01-01T00:00:00Z".parse().unwrap();
        assert!(
            t.exact_grid(start, 1800)
                .unwrap_err()
                .to_string()
                .contains("misses 1 steps")
        );
        assert_eq!(t.exact_grid(start, 3600).unwrap().grams_per_kwh, [1.0, 2.0]);
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = std::env::temp_dir().join(format!("carbon-kube-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.csv");
        std::fs::write(
            &path,
            "zone,timestamp_utc,g_co2_per_kwh\nDE,2020-01-01T00:00:00Z,-3\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("negative"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
