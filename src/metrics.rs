//! Prometheus metrics and the node-local HTTP server (/metrics, /healthz, /readyz).
//! Names follow Prometheus conventions: prefix `carbon_kube_`, units in names,
//! counters end in `_total`, labels bounded (zones, providers, outcomes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::providers::Attempt;

pub struct Metrics {
    registry: Registry,
    pub zone_intensity: GaugeVec,
    pub node_power_watts: Gauge,
    pub node_emissions_rate: Gauge,
    pub node_emitted_grams: Counter,
    pub node_emission_score: Gauge,
    pub node_cpu_utilisation: Gauge,
    pub threshold: Gauge,
    pub tainted: IntGauge,
    pub taint_transitions: IntCounter,
    pub data_age_seconds: Gauge,
    pub provider_requests: CounterVec,
    pub provider_errors: CounterVec,
    pub provider_duration: HistogramVec,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub poll_duration: Histogram,
    pub node_write_errors: IntCounter,
    pub ready: AtomicBool,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are static and unique: a failure here is a programming error caught by the tests.
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        panic!("metric registration failed: {e}");
    }
    metric
}

impl Metrics {
    pub fn new(node: &str) -> Arc<Self> {
        let labels = HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(Some("carbon_kube".into()), Some(labels))
            .unwrap_or_else(|_| Registry::new());
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                Gauge::with_opts(Opts::new(name, help)).expect("valid gauge"),
            )
        };
        let metrics = Self {
            zone_intensity: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "zone_intensity_grams_per_kwh",
                        "Carbon intensity of a grid zone in gCO2eq/kWh.",
                    ),
                    &["zone", "source"],
                )
                .expect("valid gauge"),
            ),
            node_power_watts: gauge(
                "node_power_watts",
                "Estimated power draw of this node in watts, including PUE.",
            ),
            node_emissions_rate: gauge(
                "node_emissions_grams_per_hour",
                "CO2eq emission rate of this node in grams per hour.",
            ),
            node_emitted_grams: register(
                &registry,
                Counter::new(
                    "node_emitted_grams_total",
                    "CO2eq emitted by this node since the agent started, in grams.",
                )
                .expect("valid counter"),
            ),
            node_emission_score: gauge(
                "node_emission_score_grams_per_vcpu_hour",
                "Marginal CO2eq of one more busy vCPU-hour on this node, in grams.",
            ),
            node_cpu_utilisation: gauge(
                "node_cpu_utilisation_ratio",
                "Host CPU utilisation used by the power model (0 to 1).",
            ),
            threshold: gauge(
                "threshold_grams_per_kwh",
                "Threshold in force for this node's zone, in gCO2eq/kWh.",
            ),
            tainted: register(
                &registry,
                IntGauge::new(
                    "node_tainted",
                    "1 while this node carries the carbon taint.",
                )
                .expect("valid gauge"),
            ),
            taint_transitions: register(
                &registry,
                IntCounter::new(
                    "taint_transitions_total",
                    "Times this agent added or removed the carbon taint.",
                )
                .expect("valid counter"),
            ),
            data_age_seconds: gauge(
                "data_age_seconds",
                "Age of the carbon data for this node's zone, in seconds.",
            ),
            provider_requests: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "provider_requests_total",
                        "Carbon API requests by provider and outcome.",
                    ),
                    &["provider", "outcome"],
                )
                .expect("valid counter"),
            ),
            provider_errors: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "provider_errors_total",
                        "Failed carbon API requests by provider and outcome.",
                    ),
                    &["provider", "outcome"],
                )
                .expect("valid counter"),
            ),
            provider_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "provider_request_duration_seconds",
                        "Carbon API request latency.",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                    &["provider"],
                )
                .expect("valid histogram"),
            ),
            is_leader: register(
                &registry,
                IntGauge::new("is_leader", "1 while this agent holds the leader Lease.")
                    .expect("valid gauge"),
            ),
            leader_changes: register(
                &registry,
                IntCounter::new(
                    "leader_changes_total",
                    "Times this agent gained or lost leadership.",
                )
                .expect("valid counter"),
            ),
            poll_duration: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "poll_duration_seconds",
                        "Duration of one leader poll of all zones.",
                    )
                    .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                )
                .expect("valid histogram"),
            ),
            node_write_errors: register(
                &registry,
                IntCounter::new(
                    "node_write_errors_total",
                    "Failed writes of the taint, label or condition to this node.",
                )
                .expect("valid counter"),
            ),
            ready: AtomicBool::new(false),
            registry,
        };
        let build = register(
            &metrics.registry,
            GaugeVec::new(
                Opts::new("build_info", "Build information; always 1."),
                &["version"],
            )
            .expect("valid gauge"),
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        Arc::new(metrics)
    }

    /// Counts one chain fetch's provider attempts.
    pub fn record_attempts(&self, attempts: &[Attempt]) {
        for attempt in attempts {
            self.provider_requests
                .with_label_values(&[attempt.provider, attempt.outcome])
                .inc();
            self.provider_duration
                .with_label_values(&[attempt.provider])
                .observe(attempt.seconds);
            if attempt.outcome != "ok" {
                self.provider_errors
                    .with_label_values(&[attempt.provider, attempt.outcome])
                    .inc();
            }
        }
    }

    /// Sets the intensity of `zone`, dropping the series of any other source for it.
    pub fn set_zone_intensity(&self, zone: &str, source: &str, grams_per_kwh: f64) {
        use prometheus::core::Collector;
        let stale: Vec<String> = self
            .zone_intensity
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|metric| {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                (label("zone").as_deref() == Some(zone))
                    .then(|| label("source"))
                    .flatten()
            })
            .filter(|old| old != source)
            .collect();
        for old in stale {
            let _ = self.zone_intensity.remove_label_values(&[zone, &old]);
        }
        self.zone_intensity
            .with_label_values(&[zone, source])
            .set(grams_per_kwh);
    }

    pub fn set_leader(&self, leader: bool) {
        if (self.is_leader.get() == 1) != leader {
            self.leader_changes.inc();
        }
        self.is_leader.set(i64::from(leader));
    }

    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn route(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            respond(StatusCode::OK, "text/plain", "ok\n".into())
        }
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "waiting for carbon data\n".into(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Binds first so that a busy port fails the start, not a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => { warn!(error = %e, "accept failed"); continue }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&metrics, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_catalogue_with_node_label() {
        let metrics = Metrics::new("node-a");
        metrics.set_zone_intensity("DE", "electricity-maps", 412.0);
        metrics.record_attempts(&[
            Attempt {
                provider: "electricity-maps",
                outcome: "timeout",
                seconds: 10.0,
            },
            Attempt {
                provider: "static",
                outcome: "ok",
                seconds: 0.0,
            },
        ]);
        let text = metrics.encode();
        let has = |name: &str, labels: &[&str], value: &str| {
            text.lines().any(|line| {
                line.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|l| line.contains(l))
                    && line.ends_with(&format!(" {value}"))
            })
        };
        assert!(
            has(
                "carbon_kube_zone_intensity_grams_per_kwh",
                &[
                    "node=\"node-a\"",
                    "zone=\"DE\"",
                    "source=\"electricity-maps\""
                ],
                "412"
            ),
            "{text}"
        );
        assert!(
            has(
                "carbon_kube_provider_errors_total",
                &["outcome=\"timeout\"", "provider=\"electricity-maps\""],
                "1"
            ),
            "{text}"
        );
        assert!(!text.contains("carbon_kube_provider_errors_total{node=\"node-a\",outcome=\"ok\""));
        for name in [
            "carbon_kube_build_info",
            "carbon_kube_node_emitted_grams_total",
            "carbon_kube_taint_transitions_total",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    #[test]
    fn a_zone_keeps_one_source_series() {
        let metrics = Metrics::new("n");
        metrics.set_zone_intensity("DE", "electricity-maps", 400.0);
        metrics.set_zone_intensity("DE", "static", 380.0);
        let text = metrics.encode();
        assert!(!text.contains("source=\"electricity-maps\""), "{text}");
        assert!(text.contains("source=\"static\""));
    }

    #[test]
    fn readiness_follows_the_flag() {
        let metrics = Metrics::new("n");
        assert_eq!(
            route(&metrics, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.ready.store(true, Ordering::Relaxed);
        assert_eq!(route(&metrics, "/readyz").status(), StatusCode::OK);
        assert_eq!(route(&metrics, "/healthz").status(), StatusCode::OK);
        assert_eq!(route(&metrics, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
