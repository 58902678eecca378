//! The MultiKueue dispatcher `carbon-kube.io/greenest`, run by the leader of the manager
//! cluster (`--kueue-dispatcher`). Kueue configured with `multiKueue.dispatcherName:
//! carbon-kube.io/greenest` creates a Workload's remote copies only in the worker clusters
//! named in its `status.nominatedClusterNames`; this loop names the worker whose grid zone has
//! the lowest mean forecast over the job's expected duration, and every worker of the
//! MultiKueueConfig when any worker's zone has no usable data (Kueue's all-at-once dispatch:
//! availability wins).
//!
//! A worker's zone is the label `carbon-kube.io/grid-zone` on its MultiKueueCluster; its
//! data is the manager's CarbonScore for that zone, so the manager's leader must poll it
//! (today: a manager node in that zone). Room on the workers is left to the workers' own
//! Kueue: a worker without quota keeps the copy pending.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::controller::{api_resource, cached_dynamic, notify, parse};
use super::{AdmissionCheckSpec, GROUP, VERSION, WorkloadSpec, WorkloadStatus};
use crate::carbon::GridZone;
use crate::crd::CarbonScore;
use crate::deferral::{self, ZoneSeries};
use crate::metrics::Metrics;
use crate::watches;

mod metrics;
mod workers;
pub use metrics::DispatchMetrics;
use workers::WorkerScores;

/// The `multiKueue.dispatcherName` that hands the choice to this loop.
pub const DISPATCHER_NAME: &str = "carbon-kube.io/greenest";
/// The controller of MultiKueue's own AdmissionChecks.
const MULTIKUEUE: &str = "kueue.x-k8s.io/multikueue";
/// Kueue's own field manager for a Workload's admission status. Kueue clears
/// `nominatedClusterNames` when it sets `clusterName` by a server-side apply that omits it,
/// which removes the field only where that manager owns it alone; a nomination owned by
/// another manager survives and every later Kueue write fails validation ("clusterName and
/// nominatedClusterNames are mutually exclusive"). Kueue's own tests of external
/// dispatchers nominate with this manager too (`workload.PatchAdmissionStatus`).
const FIELD_MANAGER: &str = "kueue-admission";
const TICK: Duration = Duration::from_secs(2);
const HINT: &str = " (needs RBAC workloads, admissionchecks, multikueueconfigs, \
                     multikueueclusters get/list/watch and workloads/status patch on the manager \
                     cluster), or --kueue-dispatcher=false";

/// The dispatcher's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchSettings {
    /// Kueue's namespace, where the MultiKueueClusters' kubeconfig Secrets are.
    pub kueue_namespace: String,
    /// Zone data older than this is not compared: every worker is nominated.
    pub max_age: Duration,
    /// How long a nomination waits for a worker to admit the Workload before the next
    /// greenest worker is added (Kueue's incremental dispatcher widens the same way).
    pub widen_after: Duration,
}

/// Where a Workload goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Nomination {
    /// The greenest worker: its name, zone and mean forecast over the run; then the
    /// other workers, greener first, offered in turn while none admits it.
    Greenest {
        cluster: String,
        zone: GridZone,
        mean: f64,
        then: Vec<String>,
    },
    /// Every worker, and why no choice was made.
    All { clusters: Vec<String>, why: String },
}

impl Nomination {
    pub fn clusters(&self) -> Vec<String> {
        self.widened(0)
    }

    /// The workers to nominate once `rounds` widenings have passed: the greenest and the
    /// next `rounds` greenest.
    pub fn widened(&self, rounds: usize) -> Vec<String> {
        match self {
            Nomination::Greenest { cluster, then, .. } => std::iter::once(cluster)
                .chain(then.iter().take(rounds))
                .cloned()
                .collect(),
            Nomination::All { clusters, .. } => clusters.clone(),
        }
    }
}

/// Mean forecast intensity of a run of `duration` starting `now`, sampled at the
/// forecast's spacing; `None` when the forecast ends before the run does.
pub fn mean_over(series: &ZoneSeries, now: Timestamp, duration: Duration) -> Option<f64> {
    let step = series.spacing().max(SignedDuration::from_secs(1));
    let end = now + SignedDuration::try_from(duration).ok()?;
    let mut at = now;
    let (mut sum, mut n) = (0.0, 0.0);
    while at < end {
        sum += series.value_at(at)?;
        n += 1.0;
        at += step;
    }
    (n > 0.0).then(|| sum / n)
}

/// The worker to nominate among `workers` (name, zone from its label), by the mean forecast
/// of each zone's series over the run; every worker when one cannot be compared. Ties go to
/// the first in `workers`' order.
pub fn nominate(
    workers: &[(String, Option<GridZone>)],
    series: &HashMap<GridZone, Result<ZoneSeries, String>>,
    now: Timestamp,
    duration: Duration,
) -> Nomination {
    let all = |why: String| Nomination::All {
        clusters: workers.iter().map(|(name, _)| name.clone()).collect(),
        why,
    };
    let mut ranked: Vec<(String, GridZone, f64)> = Vec::new();
    for (name, zone) in workers {
        let Some(zone) = zone else {
            return all(format!(
                "MultiKueueCluster {name} has no label {}",
                crate::zones::GRID_ZONE_LABEL
            ));
        };
        let mean = match series.get(zone) {
            None => return all(format!("no CarbonScore for zone {zone} (cluster {name})")),
            Some(Err(why)) => return all(format!("{why} (cluster {name})")),
            Some(Ok(series)) => match mean_over(series, now, duration) {
                Some(mean) => mean,
                None => {
                    return all(format!(
                        "the forecast of zone {zone} (cluster {name}) ends before the run does"
                    ));
                }
            },
        };
        ranked.push((name.clone(), zone.clone(), mean));
    }
    // Stable: ties keep `workers`' order.
    ranked.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut ranked = ranked.into_iter();
    match ranked.next() {
        Some((cluster, zone, mean)) => Nomination::Greenest {
            cluster,
            zone,
            mean,
            then: ranked.map(|(name, ..)| name).collect(),
        },
        None => all("the MultiKueueConfig lists no cluster".into()),
    }
}

struct Dispatcher {
    client: Client,
    metrics: Arc<DispatchMetrics>,
    settings: DispatchSettings,
    /// Nominations written a moment ago (the watch may not show them yet), by Workload uid.
    done: HashMap<String, std::time::Instant>,
    /// When each Workload not yet admitted was first nominated, by uid; a new leader
    /// starts the clock again (it widens later, never sooner).
    since: HashMap<String, std::time::Instant>,
    workers: WorkerScores,
}

/// Widenings due `waited` after the first nomination.
fn rounds(waited: Duration, widen_after: Duration) -> usize {
    (waited.as_secs_f64() / widen_after.as_secs_f64().max(1e-3)) as usize
}

impl Dispatcher {
    async fn run(mut self) {
        let (tx, changed) = watch::channel(());
        let watching = |what: &str| notify(tx.clone(), format!("kueue dispatcher: {what}"), HINT);
        let (workloads, workload_events) =
            cached_dynamic(&self.client, &api_resource("Workload", "workloads"));
        let (checks, check_events) = cached_dynamic(
            &self.client,
            &api_resource("AdmissionCheck", "admissionchecks"),
        );
        let (configs, config_events) = cached_dynamic(
            &self.client,
            &api_resource("MultiKueueConfig", "multikueueconfigs"),
        );
        let (clusters, cluster_events) = cached_dynamic(
            &self.client,
            &api_resource("MultiKueueCluster", "multikueueclusters"),
        );
        let (scores, score_events) = watches::cached(
            Api::<CarbonScore>::all(self.client.clone()),
            watches::config(),
        );
        let workload_watch = workload_events.for_each(watching("Workload"));
        let check_watch = check_events.for_each(watching("AdmissionCheck"));
        let config_watch = config_events.for_each(watching("MultiKueueConfig"));
        let cluster_watch = cluster_events.for_each(watching("MultiKueueCluster"));
        let score_watch = score_events.for_each(watching("CarbonScore"));
        info!("kueue: nominating MultiKueue workers as {DISPATCHER_NAME}");
        let work = async {
            let mut rounds = watches::Rounds::new(TICK, changed);
            while rounds.next().await {
                let ready = futures::future::join5(
                    workloads.wait_until_ready(),
                    checks.wait_until_ready(),
                    configs.wait_until_ready(),
                    clusters.wait_until_ready(),
                    scores.wait_until_ready(),
                )
                .await;
                if ready.0.is_err()
                    || ready.1.is_err()
                    || ready.2.is_err()
                    || ready.3.is_err()
                    || ready.4.is_err()
                {
                    return;
                }
                self.round(&workloads, &checks, &configs, &clusters, &scores)
                    .await;
            }
        };
        tokio::select! {
            _ = workload_watch => {}
            _ = check_watch => {}
            _ = config_watch => {}
            _ = cluster_watch => {}
            _ = score_watch => {}
            _ = work => {}
        }
    }

    async fn round(
        &mut self,
        workloads: &Store<DynamicObject>,
        checks: &Store<DynamicObject>,
        configs: &Store<DynamicObject>,
        clusters: &Store<DynamicObject>,
        scores: &Store<CarbonScore>,
    ) {
        let now = Timestamp::now();
        self.done
            .retain(|_, at| at.elapsed() < Duration::from_secs(30));
        // MultiKueue checks by name: the workers their MultiKueueConfig lists.
        let mut workers_of: HashMap<String, Vec<(String, Option<GridZone>)>> = HashMap::new();
        for check in checks.state() {
            let Some(spec) = parse::<AdmissionCheckSpec>(check.data.get("spec")) else {
                continue;
            };
            if spec.controller_name != MULTIKUEUE {
                continue;
            }
            let Some(config) = spec
                .parameters
                .and_then(|p| configs.state().into_iter().find(|c| c.name_any() == p.name))
            else {
                continue;
            };
            let names: Vec<String> = config.data["spec"]["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            let workers = names
                .into_iter()
                .map(|name| {
                    let zone = clusters
                        .state()
                        .iter()
                        .find(|c| c.name_any() == name)
                        .and_then(|c| c.labels().get(crate::zones::GRID_ZONE_LABEL).cloned())
                        .and_then(|z| GridZone::parse(&z).ok());
                    (name, zone)
                })
                .collect();
            workers_of.insert(check.name_any(), workers);
        }
        let mut series: HashMap<GridZone, Result<ZoneSeries, String>> = scores
            .state()
            .iter()
            .filter_map(|s| {
                let zone = GridZone::parse(&s.spec.zone).ok()?;
                let series = match &s.status {
                    Some(status) => {
                        ZoneSeries::from_snapshot(&zone, &status.into(), now, self.settings.max_age)
                    }
                    None => Err(format!("zone {zone} has no carbon data yet")),
                };
                Some((zone, series))
            })
            .collect();
        // A worker's own CarbonScore for its zone wins over the manager's.
        for cluster in clusters.state() {
            let Some(zone) = cluster
                .labels()
                .get(crate::zones::GRID_ZONE_LABEL)
                .and_then(|z| GridZone::parse(z).ok())
            else {
                continue;
            };
            match self.workers.snapshot(&cluster, &zone).await {
                // Stale or unusable there: the manager's own view of the zone stands.
                Ok(Some(snapshot)) => {
                    if let Ok(own) =
                        ZoneSeries::from_snapshot(&zone, &snapshot, now, self.settings.max_age)
                    {
                        series.insert(zone, Ok(own));
                    }
                }
                Ok(None) => {}
                Err(why) => {
                    warn!(cluster = %cluster.name_any(), error = %why, "kueue: reading a worker's CarbonScore failed; the manager's own is used")
                }
            }
        }
        let pending: HashSet<String> = workloads
            .state()
            .iter()
            .filter(|w| w.data["status"]["clusterName"].is_null())
            .filter_map(|w| w.uid())
            .collect();
        self.since.retain(|uid, _| pending.contains(uid));
        for workload in workloads.state() {
            let status: WorkloadStatus = parse(workload.data.get("status")).unwrap_or_default();
            let nominated: Vec<String> = workload.data["status"]["nominatedClusterNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            let admitted = !workload.data["status"]["clusterName"].is_null();
            if admitted || !status.awaits_checks() || workload.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let uid = workload.uid().unwrap_or_default();
            if self.done.contains_key(&uid) {
                continue;
            }
            let since = *self
                .since
                .entry(uid.clone())
                .or_insert_with(std::time::Instant::now);
            let Some(workers) = status
                .admission_checks
                .iter()
                .find_map(|c| workers_of.get(&c.name))
            else {
                continue;
            };
            let duration = parse::<WorkloadSpec>(workload.data.get("spec"))
                .and_then(|spec| {
                    spec.pod_sets
                        .first()
                        .and_then(|set| set.template.metadata.as_ref())
                        .and_then(|m| m.annotations.as_ref())
                        .and_then(|a| a.get(deferral::DURATION))
                        .and_then(|d| deferral::parse_duration(d).ok())
                })
                .unwrap_or(deferral::DEFAULT_DURATION);
            let nomination = nominate(workers, &series, now, duration);
            let widened = rounds(since.elapsed(), self.settings.widen_after);
            // Written once, then again only when a widening is due: a nomination is never
            // narrowed (a worker may have started admitting it), and grows by the greenest
            // workers not in it yet.
            let wanted = nomination.widened(widened).len();
            if nominated.len() >= wanted {
                continue;
            }
            let clusters: Vec<String> = nominated
                .iter()
                .cloned()
                .chain(
                    nomination
                        .widened(usize::MAX)
                        .into_iter()
                        .filter(|c| !nominated.contains(c)),
                )
                .take(wanted)
                .collect();
            let widening = !nominated.is_empty();
            if self
                .write(&workload, &nomination, &clusters, widening)
                .await
            {
                self.done.insert(uid, std::time::Instant::now());
            }
        }
    }

    async fn write(
        &self,
        workload: &DynamicObject,
        nomination: &Nomination,
        clusters: &[String],
        widening: bool,
    ) -> bool {
        let namespace = workload.namespace().unwrap_or_default();
        let name = workload.name_any();
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &namespace,
            &api_resource("Workload", "workloads"),
        );
        // The whole status as it is, plus the nomination: an apply as Kueue's manager must
        // not drop a field that manager owns (it would be removed), and the resourceVersion
        // makes it fail rather than write back a status Kueue has changed meanwhile.
        let mut status = workload.data["status"].clone();
        status["nominatedClusterNames"] = json!(clusters);
        let body = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Workload",
            "metadata": {
                "name": name, "namespace": namespace,
                "resourceVersion": workload.metadata.resource_version,
            },
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => return false,
            Err(e) => {
                warn!(workload = %format!("{namespace}/{name}"), error = %e, "kueue: nominating workers failed; will retry");
                return false;
            }
        }
        let reason = match nomination {
            Nomination::Greenest { .. } if widening => {
                info!(workload = %format!("{namespace}/{name}"), clusters = ?clusters, "kueue: no worker admitted it yet; offered to the next greenest too");
                "widened"
            }
            Nomination::Greenest {
                cluster,
                zone,
                mean,
                ..
            } => {
                info!(workload = %format!("{namespace}/{name}"), cluster = %cluster, zone = %zone, mean = mean, "kueue: dispatched to the greenest worker");
                "greenest"
            }
            Nomination::All { why, .. } => {
                warn!(workload = %format!("{namespace}/{name}"), why = %why, "kueue: dispatched to every worker");
                "all"
            }
        };
        for cluster in clusters {
            self.metrics
                .dispatched
                .with_label_values(&[cluster.as_str(), reason])
                .inc();
        }
        true
    }
}

/// Runs the dispatcher while this agent leads, and drops it the moment it does not.
pub async fn while_leader(
    mut is_leader: watch::Receiver<bool>,
    client: Client,
    metrics: Arc<DispatchMetrics>,
    settings: DispatchSettings,
) {
    loop {
        if is_leader.wait_for(|leader| *leader).await.is_err() {
            return;
        }
        let dispatcher = Dispatcher {
            client: client.clone(),
            metrics: metrics.clone(),
            workers: WorkerScores::new(client.clone(), &settings.kueue_namespace, settings.max_age),
            settings: settings.clone(),
            done: HashMap::new(),
            since: HashMap::new(),
        };
        tokio::select! {
            _ = dispatcher.run() => {}
            _ = is_leader.wait_for(|leader| !*leader) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(current: f64, values: &[f64], now: Timestamp) -> ZoneSeries {
        ZoneSeries {
            current,
            observed_at: now,
            points: values
                .iter()
                .enumerate()
                .map(|(k, v)| (now + SignedDuration::from_hours(k as i64 + 1), *v))
                .collect(),
        }
    }

    #[test]
    fn the_greenest_zone_over_the_run_is_nominated_else_every_worker() {
        let now: Timestamp = "2025-06-01T10:00:00Z".parse().unwrap();
        let (de, fr) = (
            GridZone::parse("DE").unwrap(),
            GridZone::parse("FR").unwrap(),
        );
        let workers = vec![
            ("w-de".to_string(), Some(de.clone())),
            ("w-fr".to_string(), Some(fr.clone())),
        ];
        // DE is greener now, FR over the next three hours: (300 + 100 + 100) / 3 against
        // (100 + 500 + 500) / 3.
        let mut data = HashMap::from([
            (de.clone(), Ok(series(100.0, &[500.0, 500.0, 500.0], now))),
            (fr.clone(), Ok(series(300.0, &[100.0, 100.0, 100.0], now))),
        ]);
        let hour = Duration::from_secs(3600);
        let short = nominate(&workers, &data, now, hour);
        assert_eq!(short.clusters(), ["w-de"]);
        let long = nominate(&workers, &data, now, 3 * hour);
        assert!(
            matches!(&long, Nomination::Greenest { cluster, mean, .. } if cluster == "w-fr" && (*mean - 500.0 / 3.0).abs() < 1e-9),
            "{long:?}"
        );

        data.insert(fr, Err("the carbon data of zone FR is 200 min old".into()));
        let stale = nominate(&workers, &data, now, hour);
        assert!(
            matches!(&stale, Nomination::All { clusters, why } if clusters.len() == 2 && why.contains("w-fr")),
            "{stale:?}"
        );
        let unlabelled = vec![("w-de".to_string(), Some(de)), ("w-x".to_string(), None)];
        assert_eq!(
            nominate(&unlabelled, &data, now, hour).clusters(),
            ["w-de", "w-x"]
        );
        let beyond = nominate(&workers[..1], &data, now, 10 * hour);
        assert!(matches!(beyond, Nomination::All { .. }), "{beyond:?}");
    }

    #[test]
    fn a_nomination_widens_greenest_first_one_worker_per_period() {
        let now: Timestamp = "2025-06-01T10:00:00Z".parse().unwrap();
        let zones: Vec<GridZone> = ["DE", "FR", "PL"]
            .iter()
            .map(|z| GridZone::parse(z).unwrap())
            .collect();
        let workers: Vec<(String, Option<GridZone>)> = ["w-de", "w-fr", "w-pl"]
            .iter()
            .zip(&zones)
            .map(|(w, z)| (w.to_string(), Some(z.clone())))
            .collect();
        let data = HashMap::from([
            (zones[0].clone(), Ok(series(300.0, &[300.0], now))),
            (zones[1].clone(), Ok(series(50.0, &[50.0], now))),
            (zones[2].clone(), Ok(series(700.0, &[700.0], now))),
        ]);
        let nomination = nominate(&workers, &data, now, Duration::from_secs(3600));
        assert_eq!(nomination.widened(0), ["w-fr"]);
        assert_eq!(nomination.widened(1), ["w-fr", "w-de"]);
        assert_eq!(nomination.widened(9), ["w-fr", "w-de", "w-pl"]);
        let period = Duration::from_secs(300);
        assert_eq!(rounds(Duration::from_secs(299), period), 0);
        assert_eq!(rounds(Duration::from_secs(300), period), 1);
        assert_eq!(rounds(Duration::from_secs(901), period), 3);
    }
}
