//! `carbon-kube report`: energy, CO2e and the saving of carbon-aware
//! placement over a range, by namespace, node or grid zone, from the agents'
//! counters in Prometheus. The arithmetic is `crate::accounting`'s; this
//! module asks Prometheus for each counter's hourly summaries, and for the
//! samples of the few hours in which a counter restarted.

mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use serde::Deserialize;

use crate::accounting::{
    GroupBy, Hour, HourSummary, Ledger, NodeHour, PodHour, hourly_increases, hours_needing_samples,
};
use crate::carbon::Signal;
use crate::providers::http::{Auth, HttpClient, endpoint};

pub use render::{csv, table};

const HOUR: i64 = 3600;
/// Prometheus returns at most 11,000 points per series in one range query.
const MAX_HOURS: i64 = 10_000;
/// How far before the range a counter's last sample is looked for; a series
/// with none in this window counts from 0, as one that begins in the range.
const BASELINE_LOOKBACK: &str = "1d";
const TIMEOUT: Duration = Duration::from_secs(120);
const MAX_RESPONSE_BYTES: usize = 512 << 20;

const NODE_ENERGY: &str = "carbon_kube_node_energy_joules_total";
const NODE_GRAMS: &str = "carbon_kube_node_emitted_grams_total";
const POD_ENERGY: &str = "carbon_kube_pod_energy_joules_total";
const POD_GRAMS: &str = "carbon_kube_pod_emitted_grams_total";
const NODE_GRID: &str = "carbon_kube_node_grid_info";

/// Whole hours from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub from: Timestamp,
    pub to: Timestamp,
}

impl Range {
    /// Checks the flags: whole hours, `to` after `from`, at most [`MAX_HOURS`].
    pub fn new(from: Timestamp, to: Timestamp) -> Result<Self> {
        for (flag, at) in [("--from", from), ("--to", to)] {
            if at.as_second() % HOUR != 0 || at.subsec_nanosecond() != 0 {
                bail!("{flag}: {at} is not on a whole hour (UTC); the report counts whole hours");
            }
        }
        let hours = (to.as_second() - from.as_second()) / HOUR;
        if hours <= 0 {
            bail!("--to: {to} must be after --from {from}");
        }
        if hours > MAX_HOURS {
            bail!("--to: {hours} hours from --from; at most {MAX_HOURS} in one report");
        }
        Ok(Self { from, to })
    }

    pub fn hours(&self) -> i64 {
        (self.to.as_second() - self.from.as_second()) / HOUR
    }
}

/// `2026-10-01` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    // A date is its midnight UTC; the timestamp grammar checks both.
    let midnight = format!("{text}T00:00:00Z");
    text.parse::<Timestamp>()
        .or_else(|_| midnight.parse())
        .map_err(|_| format!("{text:?} is neither a date (2026-10-01) nor an RFC 3339 time"))
}

/// What `carbon-kube report` was asked for.
#[derive(Clone, Debug)]
pub struct Request {
    pub prometheus: String,
    pub range: Range,
    pub by: GroupBy,
    pub csv: PathBuf,
}

/// Reads the range from Prometheus, prints the table and writes the CSV;
/// returns the table.
pub async fn run(request: &Request) -> Result<String> {
    let prometheus = Prometheus::new(&request.prometheus);
    let ledger = prometheus.ledger(&request.range).await?;
    let (rows, totals) = ledger.rows(request.by);
    let csv_text = csv(request.by, &rows, &totals);
    std::fs::write(&request.csv, csv_text)
        .with_context(|| format!("--csv: writing {}", request.csv.display()))?;
    Ok(table(request, &rows, &totals))
}

type Labels = BTreeMap<String, String>;

/// One series of a query's result: its labels and (Unix seconds, value) points.
struct Series {
    labels: Labels,
    points: Vec<(i64, f64)>,
}

#[derive(Deserialize)]
struct Reply {
    status: String,
    data: Option<ReplyData>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ReplyData {
    result: Vec<ReplySeries>,
}

#[derive(Deserialize)]
struct ReplySeries {
    metric: Labels,
    value: Option<(f64, String)>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

struct Prometheus {
    base: String,
    http: HttpClient,
}

impl Prometheus {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            http: HttpClient::new(TIMEOUT, MAX_RESPONSE_BYTES),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Series>> {
        let expr = query.first().map_or("", |(_, q)| *q);
        let failed = || format!("Prometheus at {}: query {expr}", self.base);
        let url = endpoint(&self.base, path, query).with_context(failed)?;
        let reply: Reply = self
            .http
            .get_json(url, Auth::None)
            .await
            .with_context(failed)?;
        let Some(data) = reply.data.filter(|_| reply.status == "success") else {
            let error = reply.error.unwrap_or(reply.status);
            bail!("{}: {error}", failed());
        };
        data.result
            .into_iter()
            .map(|s| {
                let points = s
                    .value
                    .into_iter()
                    .chain(s.values)
                    .map(|(at, v)| match v.parse::<f64>() {
                        Ok(v) if v.is_finite() => Ok((at as i64, v)),
                        _ => bail!("{}: sample {v:?} is not a finite number", failed()),
                    })
                    .collect::<Result<_>>()?;
                // last_over_time keeps the metric's name, min_over_time drops it: a
                // series is known by its other labels.
                let mut labels = s.metric;
                labels.remove("__name__");
                Ok(Series { labels, points })
            })
            .collect()
    }

    /// `expr` at the end of every hour of `range`.
    async fn hourly(&self, expr: &str, range: &Range) -> Result<Vec<Series>> {
        let start = (range.from.as_second() + HOUR).to_string();
        let end = range.to.as_second().to_string();
        let step = HOUR.to_string();
        let query = [
            ("query", expr),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step.as_str()),
        ];
        self.get("api/v1/query_range", &query).await
    }

    async fn at(&self, expr: &str, at: i64) -> Result<Vec<Series>> {
        let time = at.to_string();
        self.get("api/v1/query", &[("query", expr), ("time", time.as_str())])
            .await
    }

    /// Each series of counter `metric` with its increase in every hour of `range`.
    async fn counter(
        &self,
        metric: &str,
        range: &Range,
    ) -> Result<Vec<(Labels, Vec<(Hour, f64)>)>> {
        let over_hour = |f: &str| format!("{f}({metric}[1h])");
        let lasts = self.hourly(&over_hour("last_over_time"), range).await?;
        let mins = by_labels(self.hourly(&over_hour("min_over_time"), range).await?);
        let resets = by_labels(self.hourly(&over_hour("resets"), range).await?);
        let baseline = format!("last_over_time({metric}[{BASELINE_LOOKBACK}])");
        let baselines = by_labels(self.at(&baseline, range.from.as_second()).await?);
        let mut out = Vec::new();
        for series in lasts {
            let of = |map: &BTreeMap<Labels, BTreeMap<i64, f64>>, hour| {
                map.get(&series.labels).and_then(|p| p.get(&hour).copied())
            };
            let hours = series
                .points
                .iter()
                .map(|&(hour, last)| {
                    let (Some(min), Some(resets)) = (of(&mins, hour), of(&resets, hour)) else {
                        bail!(
                            "Prometheus at {}: {metric}{} has a last sample at {hour} but no lowest sample or resets count",
                            self.base,
                            selector(&series.labels)
                        );
                    };
                    Ok((hour, HourSummary { last, min, resets }))
                })
                .collect::<Result<Vec<(Hour, HourSummary)>>>()?;
            let baseline = of(&baselines, range.from.as_second());
            let mut samples = BTreeMap::new();
            for hour in hours_needing_samples(baseline, &hours) {
                let raw = format!("{metric}{}[1h]", selector(&series.labels));
                // The selector also matches a series with more labels: keep this one.
                let values = self.at(&raw, hour).await?.into_iter();
                let values = values.filter(|s| s.labels == series.labels);
                let values = values.flat_map(|s| s.points).map(|(_, v)| v);
                samples.insert(hour, values.collect());
            }
            let increases = hourly_increases(baseline, &hours, &samples);
            out.push((series.labels, increases));
        }
        Ok(out)
    }

    /// Every counter the report needs, hour by hour.
    async fn ledger(&self, range: &Range) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        let label = |labels: &Labels, name: &str| labels.get(name).cloned().unwrap_or_default();
        for (labels, hours) in self.counter(NODE_ENERGY, range).await? {
            let measured = labels.get("source").is_some_and(|s| s == "measured");
            for (hour, joules) in hours {
                let node = ledger
                    .nodes
                    .entry((hour, label(&labels, "node")))
                    .or_default();
                if measured {
                    node.measured_joules += joules;
                } else {
                    node.modelled_joules += joules;
                }
            }
        }
        for (labels, hours) in self.counter(NODE_GRAMS, range).await? {
            for (hour, grams) in hours {
                let key = (hour, label(&labels, "node"));
                ledger.nodes.entry(key).or_default().grams += grams;
            }
        }
        for series in self
            .hourly(&format!("last_over_time({NODE_GRID}[1h])"), range)
            .await?
        {
            let zone = label(&series.labels, "zone");
            let signal = match series.labels.get("signal").map(String::as_str) {
                Some("average") => Signal::Average,
                Some("marginal") => Signal::Marginal,
                other => bail!(
                    "Prometheus at {}: {NODE_GRID}{} has signal {other:?}, neither average nor marginal",
                    self.base,
                    selector(&series.labels)
                ),
            };
            for (hour, _) in series.points {
                let key = (hour, label(&series.labels, "node"));
                // An hour whose zone or signal changed is priced under one of them.
                let node: &mut NodeHour = ledger.nodes.entry(key).or_default();
                node.grid = Some((zone.clone(), signal));
            }
        }
        for (metric, is_energy) in [(POD_ENERGY, true), (POD_GRAMS, false)] {
            for (labels, hours) in self.counter(metric, range).await? {
                for (hour, amount) in hours {
                    let key = (
                        hour,
                        label(&labels, "node"),
                        label(&labels, "namespace"),
                        label(&labels, "pod"),
                    );
                    let pod: &mut PodHour = ledger.pods.entry(key).or_default();
                    if is_energy {
                        pod.joules += amount;
                    } else {
                        pod.grams += amount;
                    }
                }
            }
        }
        Ok(ledger)
    }
}

fn by_labels(series: Vec<Series>) -> BTreeMap<Labels, BTreeMap<i64, f64>> {
    series
        .into_iter()
        .map(|s| (s.labels, s.points.into_iter().collect()))
        .collect()
}

/// `{name="value",…}` matching exactly `labels`, values escaped for PromQL.
fn selector(labels: &Labels) -> String {
    let matchers: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", matchers.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_whole_hours_named_by_flag() {
        let at = |s: &str| parse_time(s).unwrap();
        let range = Range::new(at("2026-10-01"), at("2026-11-01")).unwrap();
        assert_eq!(range.hours(), 31 * 24);
        let err = Range::new(at("2026-10-01T00:30:00Z"), at("2026-11-01")).unwrap_err();
        assert!(err.to_string().starts_with("--from:"), "{err}");
        let err = Range::new(at("2026-10-01"), at("2026-10-01")).unwrap_err();
        assert!(err.to_string().starts_with("--to:"), "{err}");
        let err = parse_time("yesterday").unwrap_err();
        assert!(err.contains("neither a date"), "{err}");
    }

    #[test]
    fn selectors_escape_label_values() {
        let labels = Labels::from([
            ("node".to_string(), "n\"1\\".to_string()),
            ("pod".to_string(), "web-1".to_string()),
        ]);
        assert_eq!(selector(&labels), r#"{node="n\"1\\",pod="web-1"}"#);
    }
}
