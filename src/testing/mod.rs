//! What the edges' unit tests share: an API server that answers the requests
//! a test expects, in order ([`api_server`]); reflector stores filled by hand;
//! a scripted carbon provider; one sample read from the metrics exposition.

pub mod api_server;
pub mod provider;

use std::fmt::Debug;
use std::hash::Hash;

use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

/// An RFC 3339 time, for fixtures.
pub fn at(rfc3339: &str) -> jiff::Timestamp {
    rfc3339.parse().expect("a fixture time")
}

/// A store holding `objects`, as a watch that has listed them leaves it (ready).
pub fn store<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// The value of the first sample of `name` whose labels include all of
/// `labels` (each written `key="value"`), from a text exposition.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .find_map(|line| line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

/// A Node at `resource_version` in grid zone `zone`, carrying `taints`.
pub fn node(
    name: &str,
    resource_version: &str,
    zone: &str,
    taints: Vec<k8s_openapi::api::core::v1::Taint>,
) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some(resource_version.into()),
            labels: Some([(crate::zones::GRID_ZONE_LABEL.to_string(), zone.to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A taint with `key` and `effect`.
pub fn taint(key: &str, effect: &str) -> k8s_openapi::api::core::v1::Taint {
    k8s_openapi::api::core::v1::Taint {
        key: key.into(),
        effect: effect.into(),
        ..Default::default()
    }
}

/// Threshold of the CarbonScores [`score`] makes.
pub const THRESHOLD: f64 = 300.0;

/// `zone`'s CarbonScore as the leader writes it: a measured reading of
/// `grams_per_kwh` observed now, `nodes` nodes, the absolute policy.
pub fn score(
    zone: &str,
    grams_per_kwh: f64,
    taint_allowed: bool,
    nodes: u32,
) -> crate::crd::CarbonScore {
    use crate::crd::{CarbonScore, CarbonScoreStatus};
    let zone = crate::carbon::GridZone::parse(zone).expect("a zone");
    let now = jiff::Timestamp::now();
    let mut reading = provider::reading(&zone, "electricity-maps", grams_per_kwh);
    reading.observed_at = now;
    let mut score = CarbonScore::for_zone(&zone);
    score.status = Some(CarbonScoreStatus::from_reading(
        &reading,
        now,
        THRESHOLD,
        taint_allowed,
        nodes,
    ));
    score
}
