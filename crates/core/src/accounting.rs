//! Carbon accounting from the agents' counters, read hour by hour: exact
//! increases across counter resets and scrape gaps, and the report's rows by
//! namespace, node or grid zone with the saving against carbon-agnostic
//! placement (the overview dashboard's method, hour by hour).
//!
//! A counter is read as its last sample in each hour. Between two such
//! samples the increase is their difference, unless the counter fell (an
//! agent restart, a pod's series recreated): then the hour's own samples are
//! needed, and a fall counts as a restart from 0. A scrape gap loses nothing
//! (the counter kept counting; its increase lands in the hour of the next
//! sample); a series that begins inside the range starts from 0, as the
//! agent's counters do.

use std::collections::BTreeMap;

use crate::carbon::Signal;

/// The end of an hour, in Unix seconds: the hour is (end − 3600, end].
pub type Hour = i64;

pub const JOULES_PER_KWH: f64 = 3.6e6;

/// One series' samples in one hour, as Prometheus summarises them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HourSummary {
    pub last: f64,
    pub min: f64,
    /// Falls between consecutive samples inside the hour.
    pub resets: f64,
}

impl HourSummary {
    /// Whether the hour's increase is its last sample less `previous`: no
    /// fall inside it and none from `previous` to its first sample.
    fn monotonic_from(&self, previous: Option<f64>) -> bool {
        self.resets == 0.0 && previous.is_none_or(|p| self.min >= p)
    }
}

/// Increase of a counter along `samples`, continuing from `previous` (its
/// last value before them; `None` when the series starts with them, from 0).
/// A fall is a restart: the counter counted from 0 up to the lower value.
pub fn increase(previous: Option<f64>, samples: &[f64]) -> f64 {
    let mut last = previous.unwrap_or(0.0);
    let mut total = 0.0;
    for &value in samples {
        total += if value >= last { value - last } else { value };
        last = value;
    }
    total
}

/// The value each hour continues from: the last sample of the latest earlier
/// hour with samples, else `baseline` (the last sample before the range).
fn previous_values(baseline: Option<f64>, hours: &[(Hour, HourSummary)]) -> Vec<Option<f64>> {
    let mut previous = baseline;
    hours
        .iter()
        .map(|(_, summary)| previous.replace(summary.last))
        .collect()
}

/// The hours (ascending in `hours`) whose own samples are needed because the
/// counter fell in them or at their start.
pub fn hours_needing_samples(baseline: Option<f64>, hours: &[(Hour, HourSummary)]) -> Vec<Hour> {
    hours
        .iter()
        .zip(previous_values(baseline, hours))
        .filter(|((_, summary), previous)| !summary.monotonic_from(*previous))
        .map(|((hour, _), _)| *hour)
        .collect()
}

/// Each hour's increase. `samples` holds the samples of every hour
/// [`hours_needing_samples`] named; without them an hour counts from its last
/// sample, which undercounts and so is never silently right: callers fetch them.
pub fn hourly_increases(
    baseline: Option<f64>,
    hours: &[(Hour, HourSummary)],
    samples: &BTreeMap<Hour, Vec<f64>>,
) -> Vec<(Hour, f64)> {
    hours
        .iter()
        .zip(previous_values(baseline, hours))
        .map(|((hour, summary), previous)| {
            let own = samples.get(hour).map(Vec::as_slice);
            (*hour, increase(previous, own.unwrap_or(&[summary.last])))
        })
        .collect()
}

/// What the agent on one node counted in one hour.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeHour {
    pub measured_joules: f64,
    pub modelled_joules: f64,
    pub grams: f64,
    /// The grid zone and signal type that priced the hour; `None` when the
    /// agent published none (no carbon data).
    pub grid: Option<(String, Signal)>,
}

impl NodeHour {
    fn kwh(&self) -> f64 {
        (self.measured_joules + self.modelled_joules) / JOULES_PER_KWH
    }

    fn measured_share(&self) -> f64 {
        let joules = self.measured_joules + self.modelled_joules;
        if joules > 0.0 {
            self.measured_joules / joules
        } else {
            0.0
        }
    }

    /// Grams per kWh that applied over the hour (energy-weighted).
    fn intensity(&self) -> Option<f64> {
        let kwh = self.kwh();
        (kwh > 0.0 && self.grid.is_some()).then(|| self.grams / kwh)
    }
}

/// What one pod's share came to in one hour.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodHour {
    pub joules: f64,
    pub grams: f64,
}

/// Everything counted over a range, hour by hour.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// (hour, node).
    pub nodes: BTreeMap<(Hour, String), NodeHour>,
    /// (hour, node, namespace, pod).
    pub pods: BTreeMap<(Hour, String, String, String), PodHour>,
}

/// How the report's rows are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Namespace,
    Node,
    Zone,
}

/// The row of a namespace report that holds what no pod was given: idle
/// CPU, memory and processes outside pods.
pub const NOT_ATTRIBUTED: &str = "(not attributed to pods)";
/// The group of the total rows.
pub const TOTAL: &str = "total";
/// The zone of node-hours with no carbon data.
pub const NO_ZONE: &str = "(no carbon data)";

/// One row of the report: a group under one signal type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub group: String,
    /// `average`, `marginal`, or `none` without carbon data.
    pub signal: &'static str,
    pub kwh: f64,
    pub measured_kwh: f64,
    pub grams: f64,
    /// CO2e the same pod energy would have emitted at the mean intensity of
    /// the cluster's nodes (same signal, same hour), less what it emitted.
    pub saved_grams: f64,
}

impl Row {
    pub fn measured_share(&self) -> f64 {
        if self.kwh > 0.0 {
            self.measured_kwh / self.kwh
        } else {
            0.0
        }
    }

    fn add(&mut self, other: &Row) {
        self.kwh += other.kwh;
        self.measured_kwh += other.measured_kwh;
        self.grams += other.grams;
        self.saved_grams += other.saved_grams;
    }
}

fn signal_name(grid: &Option<(String, Signal)>) -> &'static str {
    grid.as_ref().map_or("none", |(_, s)| s.as_str())
}

impl Ledger {
    /// Mean over the nodes that drew power in `hour` under `signal` of their
    /// intensity: what carbon-agnostic placement would have paid on average.
    fn mean_intensities(&self) -> BTreeMap<(Hour, Signal), f64> {
        let mut sums: BTreeMap<(Hour, Signal), (f64, f64)> = BTreeMap::new();
        for ((hour, _), node) in &self.nodes {
            if let (Some(i), Some((_, signal))) = (node.intensity(), &node.grid) {
                let sum = sums.entry((*hour, *signal)).or_default();
                sum.0 += i;
                sum.1 += 1.0;
            }
        }
        sums.into_iter().map(|(k, (s, n))| (k, s / n)).collect()
    }

    /// The report's rows, sorted by group then signal, and a total per
    /// signal type: average (location-based) and marginal figures never add up.
    pub fn rows(&self, by: GroupBy) -> (Vec<Row>, Vec<Row>) {
        let means = self.mean_intensities();
        let mut rows: BTreeMap<(String, &'static str), Row> = BTreeMap::new();
        let mut add = |group: &str, signal: &'static str, row: Row| {
            rows.entry((group.to_string(), signal))
                .or_default()
                .add(&row);
        };
        let empty = NodeHour::default();
        // Pods' shares, and what is left at node level, per node-hour.
        let mut pods_of: BTreeMap<(Hour, &str), Row> = BTreeMap::new();
        for ((hour, node_name, namespace, _), pod) in &self.pods {
            let node = self
                .nodes
                .get(&(*hour, node_name.clone()))
                .unwrap_or(&empty);
            let kwh = pod.joules / JOULES_PER_KWH;
            let saved = match (&node.grid, node.intensity()) {
                (Some((_, signal)), Some(_)) => means
                    .get(&(*hour, *signal))
                    .map_or(0.0, |mean| kwh * mean - pod.grams),
                _ => 0.0,
            };
            let row = Row {
                kwh,
                measured_kwh: kwh * node.measured_share(),
                grams: pod.grams,
                saved_grams: saved,
                ..Row::default()
            };
            pods_of.entry((*hour, node_name)).or_default().add(&row);
            if by == GroupBy::Namespace {
                add(namespace, signal_name(&node.grid), row);
            }
        }
        for ((hour, node_name), node) in &self.nodes {
            let pods = pods_of
                .get(&(*hour, node_name.as_str()))
                .cloned()
                .unwrap_or_default();
            let kwh = node.kwh();
            let whole = Row {
                kwh,
                measured_kwh: kwh * node.measured_share(),
                grams: node.grams,
                saved_grams: pods.saved_grams,
                ..Row::default()
            };
            let signal = signal_name(&node.grid);
            match by {
                GroupBy::Node => add(node_name, signal, whole),
                GroupBy::Zone => {
                    let zone = node.grid.as_ref().map_or(NO_ZONE, |(z, _)| z.as_str());
                    add(zone, signal, whole)
                }
                GroupBy::Namespace => {
                    let rest = Row {
                        kwh: whole.kwh - pods.kwh,
                        measured_kwh: whole.measured_kwh - pods.measured_kwh,
                        grams: whole.grams - pods.grams,
                        ..Row::default()
                    };
                    add(NOT_ATTRIBUTED, signal, rest);
                }
            }
        }
        let mut totals: BTreeMap<&'static str, Row> = BTreeMap::new();
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|((group, signal), row)| {
                totals.entry(signal).or_default().add(&row);
                Row {
                    group,
                    signal,
                    ..row
                }
            })
            .collect();
        let totals = totals
            .into_iter()
            .map(|(signal, row)| Row {
                group: TOTAL.into(),
                signal,
                ..row
            })
            .collect();
        (rows, totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(last: f64, min: f64, resets: f64) -> HourSummary {
        HourSummary { last, min, resets }
    }

    #[test]
    fn increase_counts_a_fall_as_a_restart_from_zero() {
        assert_eq!(increase(Some(10.0), &[12.0, 15.0]), 5.0);
        // Restarted after 15: 15 - 10, then 0 → 4, then 4 → 6.
        assert_eq!(increase(Some(10.0), &[15.0, 4.0, 6.0]), 11.0);
        // A series that starts here counts from 0.
        assert_eq!(increase(None, &[3.0, 5.0]), 5.0);
        assert_eq!(increase(Some(7.0), &[]), 0.0);
    }

    #[test]
    fn only_hours_with_a_fall_need_their_samples() {
        let hours = [
            (3600, summary(10.0, 2.0, 0.0)),
            // Fell inside the hour.
            (7200, summary(30.0, 12.0, 1.0)),
            // Fell from 30 at its start, then rose past 30: the last sample alone misleads.
            (10800, summary(35.0, 1.0, 0.0)),
            (14400, summary(40.0, 35.0, 0.0)),
        ];
        assert_eq!(hours_needing_samples(None, &hours), vec![7200, 10800]);
        // With a baseline above the first hour's lowest sample, it too fell.
        assert_eq!(
            hours_needing_samples(Some(5.0), &hours),
            vec![3600, 7200, 10800]
        );
        let samples = BTreeMap::from([(7200, vec![20.0, 5.0, 30.0]), (10800, vec![1.0, 35.0])]);
        assert_eq!(
            hourly_increases(None, &hours, &samples),
            vec![
                (3600, 10.0),
                (7200, 10.0 + 30.0),
                (10800, 35.0),
                (14400, 5.0)
            ]
        );
    }

    #[test]
    fn a_scrape_gap_loses_nothing() {
        // No samples in the second hour: the third continues from the first's last.
        let hours = [
            (3600, summary(10.0, 0.0, 0.0)),
            (10800, summary(50.0, 40.0, 0.0)),
        ];
        assert!(hours_needing_samples(Some(0.0), &hours).is_empty());
        let increases = hourly_increases(Some(0.0), &hours, &BTreeMap::new());
        assert_eq!(increases, vec![(3600, 10.0), (10800, 40.0)]);
    }

    fn node(measured_kwh: f64, modelled_kwh: f64, grams: f64, zone: &str) -> NodeHour {
        NodeHour {
            measured_joules: measured_kwh * JOULES_PER_KWH,
            modelled_joules: modelled_kwh * JOULES_PER_KWH,
            grams,
            grid: Some((zone.into(), Signal::Average)),
        }
    }

    fn pod(kwh: f64, grams: f64) -> PodHour {
        PodHour {
            joules: kwh * JOULES_PER_KWH,
            grams,
        }
    }

    /// Two nodes, one hour: `dirty` at 500 g/kWh, `clean` at 100 (mean 300).
    fn ledger() -> Ledger {
        let key = |node: &str| (3600, node.to_string());
        let pod_key = |node: &str, ns: &str, p: &str| (3600, node.into(), ns.into(), p.into());
        Ledger {
            nodes: BTreeMap::from([
                (key("dirty"), node(1.0, 1.0, 1000.0, "DE")),
                (key("clean"), node(0.0, 4.0, 400.0, "FR")),
            ]),
            pods: BTreeMap::from([
                (pod_key("dirty", "shop", "a"), pod(1.0, 500.0)),
                (pod_key("clean", "shop", "b"), pod(2.0, 200.0)),
                (pod_key("clean", "batch", "c"), pod(1.0, 100.0)),
            ]),
        }
    }

    #[test]
    fn namespaces_carry_pod_energy_and_the_rest_stays_unattributed() {
        let (rows, totals) = ledger().rows(GroupBy::Namespace);
        let total = &totals[0];
        let names: Vec<&str> = rows.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(names, [NOT_ATTRIBUTED, "batch", "shop"]);
        let shop = &rows[2];
        assert_eq!((shop.kwh, shop.grams), (3.0, 700.0));
        // Pod a at 500 against the mean 300 cost 200 g; b at 100 saved 400 g.
        assert_eq!(shop.saved_grams, -200.0 + 400.0);
        // a's kWh on a half-measured node: 0.5 of 3 kWh measured.
        assert!((shop.measured_share() - 0.5 / 3.0).abs() < 1e-12);
        assert_eq!(rows[1].saved_grams, 200.0);
        let rest = &rows[0];
        assert_eq!((rest.kwh, rest.grams, rest.saved_grams), (2.0, 600.0, 0.0));
        assert_eq!(
            (total.kwh, total.grams, total.saved_grams),
            (6.0, 1400.0, 400.0)
        );
    }

    #[test]
    fn nodes_and_zones_carry_the_whole_node_and_their_pods_savings() {
        let (rows, totals) = ledger().rows(GroupBy::Zone);
        let total = &totals[0];
        assert_eq!(rows.len(), 2);
        let (de, fr) = (&rows[0], &rows[1]);
        assert_eq!((de.group.as_str(), de.kwh, de.grams), ("DE", 2.0, 1000.0));
        assert_eq!((de.saved_grams, de.measured_share()), (-200.0, 0.5));
        assert_eq!(
            (fr.group.as_str(), fr.kwh, fr.saved_grams),
            ("FR", 4.0, 600.0)
        );
        assert_eq!(
            (total.kwh, total.grams, total.saved_grams),
            (6.0, 1400.0, 400.0)
        );
        let (by_node, _) = ledger().rows(GroupBy::Node);
        let names: Vec<&str> = by_node.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(names, ["clean", "dirty"]);
    }

    #[test]
    fn signals_are_kept_apart_and_priced_against_their_own_kind() {
        let mut ledger = ledger();
        let marginal = ledger.nodes.get_mut(&(3600, "clean".to_string())).unwrap();
        marginal.grid = Some(("FR".into(), Signal::Marginal));
        let (rows, totals) = ledger.rows(GroupBy::Node);
        assert_eq!(rows[0].signal, "marginal");
        let signals: Vec<(&str, &str, f64)> = totals
            .iter()
            .map(|t| (t.group.as_str(), t.signal, t.grams))
            .collect();
        assert_eq!(
            signals,
            [(TOTAL, "average", 1000.0), (TOTAL, "marginal", 400.0)]
        );
        // Each node is alone with its signal, so it is its own mean: nothing saved.
        assert!(rows.iter().all(|r| r.saved_grams == 0.0), "{rows:?}");
        // A node-hour without carbon data has energy and no zone.
        ledger
            .nodes
            .get_mut(&(3600, "dirty".to_string()))
            .unwrap()
            .grid = None;
        let (rows, _) = ledger.rows(GroupBy::Zone);
        assert_eq!((rows[0].group.as_str(), rows[0].signal), (NO_ZONE, "none"));
    }
}
