//! Cached watches for the controllers: a reflector store with the watch that
//! fills it, and the quiet way to log a watch that keeps failing.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

/// How every watch of the agent is opened. kube's default asks the API server
/// to end a watch after 290 s, so each follower re-opened its three watches
/// about once a minute between them: the one request a follower made in its
/// steady state. A timeout of 0 leaves the length to the server
/// (`--min-request-timeout`, 30 min by default, to twice that, jittered per
/// watch, so a thousand agents do not re-open together). A dead connection is
/// still found quickly: the server sends a bookmark about every minute to a
/// watch that asks for them (kube always asks), and [`READ_TIMEOUT`] cuts a
/// connection silent for longer, so the watcher resumes.
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(0)
}

/// The longest an API-server connection may stay silent: over two of the
/// bookmark periods that keep an idle watch talking, and far above any answer
/// to a plain request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(150);

/// What a watched object carries that the agent never reads, dropped as it
/// arrives so that caches hold only the rest: every object's managedFields
/// (often larger than a small object itself) and a Node's list of the images
/// it holds (up to 50 entries by default, each with its digests).
pub trait Slim: Resource {
    fn slim(&mut self) {
        self.meta_mut().managed_fields = None;
    }
}

impl Slim for Node {
    fn slim(&mut self) {
        self.meta_mut().managed_fields = None;
        if let Some(status) = self.status.as_mut() {
            status.images = None;
        }
    }
}

impl Slim for Pod {}
impl Slim for PartialObjectMeta<Pod> {}
impl Slim for crate::crd::CarbonScore {}

/// A store of what `config` selects, slimmed, and the watch that keeps it
/// current: it retries with backoff and never ends, and must be polled for the
/// store to fill. Its items say only whether the watch works.
pub fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<(), watcher::Error>> + Send + use<K>,
)
where
    K: Resource + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, config)
        .modify(K::slim)
        .default_backoff()
        .reflect(writer)
        .map(|event| event.map(|_| ()));
    (store, events)
}

/// Logs a watch's failures (the watcher retries with backoff) as a warning
/// when they start, then at debug until the watch recovers, so a missing
/// permission does not flood the log.
pub struct FailureLog {
    what: String,
    hint: &'static str,
    failing: bool,
}

impl FailureLog {
    /// `what` names the watch; `hint`, appended to the warning, says what it needs.
    pub fn new(what: String, hint: &'static str) -> Self {
        Self {
            what,
            hint,
            failing: false,
        }
    }

    pub fn see(&mut self, event: &Result<(), watcher::Error>) {
        let what = &self.what;
        match event {
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(error = %e, "{what} watch failed; retrying{}", self.hint);
            }
            Err(e) => debug!(error = %e, "{what} watch still failing"),
            Ok(()) => self.failing = false,
        }
    }
}

/// A cached kind: its store and the watch that fills it.
pub type Cached<K> = (
    Store<K>,
    std::pin::Pin<Box<dyn Stream<Item = Result<(), watcher::Error>> + Send>>,
);

/// Every node and every CarbonScore, cached as the planning loops (deferral,
/// the Kueue check) read them: allocatable CPU and zones, forecasts.
pub fn nodes_and_scores(client: &kube::Client) -> (Cached<Node>, Cached<crate::crd::CarbonScore>) {
    let (nodes, node_events) = cached(Api::all(client.clone()), config());
    let (scores, score_events) = cached(Api::all(client.clone()), config());
    (
        (nodes, Box::pin(node_events)),
        (scores, Box::pin(score_events)),
    )
}

/// The rounds of a leader loop: one every `every`, and one as soon as a watch
/// reports a change, so a new object is acted on without waiting for the tick.
pub struct Rounds {
    ticker: tokio::time::Interval,
    changed: tokio::sync::watch::Receiver<()>,
}

impl Rounds {
    pub fn new(every: std::time::Duration, changed: tokio::sync::watch::Receiver<()>) -> Self {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ticker, changed }
    }

    /// Waits for the next round; `false` once every watch is gone.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            changed = self.changed.changed() => changed.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_failing_watch_warns_once_until_it_recovers() {
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut log = FailureLog::new("test: pod".into(), " (needs RBAC)");
            let failed = || Err(watcher::Error::NoResourceVersion);
            for event in [failed(), failed(), Ok(()), failed()] {
                log.see(&event);
            }
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let levels: Vec<&str> = text
            .lines()
            .map(|line| {
                if line.contains("WARN") {
                    "warn"
                } else {
                    "debug"
                }
            })
            .collect();
        assert_eq!(levels, ["warn", "debug", "warn"], "{text}");
        assert!(
            text.contains("test: pod watch failed; retrying (needs RBAC)"),
            "{text}"
        );
    }

    #[test]
    fn a_slim_node_keeps_what_the_agent_reads_and_drops_managed_fields_and_images() {
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "n1",
                "labels": { "carbon-kube.io/grid-zone": "DE" },
                "managedFields": [{ "manager": "kubelet", "operation": "Update" }]
            },
            "spec": { "taints": [{ "key": "carbon-kube.io/high-intensity", "effect": "PreferNoSchedule" }] },
            "status": {
                "conditions": [{ "type": "Ready", "status": "True" }],
                "images": [{ "names": ["registry.example/app@sha256:00"], "sizeBytes": 1 }]
            }
        }))
        .unwrap();
        let mut expected = node.clone();
        expected.metadata.managed_fields = None;
        expected.status.as_mut().unwrap().images = None;
        node.slim();
        assert_eq!(node, expected);
        assert_eq!(node.spec.unwrap().taints.unwrap().len(), 1);
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
