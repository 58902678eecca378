//! Footprint and scrape cost of `carbon-kube agent` against the real test
//! control plane, side by side with `prometheus-node-exporter` (Debian) on the
//! same machine in the same run.
//!
//! `cargo bench --bench footprint` (env: FOOTPRINT_SECONDS=300 per phase,
//! WRK_SECONDS=10). Needs `wrk` and `prometheus-node-exporter`
//! (`apt-get install wrk prometheus-node-exporter`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::carbon_api::{CarbonApi, EM_TOKEN};
use support::cluster::{Agent, ControlPlane, free_port, http_get, require_tool, wait_for};

const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / CLOCK_TICKS_PER_SECOND,
            )
        })
        .unwrap_or(0.0)
}

#[derive(Default)]
struct Usage {
    rss_sum: f64,
    rss_max: f64,
    samples: f64,
    cpu: f64,
}

/// Samples RSS and CPU of each pid every second for `seconds`, optionally scraping each `/metrics`.
fn measure(targets: &[(u32, String)], seconds: u64, scrape: bool) -> Vec<Usage> {
    let start: Vec<f64> = targets.iter().map(|(pid, _)| cpu_seconds(*pid)).collect();
    let mut usage: Vec<Usage> = targets.iter().map(|_| Usage::default()).collect();
    let began = Instant::now();
    for second in 1..=seconds {
        for ((pid, addr), u) in targets.iter().zip(&mut usage) {
            if scrape {
                let _ = http_get(addr, "/metrics");
            }
            let rss = rss_kib(*pid);
            u.rss_sum += rss;
            u.rss_max = u.rss_max.max(rss);
            u.samples += 1.0;
        }
        let next = began + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for ((pid, _), (u, s)) in targets.iter().zip(usage.iter_mut().zip(start)) {
        u.cpu = (cpu_seconds(*pid) - s) / seconds as f64 * 100.0;
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

fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}

fn main() {
    require_tool("wrk", "apt-get install wrk");
    require_tool(
        "prometheus-node-exporter",
        "apt-get install prometheus-node-exporter",
    );
    let seconds: u64 = std::env::var("FOOTPRINT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let wrk_seconds: u64 = std::env::var("WRK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let api = runtime.block_on(CarbonApi::start());
    api.set_intensity("DE", 420.0);
    let cp = ControlPlane::start();
    cp.create_node("bench-node", &[("carbon-kube.io/grid-zone", "DE")]);
    let args = vec![
        "--providers=electricity-maps".to_string(),
        format!("--electricity-maps-url={}", api.electricity_maps_url()),
    ];
    let agent = Agent::spawn(
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
    println!("measuring {seconds} s idle, then {seconds} s scraped every second…");
    let idle = measure(&targets, seconds, false);
    let scraped = measure(&targets, seconds, true);
    let agent_wrk = wrk(&agent_addr, wrk_seconds);
    let exporter_wrk = wrk(&exporter_addr, wrk_seconds);
    let series = |addr: &str| {
        http_get(addr, "/metrics").map_or(0, |m| m.lines().filter(|l| !l.starts_with('#')).count())
    };

    let exporter_path = Path::new("/usr/bin/prometheus-node-exporter");
    let static_agent = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/carbon-kube");
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
    row(
        "RSS idle (mean)",
        idle[0].rss_sum / idle[0].samples / 1024.0,
        idle[1].rss_sum / idle[1].samples / 1024.0,
        "MiB",
    );
    row(
        "RSS scraped 1/s (max)",
        scraped[0].rss_max / 1024.0,
        scraped[1].rss_max / 1024.0,
        "MiB",
    );
    row("CPU idle", idle[0].cpu, idle[1].cpu, "%");
    row("CPU scraped 1/s", scraped[0].cpu, scraped[1].cpu, "%");
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
        size_mib(&static_agent),
        size_mib(exporter_path),
        "MiB",
    );
    let _ = exporter.kill();
    let _ = exporter.wait();
}
