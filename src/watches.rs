//! Cached watches for the controllers: a reflector store with the watch that
//! fills it, and the quiet way to log a watch that keeps failing.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Node, Pod};
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

/// kubectl's copy of the whole object as last applied, often the largest annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A leader with deferral on caches every running Pod of the cluster, so a
/// cached Pod keeps only what the planners read: its metadata, where it runs
/// or may run, its gates, its containers' names, resources and restart
/// policies, its phase and conditions. Its containers' images, commands,
/// environment, probes and mounts, its volumes, its containers' statuses and
/// kubectl's last-applied copy go as it arrives.
impl Slim for Pod {
    fn slim(&mut self) {
        let meta = self.meta_mut();
        meta.managed_fields = None;
        if let Some(annotations) = meta.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
        if let Some(spec) = self.spec.as_mut() {
            spec.volumes = None;
            spec.ephemeral_containers = None;
            let init = spec.init_containers.iter_mut().flatten();
            for container in spec.containers.iter_mut().chain(init) {
                *container = Container {
                    name: std::mem::take(&mut container.name),
                    resources: container.resources.take(),
                    restart_policy: container.restart_policy.take(),
                    ..Container::default()
                };
            }
        }
        if let Some(status) = self.status.as_mut() {
            status.container_statuses = None;
            status.init_container_statuses = None;
            status.ephemeral_container_statuses = None;
        }
    }
}
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

    #[test]
    fn a_cached_pod_keeps_what_the_planners_read_and_drops_the_bulk() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": { "app": "web" },
                "annotations": {
                    "carbon-kube.io/latest-start": "2026-11-28T12:00:00Z",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}"
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }]
            },
            "spec": {
                "nodeName": "n1",
                "nodeSelector": { "carbon-kube.io/grid-zone": "DE" },
                "schedulingGates": [{ "name": "carbon-kube.io/defer" }],
                "overhead": { "cpu": "10m" },
                "initContainers": [{
                    "name": "proxy", "image": "envoy", "restartPolicy": "Always",
                    "resources": { "requests": { "cpu": "100m" } }
                }],
                "containers": [{
                    "name": "app", "image": "registry.example/web:1",
                    "command": ["/web"], "env": [{ "name": "MODE", "value": "prod" }],
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                    "livenessProbe": { "httpGet": { "path": "/healthz", "port": 8080 } },
                    "resources": { "requests": { "cpu": "2" }, "limits": { "cpu": "4" } }
                }],
                "volumes": [{ "name": "data", "emptyDir": {} }]
            },
            "status": {
                "phase": "Running",
                "conditions": [{ "type": "PodScheduled", "status": "True",
                                 "lastTransitionTime": "2026-11-28T10:00:00Z" }],
                "containerStatuses": [{ "name": "app", "image": "web", "imageID": "sha256:00",
                                        "ready": true, "restartCount": 0 }]
            }
        }))
        .unwrap();
        let before = crate::resources::pod_cpu_request(&pod);
        pod.slim();
        assert_eq!(crate::resources::pod_cpu_request(&pod), before);
        assert!(crate::deferral::controller::is_gated(&pod));
        let meta = &pod.metadata;
        assert!(meta.managed_fields.is_none());
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        assert!(annotations.contains_key("carbon-kube.io/latest-start"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.node_selector.as_ref().unwrap().len(), 1);
        assert!(spec.volumes.is_none());
        let app = &spec.containers[0];
        assert_eq!(app.name, "app");
        assert!(app.image.is_none() && app.env.is_none() && app.command.is_none());
        assert!(app.volume_mounts.is_none() && app.liveness_probe.is_none());
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.restart_policy.as_deref(), Some("Always"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
        assert!(status.container_statuses.is_none());
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
