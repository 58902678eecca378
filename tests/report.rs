//! `carbon-kube report` against a real Prometheus: a month of synthetic agent
//! counters with known totals (an agent down for hours, restarts, a scrape gap,
//! pods that begin mid-month), backfilled with `promtool tsdb
//! create-blocks-from openmetrics`, served by Prometheus, and reported by
//! namespace, node and zone. The totals are the simulation's own: what the
//! agents drew and emitted, minute by minute, booked to the hour of the
//! sample that reports it.

#[allow(dead_code)]
#[path = "observability/dashboards.rs"]
mod dashboards;
#[allow(dead_code)]
#[path = "observability/prometheus.rs"]
mod prometheus;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use prometheus::{INSTALL, Prometheus};
use support::cluster::{free_port, require_tool, temp_dir, tool};

const HOUR: i64 = 3600;
/// 2026-10-01T00:00:00Z and 2026-11-01T00:00:00Z.
const FROM: i64 = 1_790_812_800;
const TO: i64 = FROM + 31 * 24 * HOUR;
const SCRAPE: i64 = 120;
const J_PER_KWH: f64 = 3.6e6;

struct Node {
    name: &'static str,
    zone: &'static str,
    signal: &'static str,
    /// Share of its power that a meter measures.
    measured: f64,
    idle_watts: f64,
    /// (start, end) of the agent being down: nothing counted, counters restart after.
    down: Option<(i64, i64)>,
    /// Restarts without downtime: counters start again from 0.
    restart: Option<i64>,
    /// (start, end) when Prometheus scraped nothing; the agent kept counting.
    scrape_gap: Option<(i64, i64)>,
}

struct Pod {
    node: &'static str,
    namespace: &'static str,
    name: &'static str,
    /// Share of the node's dynamic power.
    share: f64,
    start: i64,
}

const DAY: i64 = 24 * HOUR;

fn nodes() -> Vec<Node> {
    vec![
        Node {
            name: "n1",
            zone: "DE",
            signal: "average",
            measured: 0.6,
            idle_watts: 90.0,
            down: None,
            restart: Some(FROM + 24 * DAY + 14 * HOUR + 32 * 60),
            scrape_gap: Some((
                FROM + 7 * DAY + 3 * HOUR + 10 * 60,
                FROM + 7 * DAY + 6 * HOUR + 40 * 60,
            )),
        },
        Node {
            name: "n2",
            zone: "FR",
            signal: "average",
            measured: 0.0,
            idle_watts: 60.0,
            down: Some((
                FROM + 14 * DAY + 12 * HOUR + 20 * 60,
                FROM + 14 * DAY + 17 * HOUR + 50 * 60,
            )),
            restart: None,
            scrape_gap: None,
        },
        Node {
            name: "n3",
            zone: "US-CAL-CISO",
            signal: "marginal",
            measured: 0.8,
            idle_watts: 120.0,
            down: None,
            // The first sample of an hour, 32 minutes after job-late began: its counter
            // falls at the hour's start and passes its old value within the hour.
            restart: Some(FROM + 19 * DAY + 10 * HOUR + SCRAPE),
            scrape_gap: None,
        },
    ]
}

fn pods() -> Vec<Pod> {
    let month = FROM - 2 * HOUR;
    let pod = |node, namespace, name, share, start| Pod {
        node,
        namespace,
        name,
        share,
        start,
    };
    vec![
        pod("n1", "shop", "web-7d9f8b6c5d-x2k4p", 0.5, month),
        pod("n1", "batch", "etl-28473920-bq5zk", 0.3, month),
        pod("n2", "shop", "web-7d9f8b6c5d-m9wrt", 0.7, month),
        pod("n3", "batch", "train-0", 0.4, month),
        pod(
            "n3",
            "batch",
            "job-late-5zq8r",
            0.5,
            FROM + 19 * DAY + 9 * HOUR + 30 * 60,
        ),
    ]
}

/// A deterministic value in [0, 1) for `(a, b)`.
fn noise(a: i64, b: u64) -> f64 {
    let mut x =
        (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Intensity of `zone` in the hour ending at `hour_end`, constant over the hour.
fn intensity(zone: &str, hour_end: i64) -> f64 {
    let (base, swing, salt) = match zone {
        "DE" => (250.0, 300.0, 1),
        "FR" => (30.0, 90.0, 2),
        _ => (150.0, 300.0, 3),
    };
    (base + swing * noise(hour_end, salt)).round()
}

/// The end of the hour (H − 1 h, H] holding `t`.
fn hour_of(t: i64) -> i64 {
    (t + HOUR - 1).div_euclid(HOUR) * HOUR
}

/// What the simulation booked to one (hour, key).
#[derive(Clone, Copy, Default, Debug)]
struct Booked {
    joules: f64,
    measured_joules: f64,
    grams: f64,
}

impl Booked {
    fn add(&mut self, other: Booked) {
        self.joules += other.joules;
        self.measured_joules += other.measured_joules;
        self.grams += other.grams;
    }
}

/// The synthetic month: OpenMetrics text and the truth, booked by hour.
struct Month {
    openmetrics: String,
    /// (hour, node).
    nodes: BTreeMap<(i64, &'static str), Booked>,
    /// (hour, node, namespace).
    pods: BTreeMap<(i64, &'static str, &'static str), Booked>,
    samples: usize,
}

/// (Unix seconds, value) of one series.
type Samples = Vec<(i64, f64)>;

fn simulate() -> Month {
    let nodes = nodes();
    let pods = pods();
    // family → series labels → samples.
    let mut families: BTreeMap<&str, BTreeMap<String, Samples>> = BTreeMap::new();
    let mut truth_nodes: BTreeMap<(i64, &'static str), Booked> = BTreeMap::new();
    let mut truth_pods: BTreeMap<(i64, &'static str, &'static str), Booked> = BTreeMap::new();
    let mut samples = 0;
    for (n, node) in nodes.iter().enumerate() {
        let common = format!(
            "instance=\"10.0.0.{}:9464\",job=\"carbon-kube\",node=\"{}\"",
            n + 1,
            node.name
        );
        let mine: Vec<&Pod> = pods.iter().filter(|p| p.node == node.name).collect();
        // Counters since the agent's start: measured J, modelled J, grams; per pod J, grams.
        let mut counters = [0.0f64; 3];
        let mut pod_counters = vec![[0.0f64; 2]; mine.len()];
        // What the next sample will report, for the truth.
        let mut pending = Booked::default();
        let mut pending_pods = vec![Booked::default(); mine.len()];
        let mut t = FROM - 2 * HOUR;
        while t <= TO + HOUR {
            let up = node.down.is_none_or(|(a, b)| t <= a || t > b);
            if node.restart == Some(t) || node.down.is_some_and(|(_, b)| t > b && t - SCRAPE <= b) {
                counters = [0.0; 3];
                pod_counters.iter_mut().for_each(|c| *c = [0.0; 2]);
            }
            if t > FROM - 2 * HOUR && up {
                // The interval (t − SCRAPE, t] at this power and the hour's intensity.
                let watts = node.idle_watts + 150.0 * noise(t, n as u64 + 10);
                let joules = watts * SCRAPE as f64;
                let grams_per_kwh = intensity(node.zone, hour_of(t));
                let measured = joules * node.measured;
                let grams = joules / J_PER_KWH * grams_per_kwh;
                counters[0] += measured;
                counters[1] += joules - measured;
                counters[2] += grams;
                pending.add(Booked {
                    joules,
                    measured_joules: measured,
                    grams,
                });
                for (i, pod) in mine.iter().enumerate() {
                    if t - SCRAPE < pod.start {
                        continue;
                    }
                    let pod_joules = (watts - node.idle_watts) * pod.share * SCRAPE as f64;
                    let pod_grams = pod_joules / J_PER_KWH * grams_per_kwh;
                    pod_counters[i][0] += pod_joules;
                    pod_counters[i][1] += pod_grams;
                    pending_pods[i].add(Booked {
                        joules: pod_joules,
                        measured_joules: pod_joules * node.measured,
                        grams: pod_grams,
                    });
                }
            }
            let scraped = up && node.scrape_gap.is_none_or(|(a, b)| t < a || t > b);
            if scraped {
                let mut push = |family: &'static str, labels: String, value: f64| {
                    families
                        .entry(family)
                        .or_default()
                        .entry(labels)
                        .or_default()
                        .push((t, value));
                    samples += 1;
                };
                if node.measured > 0.0 {
                    push(
                        "carbon_kube_node_energy_joules",
                        format!("{common},source=\"measured\""),
                        counters[0],
                    );
                }
                push(
                    "carbon_kube_node_energy_joules",
                    format!("{common},source=\"modelled\""),
                    counters[1],
                );
                push(
                    "carbon_kube_node_emitted_grams",
                    common.clone(),
                    counters[2],
                );
                let grid = format!("{common},signal=\"{}\",zone=\"{}\"", node.signal, node.zone);
                push("carbon_kube_node_grid_info", grid, 1.0);
                for (i, pod) in mine.iter().enumerate() {
                    if t < pod.start {
                        continue;
                    }
                    let labels = format!(
                        "{common},namespace=\"{}\",pod=\"{}\"",
                        pod.namespace, pod.name
                    );
                    push(
                        "carbon_kube_pod_energy_joules",
                        labels.clone(),
                        pod_counters[i][0],
                    );
                    push("carbon_kube_pod_emitted_grams", labels, pod_counters[i][1]);
                }
                // The sample reports everything since the last one: book it to its hour.
                if t > FROM && t <= TO {
                    let hour = hour_of(t);
                    truth_nodes
                        .entry((hour, node.name))
                        .or_default()
                        .add(pending);
                    for (i, pod) in mine.iter().enumerate() {
                        let key = (hour, node.name, pod.namespace);
                        truth_pods.entry(key).or_default().add(pending_pods[i]);
                    }
                }
                pending = Booked::default();
                pending_pods.iter_mut().for_each(|p| *p = Booked::default());
            }
            t += SCRAPE;
        }
    }
    let mut openmetrics = String::new();
    for (family, series) in &families {
        let kind = if family.ends_with("_info") {
            "gauge"
        } else {
            "counter"
        };
        writeln!(openmetrics, "# TYPE {family} {kind}").unwrap();
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (labels, points) in series {
            for (t, v) in points {
                writeln!(openmetrics, "{family}{suffix}{{{labels}}} {v} {t}").unwrap();
            }
        }
    }
    openmetrics.push_str("# EOF\n");
    Month {
        openmetrics,
        nodes: truth_nodes,
        pods: truth_pods,
        samples,
    }
}

/// The simulation's totals per report row (group, signal): kWh, measured kWh, g, g saved.
fn expected(month: &Month, by: &str) -> BTreeMap<(String, String), [f64; 4]> {
    let node_info: BTreeMap<&str, (&str, &str)> = nodes()
        .iter()
        .map(|n| (n.name, (n.zone, n.signal)))
        .collect();
    // The dashboard's saving: pod energy at the mean intensity of the nodes of its
    // signal that hour, less what it emitted.
    let mut means: BTreeMap<(i64, &str), (f64, f64)> = BTreeMap::new();
    for ((hour, node), b) in &month.nodes {
        let m = means.entry((*hour, node_info[node].1)).or_default();
        m.0 += b.grams / (b.joules / J_PER_KWH);
        m.1 += 1.0;
    }
    let mut rows: BTreeMap<(String, String), [f64; 4]> = BTreeMap::new();
    let mut add = |group: &str, signal: &str, b: Booked, saved: f64| {
        let row = rows
            .entry((group.to_string(), signal.to_string()))
            .or_default();
        row[0] += b.joules / J_PER_KWH;
        row[1] += b.measured_joules / J_PER_KWH;
        row[2] += b.grams;
        row[3] += saved;
    };
    let mut pods_of: BTreeMap<(i64, &str), (Booked, f64)> = BTreeMap::new();
    for ((hour, node, namespace), b) in &month.pods {
        let signal = node_info[node].1;
        let (sum, count) = means[&(*hour, signal)];
        let saved = b.joules / J_PER_KWH * sum / count - b.grams;
        let entry = pods_of.entry((*hour, node)).or_default();
        entry.0.add(*b);
        entry.1 += saved;
        if by == "namespace" {
            add(namespace, signal, *b, saved);
        }
    }
    for ((hour, node), b) in &month.nodes {
        let (zone, signal) = node_info[node];
        let (pods, saved) = pods_of.get(&(*hour, *node)).copied().unwrap_or_default();
        match by {
            "node" => add(node, signal, *b, saved),
            "zone" => add(zone, signal, *b, saved),
            _ => {
                let rest = Booked {
                    joules: b.joules - pods.joules,
                    measured_joules: b.measured_joules - pods.measured_joules,
                    grams: b.grams - pods.grams,
                };
                add("(not attributed to pods)", signal, rest, 0.0);
            }
        }
    }
    rows
}

const SSCONVERT: &str = "install gnumeric's ssconvert: apt-get install gnumeric \
    (tests/tools/install.sh does it when run as root)";

/// Gnumeric imports the CSV into a workbook (.xlsx) and exports it back: the
/// header row comes back as it was, the names as text, and every figure as
/// the same number, formatted as a number cell (16.770 comes back 16.77).
fn opens_in_a_spreadsheet(csv: &Path, records: &[Vec<String>]) {
    require_tool("ssconvert", SSCONVERT);
    let xlsx = csv.with_extension("xlsx");
    let back = csv.with_extension("back.csv");
    for (from, to) in [(csv, &xlsx), (&xlsx, &back)] {
        let out = Command::new(tool("ssconvert"))
            .arg(from)
            .arg(to)
            .output()
            .expect("running ssconvert");
        assert!(
            out.status.success(),
            "ssconvert {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sheet = parse_csv(&std::fs::read_to_string(&back).expect("the exported sheet"));
    assert_eq!(sheet.len(), records.len(), "{sheet:?}");
    assert_eq!(sheet[0], records[0], "the header row");
    let mut reformatted = 0;
    for (cells, fields) in sheet.iter().zip(records).skip(1) {
        assert_eq!(cells[..2], fields[..2], "names stay text");
        for (cell, field) in cells[2..].iter().zip(&fields[2..]) {
            let number = |s: &str| s.parse::<f64>().unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert!(
                (number(cell) - number(field)).abs() < 1e-9,
                "{cell} vs {field}"
            );
            reformatted += usize::from(cell != field);
        }
    }
    assert!(reformatted > 0, "no figure was read as a number: {sheet:?}");
}

/// RFC 4180 records, as a spreadsheet imports them.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the last record has no line end"
    );
    records
}

fn report(prometheus: &str, by: &str, csv: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .args([
            "report",
            "--prometheus",
            prometheus,
            "--from",
            "2026-10-01",
            "--to",
        ])
        .args(["2026-11-01", "--by", by, "--csv"])
        .arg(csv)
        .output()
        .expect("running carbon-kube report");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_month_of_synthetic_counters_is_reported_to_the_gram() {
    require_tool("promtool", INSTALL);
    require_tool("prometheus", INSTALL);
    let month = simulate();
    let work = temp_dir("ck-report");
    let input = work.join("month.om.txt");
    std::fs::write(&input, &month.openmetrics).expect("writing OpenMetrics");
    let tsdb = work.join("tsdb");
    let backfill = Command::new(tool("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&input)
        .arg(&tsdb)
        .output()
        .expect("promtool");
    assert!(
        backfill.status.success(),
        "promtool create-blocks-from openmetrics: {}",
        String::from_utf8_lossy(&backfill.stderr)
    );
    std::fs::remove_file(&input).expect("removing the input");
    let prom = Prometheus::serve_blocks(&work, &tsdb);
    let url = format!("http://{}", prom.addr);
    println!(
        "{} samples backfilled over {} days",
        month.samples,
        (TO - FROM) / DAY
    );

    for by in ["namespace", "node", "zone"] {
        let csv = work.join(format!("{by}.csv"));
        let started = std::time::Instant::now();
        let (ok, stdout, stderr) = report(&url, by, &csv);
        println!("report --by {by} took {:?}", started.elapsed());
        assert!(ok, "report --by {by} failed: {stderr}\n{}", prom.log());
        assert!(stdout.contains("location-based"), "{stdout}");
        println!("{stdout}");
        let records = parse_csv(&std::fs::read_to_string(&csv).expect("the CSV"));
        opens_in_a_spreadsheet(&csv, &records);
        assert_eq!(
            records[0],
            [
                by,
                "signal",
                "energy_kWh",
                "measured_share_percent",
                "emissions_kgCO2e",
                "saved_vs_carbon_agnostic_kgCO2e"
            ],
            "units in the header row"
        );
        let expected = expected(&month, by);
        let mut got: BTreeMap<(String, String), [f64; 4]> = BTreeMap::new();
        for record in &records[1..] {
            assert_eq!(record.len(), 6, "{record:?}");
            let number = |i: usize| {
                record[i]
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{record:?}: {e}"))
            };
            got.insert(
                (record[0].clone(), record[1].clone()),
                [number(2), number(3), number(4), number(5)],
            );
        }
        // A total per signal: location-based and marginal CO2e are never added up.
        let totals: BTreeMap<String, [f64; 4]> = got
            .iter()
            .filter(|((group, _), _)| group == "total")
            .map(|((_, signal), figures)| (signal.clone(), *figures))
            .collect();
        got.retain(|(group, _), _| group != "total");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "--by {by}: rows"
        );
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (key, want) in &expected {
            let have = got[key];
            let share = if want[0] > 0.0 {
                want[1] / want[0] * 100.0
            } else {
                0.0
            };
            let grams = |kg: f64| kg * 1000.0;
            println!(
                "--by {by} {key:?}: {:.3} kWh (known {:.6}), {:.0} g (known {:.3}), saved {:.0} g (known {:.3})",
                have[0],
                want[0],
                grams(have[2]),
                want[2],
                grams(have[3]),
                want[3]
            );
            assert!(
                (have[0] - want[0]).abs() <= 0.0005 + 1e-9,
                "--by {by} {key:?} kWh: {have:?} vs {want:?}"
            );
            assert!(
                (grams(have[2]) - want[2]).abs() <= 0.5 + 1e-6,
                "--by {by} {key:?} CO2e to the gram: {have:?} vs {want:?}"
            );
            assert!(
                (grams(have[3]) - want[3]).abs() <= 0.5 + 1e-6,
                "--by {by} {key:?} saved to the gram: {have:?} vs {want:?}"
            );
            assert!(
                (have[1] - share).abs() <= 0.05 + 1e-9,
                "--by {by} {key:?} measured %: {have:?} vs {share}"
            );
            *sums.entry(key.1.clone()).or_default() += want[2];
        }
        assert_eq!(
            totals.keys().collect::<Vec<_>>(),
            sums.keys().collect::<Vec<_>>()
        );
        for (signal, grams) in &sums {
            let total = totals[signal][2] * 1000.0;
            assert!(
                (total - grams).abs() <= 0.5 + 1e-6,
                "--by {by} total {signal}: {total} g vs {grams}"
            );
        }
    }
    dashboard_row_agrees(&prom, &month);
    drop(prom);
    let _ = std::fs::remove_dir_all(&work);
}

/// The overview dashboard's accounting row over the month agrees with the
/// known totals, within what increase() extrapolates at the range's edges.
fn dashboard_row_agrees(prom: &Prometheus, month: &Month) {
    let (_, overview) = dashboards::load_all()
        .into_iter()
        .find(|(name, _)| name == "carbon-kube-overview.json")
        .expect("the overview dashboard");
    let queries = dashboards::panel_queries("overview", &overview);
    let results = |title: &str, n: usize| {
        let query = queries
            .iter()
            .filter(|q| q.panel == title)
            .nth(n)
            .unwrap_or_else(|| panic!("no query {n} in panel {title}"));
        let expr = query
            .expr
            .replace("$__range", &format!("{}h", (TO - FROM) / HOUR));
        prom.query_at(&expr, TO)
            .unwrap_or_else(|e| panic!("{title}: {e}\n{expr}"))
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .expect("a value")
                    .parse::<f64>()
                    .expect("a number");
                (s["metric"].clone(), value)
            })
            .collect::<Vec<_>>()
    };
    let value = |title: &str| results(title, 0)[0].1;
    let signal_of = |node: &str| {
        nodes()
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.signal)
            .expect("a node")
    };
    let (mut kwh, mut measured, mut grams) = (0.0, 0.0, BTreeMap::<&str, f64>::new());
    for ((_, node), b) in &month.nodes {
        kwh += b.joules / J_PER_KWH;
        measured += b.measured_joules / J_PER_KWH;
        *grams.entry(signal_of(node)).or_default() += b.grams;
    }
    let close = |what: &str, got: f64, known: f64| {
        println!("dashboard {what}: {got:.3} (known {known:.3})");
        assert!(
            (got - known).abs() <= 0.005 * known.abs(),
            "dashboard {what}: {got} vs known {known}"
        );
    };
    close("energy kWh", value("Energy (time range)"), kwh);
    close(
        "location-based kg",
        value("Location-based CO₂e (time range)"),
        grams["average"] / 1000.0,
    );
    close(
        "marginal kg",
        value("Marginal-signal CO₂e (time range)"),
        grams["marginal"] / 1000.0,
    );
    close(
        "measured share",
        value("Energy measured (share, time range)"),
        measured / kwh,
    );
    let mut namespaces: BTreeMap<(String, String), f64> = BTreeMap::new();
    for ((_, node, namespace), b) in &month.pods {
        *namespaces
            .entry((namespace.to_string(), signal_of(node).to_string()))
            .or_default() += b.joules / J_PER_KWH;
    }
    let table = results("Energy, CO₂e and saving by namespace (time range)", 0);
    assert_eq!(table.len(), namespaces.len(), "{table:?}");
    for (labels, got) in table {
        let key = (
            labels["namespace"].as_str().expect("namespace").to_string(),
            labels["signal"].as_str().expect("signal").to_string(),
        );
        close(&format!("{key:?} kWh"), got, namespaces[&key]);
    }
}

/// A server that answers every request with `body` as `content_type`.
fn serve(content_type: &str, body: &str) -> String {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_prometheus_that_is_down_or_answers_garbage_is_a_clear_error() {
    let work = temp_dir("ck-report-errors");
    let csv = work.join("r.csv");
    let fails = |prometheus: &str, says: &str| {
        let (ok, _, stderr) = report(prometheus, "namespace", &csv);
        assert!(!ok, "the report succeeded against {prometheus}");
        let named = format!("Prometheus at {prometheus}");
        assert!(
            stderr.contains(&named) && stderr.contains(says),
            "expected {named:?} and {says:?}:\n{stderr}"
        );
        assert!(!csv.exists(), "no CSV is written from a failed read");
    };
    fails(
        &format!("http://127.0.0.1:{}", free_port()),
        "transport error",
    );
    fails(
        &serve("text/html", "<html>not here</html>"),
        "malformed response",
    );
    let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
    fails(&serve("application/json", refused), "parse error");
    let nan = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"x"]]}]}}"#;
    fails(
        &serve("application/json", nan),
        "sample \"x\" is not a finite number",
    );

    let out = Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .args(["report", "--prometheus", "http://127.0.0.1:1", "--from"])
        .args(["2026-10-01T00:30:00Z", "--to", "2026-11-01"])
        .output()
        .expect("report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("--from: 2026-10-01T00:30:00Z is not on a whole hour"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_carbon-kube"))
        .args(["report", "--prometheus", "prometheus:9090", "--from"])
        .args(["2026-10-01", "--to", "2026-11-01"])
        .output()
        .expect("report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("--prometheus")
            && stderr.contains("not an http(s) URL"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&work);
}
