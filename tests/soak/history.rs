//! The run's history as the apiserver recorded it: its audit log (JSON lines)
//! parsed into writes, each Node's states in order, each zone's carbon data.
//! Pure: the checkers in `invariants` read these, and their tests build them
//! by hand.

use std::collections::BTreeMap;

use carbon_kube::deferral::{GATE, LATEST_START};
use carbon_kube::node::{CLASS_LABEL, CONDITION_TYPE, TAINT_KEY};
use jiff::Timestamp;
use serde_json::Value;

/// Agent processes' service accounts are `agent-<node>` in the agents' namespace.
pub const AGENT_USER_PREFIX: &str = "system:serviceaccount:carbon-kube:agent-";
/// Their Lease identity is `carbon-kube-<node>`.
pub const IDENTITY_PREFIX: &str = "carbon-kube-";
/// The chart's agent pods all share one service account; their kubelet-mounted
/// tokens are bound to the pod and its node, which the audit log records.
pub const CHART_USER: &str = "system:serviceaccount:carbon-kube:carbon-kube";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const LEASE: &str = "carbon-kube-leader";

/// What the soak's apiserver records: CarbonScore writes with their body
/// (carbon data), Lease writes with the Lease they left behind (holder and
/// resourceVersion), Node and Pod writes likewise (a Pod's gates and latest
/// start; not its status or binding).
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: RequestResponse
  verbs: ["create", "update", "patch", "delete"]
  namespaces: ["carbon-kube"]
  resources:
  - group: "coordination.k8s.io"
    resources: ["leases"]
- level: Request
  verbs: ["create", "update", "patch", "delete"]
  resources:
  - group: "carbon-kube.io"
    resources: ["carbonscores", "carbonscores/status"]
- level: RequestResponse
  verbs: ["create", "update", "patch", "delete"]
  resources:
  - group: ""
    resources: ["nodes", "nodes/status"]
- level: RequestResponse
  verbs: ["create", "update", "patch", "delete"]
  resources:
  - group: ""
    resources: ["pods"]
- level: None
"#;

/// One completed write, from the audit log.
#[derive(Debug, Clone)]
pub struct Write {
    /// The agent's node, when an agent wrote it.
    pub agent: Option<String>,
    /// Its Lease identity (an agent pod's name; two pods of one node differ).
    pub identity: Option<String>,
    pub verb: String,
    pub resource: String,
    pub name: String,
    pub code: u64,
    pub received: Timestamp,
    pub done: Timestamp,
    pub request: Value,
    pub response: Value,
    /// Lease writes: the holder written, as its agent's node.
    pub holder: Option<String>,
}

impl Write {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// Lease writes: the holder's identity as written.
    pub fn holder_identity(&self) -> Option<&str> {
        self.request["spec"]["holderIdentity"].as_str()
    }

    /// The resourceVersion the write left (etcd's revision: commit order).
    pub fn version(&self) -> Option<u64> {
        self.response["metadata"]["resourceVersion"]
            .as_str()?
            .parse()
            .ok()
    }
}

/// `writes` in the order etcd committed them (the resourceVersion each
/// left), each with the time it was in place by: its completion, or a
/// later-committed write's if that completed first. The audit stamps a write
/// when its response is done, after the commit, so a write can be stamped
/// after one based on it: a holder's release after the takeover (seen in
/// replays of rolling upgrades), a pod's creation after the leader's release
/// of it. Without versions (an older audit policy), in order of completion.
fn in_commit_order(mut writes: Vec<&Write>) -> Vec<(Timestamp, &Write)> {
    if writes.iter().all(|w| w.version().is_some()) {
        writes.sort_by_key(|w| w.version());
    } else {
        writes.sort_by_key(|w| w.done);
    }
    let mut out: Vec<(Timestamp, &Write)> = Vec::with_capacity(writes.len());
    for w in writes.into_iter().rev() {
        let by = out.last().map_or(w.done, |(next, _)| w.done.min(*next));
        out.push((by, w));
    }
    out.reverse();
    out
}

/// The Lease's successful writes in commit order (see [`in_commit_order`]).
pub fn lease_writes(writes: &[Write]) -> Vec<(Timestamp, &Write)> {
    in_commit_order(
        writes
            .iter()
            .filter(|w| w.resource == "leases" && w.name == LEASE && w.ok())
            .collect(),
    )
}

/// The writer's node and Lease identity: an agent process by its service
/// account's name, a chart pod by the node and pod its token is bound to.
fn writer(event: &Value) -> (Option<String>, Option<String>) {
    let user = &event["user"];
    let username = user["username"].as_str().unwrap_or("");
    if let Some(node) = username.strip_prefix(AGENT_USER_PREFIX) {
        return (
            Some(node.to_string()),
            Some(format!("{IDENTITY_PREFIX}{node}")),
        );
    }
    if username != CHART_USER {
        return (None, None);
    }
    let extra = |key: &str| user["extra"][key][0].as_str().map(str::to_string);
    (extra(NODE_NAME_EXTRA), extra(POD_NAME_EXTRA))
}

/// Parses the audit log's completed writes; lines that are not events (a
/// line cut by a restart) are skipped. A Lease holder is resolved to its
/// node through the identities the writers themselves had.
pub fn parse_audit(text: &str) -> Vec<Write> {
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect();
    let node_of: BTreeMap<String, String> = events
        .iter()
        .filter_map(|e| match writer(e) {
            (Some(node), Some(identity)) => Some((identity, node)),
            _ => None,
        })
        .collect();
    events
        .into_iter()
        .filter_map(|e| {
            let holder = e["requestObject"]["spec"]["holderIdentity"]
                .as_str()
                .map(|h| {
                    node_of
                        .get(h)
                        .cloned()
                        .unwrap_or_else(|| h.strip_prefix(IDENTITY_PREFIX).unwrap_or(h).to_string())
                });
            let (agent, identity) = writer(&e);
            Some(Write {
                agent,
                identity,
                holder,
                verb: e["verb"].as_str()?.to_string(),
                resource: e["objectRef"]["resource"].as_str()?.to_string(),
                name: e["objectRef"]["name"].as_str().unwrap_or("").to_string(),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0),
                received: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                done: e["stageTimestamp"].as_str()?.parse().ok()?,
                request: e["requestObject"].clone(),
                response: e["responseObject"].clone(),
            })
        })
        .collect()
}

/// What the soak watches on a Node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeState {
    pub carbon_tainted: bool,
    /// Taints, labels and conditions carbon-kube does not own, as
    /// `kind key=value` strings (a condition with its status and reason).
    pub foreign: Vec<String>,
}

impl NodeState {
    pub fn of(node: &Value) -> NodeState {
        let mut foreign = Vec::new();
        let mut carbon_tainted = false;
        for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
            if taint["key"] == TAINT_KEY {
                carbon_tainted = true;
            } else {
                foreign.push(format!(
                    "taint {}={}:{}",
                    taint["key"], taint["value"], taint["effect"]
                ));
            }
        }
        for (key, value) in node["metadata"]["labels"].as_object().into_iter().flatten() {
            if key != CLASS_LABEL {
                foreign.push(format!("label {key}={value}"));
            }
        }
        for condition in node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if condition["type"] != CONDITION_TYPE {
                foreign.push(format!(
                    "condition {}={}/{}",
                    condition["type"], condition["status"], condition["reason"]
                ));
            }
        }
        foreign.sort();
        NodeState {
            carbon_tainted,
            foreign,
        }
    }
}

/// One change of a Node: who made it, when, and the Node after it (`None`:
/// deleted).
#[derive(Debug, Clone)]
pub struct NodeChange {
    pub at: Timestamp,
    pub agent: Option<String>,
    pub state: Option<NodeState>,
}

/// Each Node's successful writes in commit order (see [`in_commit_order`]):
/// an agent's patch based on a foreign write may be stamped before it.
pub fn node_changes(writes: &[Write]) -> BTreeMap<String, Vec<NodeChange>> {
    let mut by_node: BTreeMap<String, Vec<&Write>> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.resource == "nodes" && w.ok()) {
        by_node.entry(w.name.clone()).or_default().push(w);
    }
    by_node
        .into_iter()
        .map(|(node, writes)| {
            let changes = in_commit_order(writes)
                .into_iter()
                .map(|(at, w)| NodeChange {
                    at,
                    agent: w.agent.clone(),
                    state: (w.verb != "delete").then(|| NodeState::of(&w.response)),
                })
                .collect();
            (node, changes)
        })
        .collect()
}

/// The carbon data a zone's CarbonScore held from `at`: observed when, and
/// the leader's verdict.
#[derive(Debug, Clone)]
pub struct ScoreChange {
    pub at: Timestamp,
    pub observed_at: Option<Timestamp>,
}

/// Each zone's (by CarbonScore name) status writes in order.
pub fn score_changes(writes: &[Write]) -> BTreeMap<String, Vec<ScoreChange>> {
    let mut by_zone: BTreeMap<String, Vec<ScoreChange>> = BTreeMap::new();
    for w in writes
        .iter()
        .filter(|w| w.resource == "carbonscores" && w.ok() && w.request["status"].is_object())
    {
        by_zone
            .entry(w.name.clone())
            .or_default()
            .push(ScoreChange {
                at: w.done,
                observed_at: w.request["status"]["observedAt"]
                    .as_str()
                    .and_then(|t| t.parse().ok()),
            });
    }
    for changes in by_zone.values_mut() {
        changes.sort_by_key(|c| c.at);
    }
    by_zone
}

/// Who held the Lease from when: each successful write of it naming a
/// holder (a node), in the order they completed.
pub fn lease_holders(writes: &[Write]) -> Vec<(Timestamp, String)> {
    lease_writes(writes)
        .into_iter()
        .filter_map(|(at, w)| Some((at, w.holder()?.to_string())))
        .collect()
}

/// A pod created behind the deferral gate, as the audit log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatedPod {
    /// `namespace/name`.
    pub name: String,
    pub created: Timestamp,
    /// Its `carbon-kube.io/latest-start`; `None` when absent or not a time.
    pub latest_start: Option<Timestamp>,
    /// When a write first left it without the gate, and the agent that made it.
    pub released: Option<(Timestamp, Option<String>)>,
    pub deleted: Option<Timestamp>,
}

fn has_gate(pod: &Value) -> bool {
    pod["spec"]["schedulingGates"]
        .as_array()
        .is_some_and(|gates| gates.iter().any(|g| g["name"] == GATE))
}

/// Every pod created with the deferral gate, with when it lost the gate or
/// was deleted, in order of creation.
pub fn gated_pods(writes: &[Write]) -> Vec<GatedPod> {
    let pods = in_commit_order(
        writes
            .iter()
            .filter(|w| w.resource == "pods" && w.ok())
            .collect(),
    );
    let mut out: Vec<GatedPod> = Vec::new();
    for (at, w) in pods {
        let name = format!(
            "{}/{}",
            w.response["metadata"]["namespace"].as_str().unwrap_or(""),
            w.name
        );
        if w.verb == "create" {
            if has_gate(&w.response) {
                out.push(GatedPod {
                    name,
                    created: at,
                    latest_start: w.response["metadata"]["annotations"][LATEST_START]
                        .as_str()
                        .and_then(|t| t.parse().ok()),
                    released: None,
                    deleted: None,
                });
            }
            continue;
        }
        let Some(pod) = out
            .iter_mut()
            .rev()
            .find(|p| p.name == name && p.deleted.is_none())
        else {
            continue;
        };
        if w.verb == "delete" {
            pod.deleted = Some(at);
        } else if pod.released.is_none() && !has_gate(&w.response) {
            pod.released = Some((at, w.agent.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_becomes_a_write_and_a_node_state() {
        let line = serde_json::json!({
            "stage": "ResponseComplete", "verb": "patch",
            "user": {"username": format!("{AGENT_USER_PREFIX}a1")},
            "objectRef": {"resource": "nodes", "name": "a1"},
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": "2024-01-01T00:00:00.000001Z",
            "stageTimestamp": "2024-01-01T00:00:00.000002Z",
            "responseObject": {
                "metadata": {"resourceVersion": "7", "labels": {"x": "1", CLASS_LABEL: "red"}},
                "spec": {"taints": [{"key": TAINT_KEY, "effect": "PreferNoSchedule"},
                                    {"key": "other", "value": "v", "effect": "NoSchedule"}]},
                "status": {"conditions": [{"type": CONDITION_TYPE, "status": "True"},
                                          {"type": "Ready", "status": "True", "reason": "R"}]}
            }
        });
        let text = format!("{line}\nnot json\n");
        let writes = parse_audit(&text);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].agent.as_deref(), Some("a1"));
        let changes = node_changes(&writes);
        let state = changes["a1"][0].state.clone().unwrap();
        assert!(state.carbon_tainted);
        assert_eq!(
            state.foreign,
            [
                "condition \"Ready\"=\"True\"/\"R\"",
                "label x=\"1\"",
                "taint \"other\"=\"v\":\"NoSchedule\""
            ]
        );
    }

    #[test]
    fn a_nodes_writes_follow_commit_order_not_audit_stamps() {
        let write = |version: &str, done: &str, tainted: bool| {
            let taints = if tainted {
                serde_json::json!([{"key": TAINT_KEY, "effect": "PreferNoSchedule"}])
            } else {
                serde_json::json!([])
            };
            serde_json::json!({
                "stage": "ResponseComplete", "verb": "patch",
                "user": {"username": format!("{AGENT_USER_PREFIX}a1")},
                "objectRef": {"resource": "nodes", "name": "a1"},
                "responseStatus": {"code": 200},
                "requestReceivedTimestamp": done, "stageTimestamp": done,
                "responseObject": {"metadata": {"resourceVersion": version},
                                   "spec": {"taints": taints}}
            })
            .to_string()
        };
        // The untaint committed last, but its response was stamped first.
        let text = [
            write("9", "2024-01-01T00:00:01Z", false),
            write("8", "2024-01-01T00:00:02Z", true),
        ]
        .join("\n");
        let changes = &node_changes(&parse_audit(&text))["a1"];
        let tainted: Vec<bool> = changes
            .iter()
            .map(|c| c.state.as_ref().unwrap().carbon_tainted)
            .collect();
        assert_eq!(
            tainted,
            [true, false],
            "the last committed state is the last"
        );
        assert_eq!(
            changes[0].at, changes[1].at,
            "in place by the later commit's stamp"
        );
    }

    #[test]
    fn a_chart_pods_writes_are_its_nodes_and_its_lease_names_that_node() {
        let event = |resource: &str, node: &str, pod: &str, body: serde_json::Value| {
            serde_json::json!({
                "stage": "ResponseComplete", "verb": "update",
                "user": {"username": CHART_USER, "extra": {
                    NODE_NAME_EXTRA: [node], POD_NAME_EXTRA: [pod]}},
                "objectRef": {"resource": resource, "name": LEASE},
                "responseStatus": {"code": 200},
                "requestReceivedTimestamp": "2024-01-01T00:00:01Z",
                "stageTimestamp": "2024-01-01T00:00:01Z",
                "requestObject": body,
            })
            .to_string()
        };
        let holding = |pod: &str| serde_json::json!({"spec": {"holderIdentity": pod}});
        let lines = [
            event(
                "leases",
                "b1",
                "carbon-kube-x7k2p",
                holding("carbon-kube-x7k2p"),
            ),
            // Another writer naming that pod: still its node.
            serde_json::json!({
                "stage": "ResponseComplete", "verb": "update",
                "user": {"username": "admin"},
                "objectRef": {"resource": "leases", "name": LEASE},
                "responseStatus": {"code": 200},
                "requestReceivedTimestamp": "2024-01-01T00:00:02Z",
                "stageTimestamp": "2024-01-01T00:00:02Z",
                "requestObject": holding("carbon-kube-x7k2p"),
            })
            .to_string(),
            event(
                "leases",
                "a1",
                "carbon-kube-q9m4z",
                holding("carbon-kube-q9m4z"),
            ),
        ];
        let writes = parse_audit(&lines.join("\n"));
        let seen: Vec<(Option<&str>, Option<&str>)> = writes
            .iter()
            .map(|w| (w.agent.as_deref(), w.holder()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("b1"), Some("b1")),
                (None, Some("b1")),
                (Some("a1"), Some("a1"))
            ]
        );
    }

    /// A write to pod `p` stamped at `second`, that left resourceVersion `version`.
    fn pod_write(verb: &str, user: &str, second: u32, version: u64, gates: &[&str]) -> String {
        let gates: Vec<Value> = gates
            .iter()
            .map(|g| serde_json::json!({ "name": g }))
            .collect();
        serde_json::json!({
            "stage": "ResponseComplete", "verb": verb,
            "user": {"username": user},
            "objectRef": {"resource": "pods", "namespace": "default", "name": "p"},
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": format!("2024-01-01T00:00:{second:02}Z"),
            "stageTimestamp": format!("2024-01-01T00:00:{second:02}Z"),
            "responseObject": {
                "metadata": {"namespace": "default", "name": "p",
                             "resourceVersion": version.to_string(),
                             "annotations": {LATEST_START: "2024-01-01T00:00:40Z"}},
                "spec": {"schedulingGates": gates}
            }
        })
        .to_string()
    }

    #[test]
    fn a_gated_pod_is_followed_from_creation_to_release_and_deletion() {
        let agent = format!("{AGENT_USER_PREFIX}b1");
        let lines = [
            pod_write("create", "admin", 1, 10, &[GATE, "other"]),
            // Another gate goes first: the pod is still held.
            pod_write("patch", "admin", 2, 11, &[GATE]),
            pod_write("patch", &agent, 9, 12, &[]),
            pod_write("delete", "admin", 12, 13, &[]),
            // A pod created without our gate is none of deferral's business.
            pod_write("create", "admin", 13, 14, &["other"]),
        ];
        let pods = gated_pods(&parse_audit(&lines.join("\n")));
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            pods,
            [GatedPod {
                name: "default/p".into(),
                created: at("2024-01-01T00:00:01Z"),
                latest_start: Some(at("2024-01-01T00:00:40Z")),
                released: Some((at("2024-01-01T00:00:09Z"), Some("b1".into()))),
                deleted: Some(at("2024-01-01T00:00:12Z")),
            }]
        );
    }

    #[test]
    fn a_release_stamped_before_the_creation_still_counts() {
        // The leader released the pod 3 ms after its creation's response was
        // stamped (episode 76's first pod, replayed); on a busier machine the
        // release is stamped first. Commit order puts it after the creation.
        let agent = format!("{AGENT_USER_PREFIX}a1");
        let lines = [
            pod_write("patch", &agent, 4, 21, &[]),
            pod_write("create", "admin", 5, 20, &[GATE]),
            pod_write("delete", "admin", 30, 22, &[]),
        ];
        let pods = gated_pods(&parse_audit(&lines.join("\n")));
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].created, at("2024-01-01T00:00:04Z"));
        assert_eq!(
            pods[0].released,
            Some((at("2024-01-01T00:00:04Z"), Some("a1".into())))
        );
        assert_eq!(pods[0].deleted, Some(at("2024-01-01T00:00:30Z")));
    }
}
