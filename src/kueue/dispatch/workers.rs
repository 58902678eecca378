//! The workers' own CarbonScores, read with Kueue's credentials for them (the
//! kubeconfig Secret each MultiKueueCluster names), so that the manager needs no
//! nodes in its workers' zones and a fleet polls each zone once. A worker that
//! has no CarbonScore for its zone, or cannot be read, falls back to the
//! manager's own CarbonScore for that zone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::{Api, Client};

use crate::carbon::{GridZone, Snapshot};
use crate::providers::Provider;
use crate::providers::cluster::SharedScores;

/// A worker's reading is reused this long: dispatch rounds come every 2 s.
const REFRESH: Duration = Duration::from_secs(10);
/// The key of a MultiKueueCluster's kubeconfig Secret, as Kueue reads it.
const KUBECONFIG_KEY: &str = "kubeconfig";

pub struct WorkerScores {
    secrets: Api<Secret>,
    max_age: Duration,
    /// Per worker: the Secret's resourceVersion its reader was built from, and the reader.
    readers: HashMap<String, (String, SharedScores)>,
    /// Per worker: when it was last read, and what it said (`None`: no score there).
    read: HashMap<String, (Instant, Result<Option<Snapshot>, String>)>,
}

impl WorkerScores {
    /// `namespace` is Kueue's, where the MultiKueueClusters' Secrets live.
    pub fn new(client: Client, namespace: &str, max_age: Duration) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
            max_age,
            readers: HashMap::new(),
            read: HashMap::new(),
        }
    }

    /// The worker's own view of `zone`: `Ok(None)` when it publishes none.
    pub async fn snapshot(
        &mut self,
        cluster: &DynamicObject,
        zone: &GridZone,
    ) -> Result<Option<Snapshot>, String> {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        if let Some((at, read)) = self.read.get(&name)
            && at.elapsed() < REFRESH
        {
            return read.clone();
        }
        let read = self.fetch(&name, cluster, zone).await;
        self.read.insert(name, (Instant::now(), read.clone()));
        read
    }

    async fn fetch(
        &mut self,
        name: &str,
        cluster: &DynamicObject,
        zone: &GridZone,
    ) -> Result<Option<Snapshot>, String> {
        let source = &cluster.data["spec"]["clusterSource"]["kubeConfig"];
        if source["locationType"].as_str().unwrap_or("Secret") != "Secret" {
            return Err(format!(
                "MultiKueueCluster {name}: only Secret kubeconfigs are read"
            ));
        }
        let secret_name = source["location"]
            .as_str()
            .ok_or_else(|| format!("MultiKueueCluster {name} names no kubeconfig Secret"))?;
        let secret = self
            .secrets
            .get(secret_name)
            .await
            .map_err(|e| format!("Secret {secret_name} of MultiKueueCluster {name}: {e}"))?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        if self.readers.get(name).is_none_or(|(v, _)| *v != version) {
            let text = secret
                .data
                .as_ref()
                .and_then(|d| d.get(KUBECONFIG_KEY))
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
                .ok_or_else(|| format!("Secret {secret_name} has no key {KUBECONFIG_KEY}"))?;
            let client = client_from(&text)
                .await
                .map_err(|e| format!("the kubeconfig of MultiKueueCluster {name}: {e}"))?;
            let reader = SharedScores::new(Api::all(client), self.max_age);
            self.readers.insert(name.to_string(), (version, reader));
        }
        let (_, reader) = &self.readers[name];
        match reader.fetch(zone).await {
            Ok(reading) => Ok(Some(Snapshot {
                grams_per_kwh: reading.grams_per_kwh,
                source: format!("{} via cluster {name}", reading.source),
                observed_at: Some(reading.observed_at),
                forecast: reading.forecast,
            })),
            Err(crate::providers::ProviderError::UnsupportedZone(_)) => Ok(None),
            Err(e) => Err(format!("cluster {name}: {e}")),
        }
    }
}

async fn client_from(kubeconfig: &str) -> Result<Client, String> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    crate::kubeclient::client(&config).map_err(|e| e.to_string())
}
