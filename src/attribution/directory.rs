//! Pod UID → namespace/name for the pods on this node, from one metadata-only
//! watch with `spec.nodeName=<node>` (what the kubelet itself watches), so the
//! API server's cost grows with pods per node, not with the cluster.

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::warn;

use super::PodKey;
use crate::watches;

/// The kubelet's annotation on a static pod's mirror: the static pod's own
/// UID, which is the one its cgroup is named after.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

#[derive(Clone)]
pub struct PodDirectory {
    store: Store<PartialObjectMeta<Pod>>,
}

impl PodDirectory {
    /// The directory, and the watch that fills it (to be spawned).
    /// The watch runs until `shutdown` turns true.
    pub fn watch(
        client: Client,
        node_name: &str,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Self, impl Future<Output = ()> + use<>) {
        // An Api of PartialObjectMeta asks the API server for metadata only.
        let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
        let config = watches::config().fields(&format!("spec.nodeName={node_name}"));
        let (store, events) = watches::cached(api, config);
        let task = async move {
            let mut events = events.boxed();
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = shutdown.changed() => return,
                };
                match event {
                    Some(Err(e)) => {
                        warn!(error = %e, "watching this node's pods failed (per-pod metrics need RBAC pods list/watch); retrying")
                    }
                    Some(Ok(_)) => {}
                    None => return,
                }
            }
        };
        (Self { store }, task)
    }

    /// A directory of fixed pods, for tests of what reads it.
    #[cfg(test)]
    pub(crate) fn fixed(pods: Vec<ObjectMeta>) -> Self {
        let (store, mut writer) = kube::runtime::reflector::store();
        for metadata in pods {
            let pod = PartialObjectMeta::<Pod> {
                metadata,
                ..Default::default()
            };
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(pod));
        }
        Self { store }
    }

    /// Every known pod by UID.
    pub fn snapshot(&self) -> HashMap<String, PodKey> {
        let pods = self.store.state();
        by_uid(pods.iter().map(|pod| &pod.metadata))
    }
}

/// Pods by UID, and static pods also by the UID in their mirror annotation.
pub fn by_uid<'a>(pods: impl Iterator<Item = &'a ObjectMeta>) -> HashMap<String, PodKey> {
    let mut out = HashMap::new();
    for meta in pods {
        let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
            continue;
        };
        let key = PodKey {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let mirror = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION));
        for uid in meta.uid.iter().chain(mirror) {
            out.insert(uid.clone(), key.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(namespace: &str, name: &str, uid: &str, mirror: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            annotations: mirror.map(|m| BTreeMap::from([(MIRROR_ANNOTATION.into(), m.into())])),
            ..Default::default()
        }
    }

    #[test]
    fn pods_are_found_by_uid_and_static_pods_by_their_mirror_hash() {
        let pods = [
            meta("shop", "web-1", "u1", None),
            meta("kube-system", "etcd-n1", "mirror-uid", Some("c0ffee")),
            ObjectMeta::default(),
        ];
        let found = by_uid(pods.iter());
        let key = |ns: &str, name: &str| PodKey {
            namespace: ns.into(),
            name: name.into(),
        };
        assert_eq!(found.get("u1"), Some(&key("shop", "web-1")));
        assert_eq!(found.get("c0ffee"), Some(&key("kube-system", "etcd-n1")));
        assert_eq!(
            found.get("mirror-uid"),
            Some(&key("kube-system", "etcd-n1"))
        );
        assert_eq!(found.len(), 3);
    }
}
