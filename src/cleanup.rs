//! `carbon-kube cleanup`: removes carbon-kube's taint, label and condition from
//! every Node. Run by the Helm chart's post-delete hook Job after the agents
//! (and their permissions) are gone; idempotent, so a retried Job is harmless.

use std::time::Duration;

use anyhow::{Result, bail};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::node::{CLASS_LABEL, CONDITION_TYPE, OwnedState, patch_fenced, taints_with_ours};

const FIELD_MANAGER: &str = "carbon-kube-cleanup";
/// The last pass lists the Nodes at the deadline, to name what is left; a
/// request still unanswered this long after it fails the run all the same.
const LAST_LIST: Duration = Duration::from_secs(5);

/// Whether a Node carries any carbon-kube mark.
pub fn is_marked(node: &Node) -> bool {
    let state = OwnedState::of_node(node);
    state.tainted || state.class.is_some() || state.condition_status.is_some()
}

/// Cleans every Node, then checks again after `settle` (an agent that was still
/// running could have raced); returns once a pass finds nothing, or fails at
/// `timeout`, also when a request hangs.
pub async fn run(api: Api<Node>, timeout: Duration, settle: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    match tokio::time::timeout_at(deadline + LAST_LIST, passes(&api, deadline, settle)).await {
        Ok(outcome) => outcome,
        Err(_) => bail!("timed out after {timeout:?}: the API server did not answer"),
    }
}

async fn passes(api: &Api<Node>, deadline: Instant, settle: Duration) -> Result<()> {
    let mut cleaned_total = 0usize;
    loop {
        let nodes = api.list(&ListParams::default()).await?;
        let marked: Vec<Node> = nodes.items.into_iter().filter(is_marked).collect();
        if marked.is_empty() {
            info!(
                nodes_cleaned = cleaned_total,
                "no carbon-kube taint, label or condition left on any node"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = marked.iter().map(|n| n.name_any()).collect();
            bail!(
                "timed out with carbon-kube marks still on: {}",
                names.join(", ")
            );
        }
        for node in marked {
            match clean(api, node).await {
                Ok(name) => {
                    cleaned_total += 1;
                    info!(node = %name, "removed carbon-kube's taint, label and condition");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 403 => bail!("not allowed: {}", s.message),
                Err(e) => warn!(error = %e, "cleaning a node failed; will retry"),
            }
        }
        tokio::time::sleep(settle.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

async fn clean(api: &Api<Node>, node: Node) -> Result<String, kube::Error> {
    let name = node.name_any();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let (node, _) = patch_fenced(api, &params, node, |node| {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let without = taints_with_ours(&taints, false, "", Timestamp::now());
        if without.is_none() && !node.labels().contains_key(CLASS_LABEL) {
            return None;
        }
        let mut patch = json!({"metadata": {"labels": {CLASS_LABEL: null}}});
        if let Some(list) = without {
            patch["spec"] = json!({ "taints": list });
        }
        Some((patch, ()))
    })
    .await?;
    if OwnedState::of_node(&node).condition_status.is_some() {
        let patch =
            json!({"status": {"conditions": [{"type": CONDITION_TYPE, "$patch": "delete"}]}});
        api.patch_status(&name, &params, &Patch::Strategic(&patch))
            .await?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests;
