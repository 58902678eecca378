//! Per-pod power and carbon: the node's dynamic power shared out to its pods
//! by their cgroup CPU time (v2 `cpu.stat`, or v1 `cpuacct`).
//!
//! Under the linear power model every busy vCPU adds `(max − min) × PUE`
//! watts over idle, so a pod that kept `v` vCPUs busy over a sample drew
//! `v × (max − min) × PUE` watts. Idle CPU and memory power are drawn whether
//! or not any pod runs, so they stay at node level
//! (`carbon_kube_node_idle_power_watts`), as does the busy time of processes
//! outside pods (kubelet, runtime, system daemons): node power = idle + pods +
//! the rest, with the rest never negative.

mod cgroup;
mod directory;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{Metrics, PodEmissions};
use crate::power;

pub use cgroup::{
    CpuUsage, accounting_root, cpuacct_usage_usec, pod_cpu_usage, pod_uid, usage_usec,
};
pub use directory::{PodDirectory, by_uid};

/// A pod's identity in metric labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

/// Busy vCPUs of each pod between two readings. A pod without an earlier
/// reading (it just started) has no interval yet; a counter that went back
/// (a cgroup recreated under the same UID) restarts its baseline.
pub fn busy_vcpus(
    previous: &CpuUsage,
    current: &CpuUsage,
    elapsed: Duration,
) -> HashMap<String, f64> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return HashMap::new();
    }
    current
        .iter()
        .filter_map(|(uid, now)| {
            let before = previous.get(uid)?;
            let used = now.checked_sub(*before)?;
            Some((uid.clone(), used as f64 / 1e6 / seconds))
        })
        .collect()
}

/// Each pod's watts. The pods' cgroup reading and the host's utilisation are
/// not taken at the same instant, so when the pods seem to have kept more
/// vCPUs busy than the whole node did, they are scaled down to the node's:
/// pods never draw more than the node's dynamic power.
pub fn pod_watts(
    busy: &HashMap<String, f64>,
    node_busy_vcpus: f64,
    watts_per_vcpu: f64,
) -> HashMap<String, f64> {
    let total: f64 = busy.values().sum();
    let node_busy = if node_busy_vcpus.is_finite() {
        node_busy_vcpus.max(0.0)
    } else {
        0.0
    };
    let scale = if total > node_busy && total > 0.0 {
        node_busy / total
    } else {
        1.0
    };
    busy.iter()
        .map(|(uid, vcpus)| (uid.clone(), vcpus * scale * watts_per_vcpu.max(0.0)))
        .collect()
}

/// Watts per named pod. Pods whose name is not known yet (the watch lags a
/// new pod, or cannot list pods) are left out; two UIDs under one name (a
/// StatefulSet pod replaced mid-sample) are added up.
pub fn by_name(
    watts: &HashMap<String, f64>,
    names: &HashMap<String, PodKey>,
) -> BTreeMap<PodKey, f64> {
    let mut out = BTreeMap::new();
    for (uid, w) in watts {
        if let Some(key) = names.get(uid) {
            *out.entry(key.clone()).or_insert(0.0) += w;
        }
    }
    out
}

/// Emissions of `watts` for `elapsed`, if the intensity is known and sane.
pub fn emissions(
    watts: f64,
    grams_per_kwh: Option<f64>,
    elapsed: Duration,
) -> Option<PodEmissions> {
    let intensity = grams_per_kwh.filter(|g| g.is_finite() && *g >= 0.0)?;
    let rate = power::grams_per_hour(watts, intensity);
    rate.is_finite().then(|| PodEmissions {
        grams_per_hour: rate,
        grams: rate * elapsed.as_secs_f64() / 3600.0,
    })
}

/// The attribution state the emissions loop drives, one sample per tick.
pub struct Attribution {
    root: PathBuf,
    directory: PodDirectory,
    metrics: Arc<Metrics>,
    previous: Option<(Instant, CpuUsage)>,
    exported: BTreeSet<PodKey>,
    read_failed: bool,
}

/// Starts attribution where the host's pod cgroups are visible under `root`:
/// the directory watch to spawn, and the state for the emissions loop.
pub fn start(
    root: &Path,
    client: Client,
    node_name: &str,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Option<(Attribution, impl Future<Output = ()> + use<>)> {
    let Some(root) = accounting_root(root) else {
        info!(
            cgroup_root = %root.display(),
            "per-pod attribution off: no kubepods cgroup (needs the host's cgroup tree, v2 or v1 with cpuacct, e.g. a read-only hostPath mount and --cgroup-root)"
        );
        return None;
    };
    info!(cgroup_root = %root.display(), "per-pod attribution on");
    let (directory, watch) = PodDirectory::watch(client, node_name, shutdown);
    let attribution = Attribution {
        root,
        directory,
        metrics,
        previous: None,
        exported: BTreeSet::new(),
        read_failed: false,
    };
    Some((attribution, watch))
}

impl Attribution {
    /// One sample, right after the host's, so both cover about the same interval.
    /// The cgroup files are in memory (cgroupfs), so reading them inline is cheap.
    ///
    /// `watts_per_vcpu` is what one busy vCPU adds (the model's, or the
    /// model's scaled to a measured CPU figure); `gpu_watts` is the GPU power
    /// (with PUE) of the pods dcgm-exporter maps GPUs to, added to their CPU share.
    pub fn sample(
        &mut self,
        watts_per_vcpu: f64,
        node_busy_vcpus: f64,
        gpu_watts: &BTreeMap<PodKey, f64>,
        grams_per_kwh: Option<f64>,
    ) {
        let now = Instant::now();
        let current = match pod_cpu_usage(&self.root) {
            Ok(usage) => {
                self.read_failed = false;
                usage
            }
            Err(e) => {
                if !self.read_failed {
                    warn!(cgroup_root = %self.root.display(), error = %e, "reading pod cgroups failed");
                }
                self.read_failed = true;
                CpuUsage::new()
            }
        };
        let previous = self.previous.replace((now, current));
        let (Some((then, previous)), Some((_, current))) = (previous, self.previous.as_ref())
        else {
            return;
        };
        let elapsed = now.duration_since(then);
        let busy = busy_vcpus(&previous, current, elapsed);
        let watts = pod_watts(&busy, node_busy_vcpus, watts_per_vcpu);
        let mut pods = by_name(&watts, &self.directory.snapshot());
        for (key, w) in gpu_watts {
            *pods.entry(key.clone()).or_insert(0.0) += w;
        }
        for (key, w) in &pods {
            let emitted = emissions(*w, grams_per_kwh, elapsed);
            self.metrics
                .set_pod(&key.namespace, &key.name, *w, elapsed, emitted);
        }
        let current: BTreeSet<PodKey> = pods.into_keys().collect();
        for gone in self.exported.difference(&current) {
            self.metrics.remove_pod(&gone.namespace, &gone.name);
        }
        self.metrics
            .attributed_pods
            .set(i64::try_from(current.len()).unwrap_or(i64::MAX));
        self.exported = current;
    }
}

#[cfg(test)]
mod tests;
