//! Footprint and scrape cost of the agent that ships (the static release binary
//! of deploy/build-static.sh, built here if it is not up to date) against the
//! real test control plane, side by side with `prometheus-node-exporter`
//! (Debian) on the same machine in the same run; then where the agent's memory
//! goes: its resident pages by mapping and by ELF section of its binary.
//!
//! `cargo bench --bench footprint` (env: FOOTPRINT_SECONDS=300 per phase,
//! WRK_SECONDS=10). Needs `wrk`, `prometheus-node-exporter` and `readelf`
//! (`apt-get install wrk prometheus-node-exporter binutils`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::carbon_api::{CarbonApi, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, free_port, http_get, require_tool, wait_for};
use support::deploy::build_static;
use support::procfs::cpu_seconds;

const PAGE: u64 = 4096;

/// A `/proc/PID/status` field in KiB (or a count, for `Threads:`).
fn status_field(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Usage {
    rss_sum: f64,
    anon_sum: f64,
    file_sum: f64,
    rss_max: f64,
    samples: f64,
    millicores: f64,
}

impl Usage {
    fn mean_mib(&self, sum: f64) -> f64 {
        sum / self.samples / 1024.0
    }
}

/// Samples memory and CPU of each pid every second for `seconds`, optionally scraping each `/metrics`.
fn measure(targets: &[(u32, String)], seconds: u64, scrape: bool) -> Vec<Usage> {
    let start: Vec<f64> = targets.iter().map(|(pid, _)| cpu_seconds(*pid)).collect();
    let mut usage: Vec<Usage> = targets.iter().map(|_| Usage::default()).collect();
    let began = Instant::now();
    for second in 1..=seconds {
        for ((pid, addr), u) in targets.iter().zip(&mut usage) {
            if scrape {
                let _ = http_get(addr, "/metrics");
            }
            let rss = status_field(*pid, "VmRSS:");
            u.rss_sum += rss;
            u.anon_sum += status_field(*pid, "RssAnon:");
            u.file_sum += status_field(*pid, "RssFile:") + status_field(*pid, "RssShmem:");
            u.rss_max = u.rss_max.max(rss);
            u.samples += 1.0;
        }
        let next = began + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for ((pid, _), (u, s)) in targets.iter().zip(usage.iter_mut().zip(start)) {
        u.millicores = (cpu_seconds(*pid) - s) / seconds as f64 * 1000.0;
    }
    usage
}

struct Wrk {
    requests_per_second: f64,
    p99_ms: f64,
}

fn wrk(addr: &str, seconds: u64) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c4",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}/metrics"),
        ])
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
    };
    let ms = |v: String| {
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().unwrap_or(0.0)
        } else {
            v.trim_end_matches('s').parse::<f64>().unwrap_or(0.0) * 1000.0
        }
    };
    Wrk {
        requests_per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p99_ms: field("99%").map(ms).unwrap_or(0.0),
    }
}

fn size_mb(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// Resident KiB per mapping name (the binary's own path shortened to "binary"):
/// (all resident, of which anonymous).
fn by_mapping(pid: u32, binary: &Path) -> BTreeMap<String, (u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut name = String::new();
    let kib = |l: &str| {
        l.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
    };
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            name = match fields.get(5) {
                Some(path) if Path::new(path) == binary => "binary".into(),
                Some(path) => path.to_string(),
                None => "[anonymous]".into(),
            };
        } else if line.starts_with("Rss:") {
            out.entry(name.clone()).or_default().0 += kib(line).unwrap_or(0);
        } else if line.starts_with("Anonymous:") {
            out.entry(name.clone()).or_default().1 += kib(line).unwrap_or(0);
        }
    }
    out.retain(|_, (rss, _)| *rss > 0);
    out
}

/// The binary's sections that occupy the file: (name, file offset, size).
fn sections(binary: &Path) -> Vec<(String, u64, u64)> {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(binary)
        .output()
        .expect("running readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "  [Nr] Name Type Address Off Size ..."
            let rest = line.trim_start().strip_prefix('[')?.split_once(']')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            (f.get(1)? != &"NOBITS").then_some(())?;
            Some((f[0].to_string(), hex(f.get(3)?)?, hex(f.get(4)?)?))
        })
        .filter(|(_, _, size)| *size > 0)
        .collect()
}

/// Resident KiB of the binary's mappings per ELF section (by file offset, read
/// from /proc/PID/pagemap): (still the file's page, copied-on-write to anonymous).
fn by_section(pid: u32, binary: &Path) -> Vec<(String, u64, u64, u64)> {
    let sections = sections(binary);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("pagemap");
    let mut resident: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(5).is_none_or(|p| Path::new(p) != binary) {
            continue;
        }
        let Some((lo, hi)) = f[0].split_once('-') else {
            continue;
        };
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap_or(0),
            u64::from_str_radix(hi, 16).unwrap_or(0),
        );
        let offset = u64::from_str_radix(f[2], 16).unwrap_or(0);
        let mut entries = vec![0u8; ((hi - lo) / PAGE * 8) as usize];
        if pagemap.seek(SeekFrom::Start(lo / PAGE * 8)).is_err()
            || pagemap.read_exact(&mut entries).is_err()
        {
            continue;
        }
        for (i, entry) in entries.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            if entry >> 63 == 0 {
                continue;
            }
            let at = offset + i as u64 * PAGE;
            let section = sections
                .iter()
                .position(|(_, off, size)| *off <= at && at < off + size)
                .or_else(|| {
                    sections
                        .iter()
                        .position(|(_, off, size)| *off < at + PAGE && at < off + size)
                })
                .unwrap_or(usize::MAX);
            let slot = resident.entry(section).or_default();
            // Bit 61: a page of the file (or shared), not a private anonymous copy.
            if entry >> 61 & 1 == 1 {
                slot.0 += PAGE / 1024;
            } else {
                slot.1 += PAGE / 1024;
            }
        }
    }
    resident
        .into_iter()
        .map(|(i, (file, anon))| {
            let (name, size) = sections
                .get(i)
                .map_or(("(between sections)".to_string(), 0), |s| {
                    (s.0.clone(), s.2 / 1024)
                });
            (name, size, file, anon)
        })
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    require_tool("wrk", "apt-get install wrk");
    require_tool(
        "prometheus-node-exporter",
        "apt-get install prometheus-node-exporter",
    );
    require_tool("readelf", "apt-get install binutils");
    let seconds = env_or("FOOTPRINT_SECONDS", 300);
    let wrk_seconds = env_or("WRK_SECONDS", 10);
    let binary = build_static(&[]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let api = runtime.block_on(CarbonApi::start());
    api.set_intensity("DE", 420.0);
    let cp = ControlPlane::start();
    cp.create_node("bench-node", &[("carbon-kube.io/grid-zone", "DE")]);
    let args = vec![
        "--providers=electricity-maps".to_string(),
        format!("--electricity-maps-url={}", api.electricity_maps_url()),
    ];
    let agent = Agent::spawn_binary(
        &binary,
        &cp,
        "bench-node",
        &args,
        &[
            ("ELECTRICITY_MAPS_TOKEN", EM_TOKEN),
            ("CARBON_KUBE_LOG", "warn"),
        ],
    );
    let agent_addr = format!("127.0.0.1:{}", agent.metrics_port);
    wait_for("the agent's metrics", Duration::from_secs(30), || {
        http_get(&agent_addr, "/metrics")
    });

    let exporter_addr = format!("127.0.0.1:{}", free_port());
    let mut exporter: Child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={exporter_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus-node-exporter");
    wait_for("node_exporter's metrics", Duration::from_secs(30), || {
        http_get(&exporter_addr, "/metrics")
    });

    let agent_pid = agent.pid();
    let targets = [
        (agent_pid, agent_addr.clone()),
        (exporter.id(), exporter_addr.clone()),
    ];
    println!(
        "agent: {} ({:.1} MB)\nmeasuring {seconds} s idle, then {seconds} s scraped every second…",
        binary.display(),
        size_mb(&binary)
    );
    let idle = measure(&targets, seconds, false);
    let idle_mappings = by_mapping(agent_pid, &binary);
    let idle_sections = by_section(agent_pid, &binary);
    let scraped = measure(&targets, seconds, true);
    let agent_wrk = wrk(&agent_addr, wrk_seconds);
    let exporter_wrk = wrk(&exporter_addr, wrk_seconds);
    let series = |addr: &str| {
        http_get(addr, "/metrics").map_or(0, |m| m.lines().filter(|l| !l.starts_with('#')).count())
    };

    let exporter_path = Path::new("/usr/bin/prometheus-node-exporter");
    println!("\n| measure | carbon-kube agent | node_exporter | ratio |\n|---|---|---|---|");
    let row = |name: &str, ours: f64, peer: f64, unit: &str| {
        // Below the sampling resolution a ratio means nothing.
        let ratio = if peer > 1e-6 {
            format!("{:.2}", ours / peer)
        } else {
            "–".into()
        };
        println!("| {name} | {ours:.2} {unit} | {peer:.2} {unit} | {ratio} |");
    };
    let both = |f: &dyn Fn(&Usage) -> f64| (f(&idle[0]), f(&idle[1]));
    let (ours, peer) = both(&|u| u.mean_mib(u.rss_sum));
    row("RSS idle (mean)", ours, peer, "MiB");
    let (ours, peer) = both(&|u| u.mean_mib(u.anon_sum));
    row(
        "of which anonymous (heap, stacks, written data)",
        ours,
        peer,
        "MiB",
    );
    let (ours, peer) = both(&|u| u.mean_mib(u.file_sum));
    row(
        "of which file pages (mostly its own binary)",
        ours,
        peer,
        "MiB",
    );
    row(
        "RSS scraped 1/s (max)",
        scraped[0].rss_max / 1024.0,
        scraped[1].rss_max / 1024.0,
        "MiB",
    );
    row(
        "RSS peak, after wrk (VmHWM)",
        status_field(agent_pid, "VmHWM:") / 1024.0,
        status_field(exporter.id(), "VmHWM:") / 1024.0,
        "MiB",
    );
    row(
        "CPU idle",
        idle[0].millicores,
        idle[1].millicores,
        "millicores",
    );
    row(
        "CPU scraped 1/s",
        scraped[0].millicores,
        scraped[1].millicores,
        "millicores",
    );
    row(
        "threads",
        status_field(agent_pid, "Threads:"),
        status_field(exporter.id(), "Threads:"),
        "",
    );
    row(
        "wrk /metrics (4 conns)",
        agent_wrk.requests_per_second,
        exporter_wrk.requests_per_second,
        "req/s",
    );
    row("wrk p99", agent_wrk.p99_ms, exporter_wrk.p99_ms, "ms");
    row(
        "series per scrape",
        series(&agent_addr) as f64,
        series(&exporter_addr) as f64,
        "",
    );
    row(
        "binary size",
        size_mb(&binary),
        size_mb(exporter_path),
        "MB",
    );

    println!("\nagent, idle: resident KiB by mapping (all, of which anonymous)");
    for (name, (rss, anon)) in &idle_mappings {
        println!("  {name:<40} {rss:>7} {anon:>7}");
    }
    println!(
        "agent, idle: resident KiB of its binary by section (size, file pages, anonymous copies)"
    );
    for (name, size, file, anon) in &idle_sections {
        println!("  {name:<22} {size:>7} {file:>7} {anon:>7}");
    }
    let _ = exporter.kill();
    let _ = exporter.wait();
}
