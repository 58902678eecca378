//! Writes the decision onto this agent's own Node: our taint, our label, our
//! condition, and nothing else, only when they change.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::decision::{Reason, TaintDecision};

pub const TAINT_KEY: &str = "carbon-kube.io/high-intensity";
pub const CLASS_LABEL: &str = "carbon-kube.io/intensity-class";
pub const CONDITION_TYPE: &str = "CarbonIntensityHigh";
const FIELD_MANAGER: &str = "carbon-kube";
const CONFLICT_RETRIES: usize = 5;

/// What carbon-kube owns on a Node, as wanted or as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedState {
    pub tainted: bool,
    pub class: Option<String>,
    /// `True`, `False` or `Unknown`; `None` when the Node has no such condition.
    pub condition_status: Option<String>,
}

impl OwnedState {
    pub fn of_node(node: &Node) -> Self {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        Self {
            tainted: taints.iter().any(|t| t.key == TAINT_KEY),
            class: node.labels().get(CLASS_LABEL).cloned(),
            condition_status: our_condition(node).map(|c| c.status.clone()),
        }
    }

    pub fn wanted(decision: &TaintDecision) -> Self {
        Self {
            tainted: decision.tainted,
            class: decision.class.map(|c| c.as_str().to_string()),
            condition_status: Some(condition_status(decision).to_string()),
        }
    }
}

fn our_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

fn condition_status(decision: &TaintDecision) -> &'static str {
    match decision.reason {
        Reason::NoData | Reason::Stale => "Unknown",
        _ if decision.tainted => "True",
        _ => "False",
    }
}

/// The taint list with ours added or removed, or `None` when it is already so.
/// Other taints, including another effect of a foreign taint, are kept in order.
pub fn taints_with_ours(
    taints: &[Taint],
    want: bool,
    effect: &str,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let ours = taints.iter().find(|t| t.key == TAINT_KEY);
    match (want, ours) {
        (true, Some(t)) if t.effect == effect => None,
        (false, None) => None,
        (true, _) => {
            let mut out: Vec<Taint> = taints
                .iter()
                .filter(|t| t.key != TAINT_KEY)
                .cloned()
                .collect();
            out.push(Taint {
                key: TAINT_KEY.to_string(),
                value: Some("true".to_string()),
                effect: effect.to_string(),
                time_added: Some(Time(now)),
            });
            Some(out)
        }
        (false, Some(_)) => Some(
            taints
                .iter()
                .filter(|t| t.key != TAINT_KEY)
                .cloned()
                .collect(),
        ),
    }
}

/// Merge-patches a Node with what `build` makes of the latest copy, carrying
/// the resourceVersion it was built from, so that a concurrent change by
/// another component fails with 409 instead of being overwritten; then reads
/// the Node again and rebuilds. `build` returns `None` when there is nothing to
/// write. Returns the copy the last build saw and what `build` returned with
/// the patch that was written, if any.
pub async fn patch_fenced<T>(
    api: &Api<Node>,
    params: &PatchParams,
    mut node: Node,
    mut build: impl FnMut(&Node) -> Option<(serde_json::Value, T)>,
) -> Result<(Node, Option<T>), kube::Error> {
    let name = node.name_any();
    let mut attempt = 0;
    loop {
        let Some((mut patch, written)) = build(&node) else {
            return Ok((node, None));
        };
        patch["metadata"]["resourceVersion"] = json!(node.resource_version());
        match api.patch(&name, params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok((node, Some(written))),
            Err(kube::Error::Api(status))
                if status.code == 409 && attempt + 1 < CONFLICT_RETRIES =>
            {
                warn!(node = %name, attempt, "node changed while patching it; reading it again");
                node = api.get(&name).await?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes our taint, label and condition onto one Node.
pub struct NodeWriter {
    api: Api<Node>,
    name: String,
    effect: String,
}

impl NodeWriter {
    pub fn new(api: Api<Node>, name: &str, effect: &str) -> Self {
        Self {
            api,
            name: name.to_string(),
            effect: effect.to_string(),
        }
    }

    /// Brings the Node to the decision. `node` is the latest copy we have; on a
    /// conflict the Node is read again. Returns whether the taint changed.
    pub async fn apply(
        &self,
        node: &Node,
        decision: &TaintDecision,
        message: &str,
    ) -> Result<bool, kube::Error> {
        let wanted = OwnedState::wanted(decision);
        let found = OwnedState::of_node(node);
        let mut taint_changed = false;
        if wanted.tainted != found.tainted || wanted.class != found.class {
            taint_changed = self.write_taint_and_label(node.clone(), &wanted).await?;
        }
        if wanted.condition_status != found.condition_status {
            self.write_condition(node, decision, message).await?;
        }
        Ok(taint_changed)
    }

    /// Taints have no merge key: the whole list goes out, fenced by
    /// [`patch_fenced`]. Returns whether the taint changed.
    async fn write_taint_and_label(
        &self,
        node: Node,
        wanted: &OwnedState,
    ) -> Result<bool, kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let (_, written) = patch_fenced(&self.api, &params, node, |node| {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let new_taints =
                taints_with_ours(&taints, wanted.tainted, &self.effect, Timestamp::now());
            let label_changed = node.labels().get(CLASS_LABEL) != wanted.class.as_ref();
            if new_taints.is_none() && !label_changed {
                return None;
            }
            let taint_changed = new_taints.is_some();
            let mut patch = json!({ "metadata": { "labels": { CLASS_LABEL: wanted.class } } });
            if let Some(list) = new_taints {
                patch["spec"] = json!({ "taints": list });
            }
            Some((patch, taint_changed))
        })
        .await?;
        let taint_changed = written.unwrap_or(false);
        if taint_changed {
            info!(node = %self.name, tainted = wanted.tainted, class = ?wanted.class, "carbon taint changed");
        }
        Ok(taint_changed)
    }

    /// Conditions merge by `type` in a strategic merge patch, so this touches only ours.
    async fn write_condition(
        &self,
        node: &Node,
        decision: &TaintDecision,
        message: &str,
    ) -> Result<(), kube::Error> {
        let status = condition_status(decision);
        let now = Time(Timestamp::now());
        let transition = match our_condition(node) {
            Some(c) if c.status == status => c.last_transition_time.clone().unwrap_or(now.clone()),
            _ => now.clone(),
        };
        let patch = json!({
            "status": { "conditions": [{
                "type": CONDITION_TYPE,
                "status": status,
                "reason": decision.reason.as_str(),
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": transition,
            }]}
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        self.api
            .patch_status(&self.name, &params, &Patch::Strategic(&patch))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
