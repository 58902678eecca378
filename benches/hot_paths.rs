//! Hot paths of every agent: the taint decision, the power model and the
//! metrics encode. `cargo bench --bench hot_paths`.
//!
//! The peer for each is the work the agent already does around it: a
//! decision runs once per 5 s tick and an encode once per scrape, so the
//! figures are printed as a share of those periods too.

use std::hint::black_box;
use std::time::Duration;

use carbon_kube::decision::{DecisionParams, DwellState, ZoneScore, decide};
use carbon_kube::metrics::Metrics;
use carbon_kube::power::{self, PowerCoefficients};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;

fn decision(c: &mut Criterion) {
    let params = DecisionParams {
        hysteresis_grams_per_kwh: 20.0,
        dwell: Duration::from_secs(600),
        max_age: Duration::from_secs(5400),
    };
    let now = Timestamp::now();
    let score = ZoneScore {
        grams_per_kwh: 412.0,
        threshold_grams_per_kwh: 300.0,
        observed_at: now,
        taint_allowed: true,
        ranking: None,
    };
    c.bench_function("decide", |b| {
        b.iter(|| {
            decide(
                black_box(&params),
                black_box(Some(&score)),
                black_box(false),
                DwellState::default(),
                now,
            )
        })
    });
}

fn power_model(c: &mut Criterion) {
    let coefficients =
        PowerCoefficients::for_cpu("Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz", "x86_64");
    c.bench_function("node_watts + grams_per_hour", |b| {
        b.iter(|| {
            let watts = power::node_watts(black_box(&coefficients), 16.0, black_box(0.42), 64.0);
            power::grams_per_hour(watts, black_box(412.0))
        })
    });
}

fn encode(c: &mut Criterion) {
    let metrics = Metrics::new("bench-node");
    metrics.set_zone_intensity("DE", "electricity-maps", 412.0);
    c.bench_function("metrics encode", |b| b.iter(|| black_box(metrics.encode())));
}

criterion_group!(benches, decision, power_model, encode);
criterion_main!(benches);
