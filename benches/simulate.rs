//! Simulator scale: a year of hourly data × 8 zones × 1,000 nodes × 10,000 jobs,
//! every policy, then a 33-point threshold sweep. Prints wall time and peak RSS.
//!
//! `cargo bench --bench simulate`

use std::path::Path;
use std::time::Instant;

use carbon_kube_sim::experiment::{ClusterConfig, hourly_year, replay};
use carbon_kube_sim::report;
use carbon_kube_sim::trace;
use carbon_kube_sim::workload::WorkloadParams;

/// Peak resident set size of this process (kB), from the kernel's own accounting.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/eia930-sustaindc_2022");
    let started = Instant::now();
    let traces = trace::load_dir(&dir)?;
    let series = hourly_year(&traces, 2022)?;
    let loaded = started.elapsed();
    let config = ClusterConfig {
        nodes: 1_000,
        workload: WorkloadParams {
            jobs: 10_000,
            ..WorkloadParams::default()
        },
        ..ClusterConfig::default()
    };
    let zones = series.len();
    let hours = series.first().map_or(0, |s| s.grams_per_kwh.len());

    let started = Instant::now();
    let r = replay(&config, series.clone(), &[])?;
    let all_policies = started.elapsed();
    print!("{}", report::text(&report::rows(&r)));

    let started = Instant::now();
    // 25 to 800 g/kWh, then never tainting.
    let grid: Vec<f64> = (1..=32)
        .map(|i| f64::from(i) * 25.0)
        .chain(std::iter::once(f64::INFINITY))
        .collect();
    for &threshold in &grid {
        let config = ClusterConfig {
            threshold_grams_per_kwh: threshold,
            ..config.clone()
        };
        replay(&config, series.clone(), &[])?;
    }
    let sweep = started.elapsed();

    println!(
        "\nsimulate: {hours} h × {zones} zones × {} nodes × {} jobs",
        config.nodes, config.workload.jobs
    );
    println!(
        "  load traces                      {:>8.3} s",
        loaded.as_secs_f64()
    );
    let rows = r.outcomes.len();
    println!(
        "  all {rows} rows, one year            {:>8.3} s",
        all_policies.as_secs_f64()
    );
    println!(
        "  sweep: {} thresholds × {rows} rows  {:>8.3} s ({:.3} s per replay)",
        grid.len(),
        sweep.as_secs_f64(),
        sweep.as_secs_f64() / grid.len() as f64
    );
    match peak_rss_kb() {
        Some(kb) => println!(
            "  peak RSS (VmHWM)                 {:>8.1} MiB",
            kb as f64 / 1024.0
        ),
        None => println!("  peak RSS: /proc/self/status not readable"),
    }
    Ok(())
}
