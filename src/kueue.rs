//! Carbon-aware admission for Kueue: the leader's AdmissionCheck controller for
//! `spec.controllerName: carbon-kube.io/green-window`.
//!
//! A ClusterQueue that lists such an AdmissionCheck lets Kueue reserve quota for a
//! Workload, then waits for the check. The leader keeps the check `Pending` until the
//! deferral planner's start for the Workload (the same [`crate::deferral::round`] round
//! the gated pods go through), and sets it `Ready` then, at its latest start at the
//! latest. A Workload that cannot be planned (malformed parameters, no CarbonScore for its
//! zone, stale data, no forecast) is made `Ready` at once with the reason in the check's
//! message: availability wins, as for pods.
//!
//! Parameters: the AdmissionCheck's `spec.parameters` names a [`GreenWindowConfig`]
//! (cluster-scoped). A Job may narrow them with the pod annotations deferral reads
//! ([`crate::deferral::DURATION`], [`crate::deferral::MAX_DELAY`],
//! [`crate::deferral::LATEST_START`], [`crate::deferral::ZONE`]) on its pod template; the
//! config's `maxDelay` bounds every Workload all the same.
//!
//! Kueue's objects are read as `DynamicObject`s into the small structs below (only the
//! fields used); there is no Kueue crate for Rust.

pub mod controller;
pub mod dispatch;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::carbon::GridZone;
use crate::deferral::{self, Request};
use crate::resources::pod_cpu_request;

/// The `spec.controllerName` of the AdmissionChecks this controller owns.
pub const CONTROLLER_NAME: &str = "carbon-kube.io/green-window";
/// Kueue's API group, and the version read and written (its storage version in v0.17).
pub const GROUP: &str = "kueue.x-k8s.io";
pub const VERSION: &str = "v1beta2";
/// Kueue accepts at most this many podSetUpdates per check.
const MAX_POD_SET_UPDATES: usize = 8;

// Each printer column repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "carbon-kube.io",
    version = "v1alpha1",
    kind = "GreenWindowConfig",
    plural = "greenwindowconfigs",
    singular = "greenwindowconfig",
    doc = "Parameters of a Kueue AdmissionCheck with controllerName carbon-kube.io/green-window: \
           how long its Workloads may wait for greener power.",
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.zone"),
    printcolumn(name = "Max-Delay", type_ = "string", json_path = ".spec.maxDelay")
)]
#[serde(rename_all = "camelCase")]
pub struct GreenWindowConfigSpec {
    /// Grid zone the Workloads run in (Electricity Maps naming, e.g. `DE`). Absent: any
    /// zone with nodes; the planner books the greenest with room, and where the cluster
    /// spans zones the Workload's pods are pinned there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Longest wait from the Workload's creation to its start, e.g. `6h` (at most a week).
    pub max_delay: String,
    /// Run time assumed when the Job's pod template has no `carbon-kube.io/duration`, e.g.
    /// `1h` (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_duration: Option<String>,
}

// Its cache keeps what the check reads, without managedFields.
impl crate::watches::Slim for GreenWindowConfig {}

/// The parameters CRD as YAML, what `carbon-kube kueue-crd` prints: checked
/// in under the chart and generated from the types by a test, like
/// [`crate::crd::CRD_YAML`].
pub const CRD_YAML: &str =
    include_str!("../deploy/helm/carbon-kube/files/greenwindowconfigs.carbon-kube.io.yaml");

/// A [`GreenWindowConfig`], checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub zone: Option<GridZone>,
    pub max_delay: Duration,
    pub default_duration: Duration,
}

impl Params {
    /// The error names the object and the field, for the Workload's message.
    pub fn from_spec(name: &str, spec: &GreenWindowConfigSpec) -> Result<Self, String> {
        let field = |field: &str, text: &str, why: String| {
            format!("GreenWindowConfig {name}: spec.{field} {text:?} {why}")
        };
        let zone = match &spec.zone {
            None => None,
            Some(text) => Some(
                GridZone::parse(text)
                    .map_err(|why| field("zone", text, format!("is not a grid zone id ({why})")))?,
            ),
        };
        let max_delay = deferral::parse_duration(&spec.max_delay)
            .map_err(|why| field("maxDelay", &spec.max_delay, why))?;
        let default_duration = match &spec.default_duration {
            None => deferral::DEFAULT_DURATION,
            Some(text) => {
                deferral::parse_duration(text).map_err(|why| field("defaultDuration", text, why))?
            }
        };
        Ok(Self {
            zone,
            max_delay,
            default_duration,
        })
    }
}

// ---- Kueue's objects, the fields read --------------------------------------

/// An AdmissionCheck (`spec` only).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionCheckSpec {
    pub controller_name: String,
    #[serde(default)]
    pub parameters: Option<ParametersReference>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParametersReference {
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    #[serde(default)]
    pub pod_sets: Vec<PodSet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSet {
    pub name: String,
    #[serde(default)]
    pub count: i32,
    #[serde(default)]
    pub template: PodTemplateSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub admission: Option<serde_json::Value>,
    #[serde(default)]
    pub admission_checks: Vec<CheckState>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckState {
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

impl WorkloadStatus {
    fn is(&self, type_: &str) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }

    /// Quota reserved and not yet admitted or finished: the only time a check is decided.
    pub fn awaits_checks(&self) -> bool {
        self.admission.is_some()
            && self.is("QuotaReserved")
            && !self.is("Admitted")
            && !self.is("Finished")
    }

    /// The state of check `name`, if the Workload has it.
    pub fn check(&self, name: &str) -> Option<&CheckState> {
        self.admission_checks.iter().find(|c| c.name == name)
    }
}

impl WorkloadSpec {
    /// Every pod's CPU request, times the pods of each set, in vCPUs.
    pub fn vcpus(&self) -> f64 {
        self.pod_sets
            .iter()
            .map(|set| f64::from(set.count.max(0)) * pod_cpu_request(&template_pod(set)))
            .sum()
    }

    /// The first pod set's pod annotations: a Job's pod template carries them.
    fn annotations(&self) -> BTreeMap<String, String> {
        self.pod_sets
            .first()
            .and_then(|set| set.template.metadata.as_ref())
            .and_then(|meta| meta.annotations.clone())
            .unwrap_or_default()
    }
}

fn template_pod(set: &PodSet) -> Pod {
    Pod {
        spec: Some(set.template.spec.clone().unwrap_or_default()),
        ..Pod::default()
    }
}

fn node_selector(set: &PodSet) -> BTreeMap<String, String> {
    set.template
        .spec
        .as_ref()
        .and_then(|s: &PodSpec| s.node_selector.clone())
        .unwrap_or_default()
}

/// What the Workload asks for: the config's defaults, narrowed by its pod template's
/// deferral annotations; never later than the config's `maxDelay` from `created`.
pub fn request(
    params: &Params,
    spec: &WorkloadSpec,
    created: Timestamp,
) -> Result<Request, String> {
    let mut annotations = spec.annotations();
    annotations
        .entry(deferral::DURATION.to_string())
        .or_insert_with(|| format!("{}s", params.default_duration.as_secs()));
    annotations
        .entry(deferral::MAX_DELAY.to_string())
        .or_insert_with(|| format!("{}s", params.max_delay.as_secs()));
    // A zone the pod template's node selector pins it to wins over the config's.
    let selector_zone = spec
        .pod_sets
        .first()
        .and_then(|set| crate::zones::zone_for_node(&node_selector(set), None).zone);
    let zone = selector_zone.or_else(|| params.zone.clone());
    let mut request = deferral::parse_request(&annotations, zone, created)?;
    let bound = created + SignedDuration::try_from(params.max_delay).unwrap_or(SignedDuration::MAX);
    request.latest_start = request.latest_start.min(bound);
    Ok(request)
}

/// The podSetUpdates that pin every pod set to `zone` by the grid-zone label, except
/// sets whose own node selector already names a zone.
pub fn pin_updates(spec: &WorkloadSpec, zone: &GridZone) -> Vec<serde_json::Value> {
    spec.pod_sets
        .iter()
        .filter(|set| !node_selector(set).contains_key(crate::zones::GRID_ZONE_LABEL))
        .take(MAX_POD_SET_UPDATES)
        .map(|set| {
            serde_json::json!({
                "name": set.name,
                "nodeSelector": { crate::zones::GRID_ZONE_LABEL: zone.to_string() },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
