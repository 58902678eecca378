//! The soak's invariants, each a pure function of the recorded history: the
//! audit log's writes, what the harness did (faults, agent exits) and what it
//! measured. Each returns how many checks it made and what it found broken.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::history::{GatedPod, NodeChange, ScoreChange, Write, lease_writes};

#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Timestamp,
    pub what: String,
}

/// One invariant's result.
#[derive(Debug, Default)]
pub struct Outcome {
    pub checks: usize,
    pub violations: Vec<Violation>,
}

impl Outcome {
    fn check(&mut self, ok: bool, violation: impl FnOnce() -> Violation) {
        self.checks += 1;
        if !ok {
            self.violations.push(violation());
        }
    }
}

/// A window in which a node's agent could not act on its node (frozen,
/// killed, cut off, its apiserver paused or restarting), or acted on a
/// skewed wall clock. `node: None` is every node.
#[derive(Debug, Clone)]
pub struct Impairment {
    pub node: Option<String>,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Seconds its wall clock was off; 0 for an agent that could not act.
    pub skew_secs: i64,
}

/// How long after an impairment ends the agent is still excused: a reconcile
/// period (5 s) plus reconnecting its watches with backoff.
pub const RECOVERY: SignedDuration = SignedDuration::from_secs(20);

fn excused(impairments: &[Impairment], node: &str, at: Timestamp) -> bool {
    impairments.iter().any(|i| {
        i.skew_secs == 0
            && i.node.as_deref().is_none_or(|n| n == node)
            && i.from <= at
            && at <= i.to + RECOVERY
    })
}

/// The largest backward skew of `node`'s clock around `at` (seconds): data
/// looks that much younger to it.
fn backward_skew(impairments: &[Impairment], node: &str, at: Timestamp) -> i64 {
    impairments
        .iter()
        .filter(|i| i.node.as_deref() == Some(node) && i.from <= at && at <= i.to + RECOVERY)
        .map(|i| (-i.skew_secs).max(0))
        .max()
        .unwrap_or(0)
}

/// At most one writer of CarbonScores at a time, fenced by the Lease: every
/// CarbonScore write came from the agent whose own Lease write, naming
/// itself holder, was the last committed of those in place before the write
/// arrived (see [`lease_writes`]; by Lease identity: a pod's replacement on
/// the same node is another agent).
pub fn single_writer(writes: &[Write]) -> Outcome {
    let leases = lease_writes(writes);
    let mut scores: Vec<&Write> = writes
        .iter()
        .filter(|w| w.resource == "carbonscores" && w.ok() && w.agent.is_some())
        .collect();
    scores.sort_by_key(|w| w.received);
    let mut out = Outcome::default();
    for write in scores {
        let last = leases
            .iter()
            .take_while(|(by, _)| *by <= write.received)
            .last()
            .map(|(_, l)| *l);
        let holder = last.and_then(|l| {
            l.identity
                .as_deref()
                .filter(|i| Some(*i) == l.holder_identity())
        });
        out.check(holder.is_some() && holder == write.identity.as_deref(), || Violation {
            invariant: "single-writer",
            at: write.received,
            what: format!(
                "{:?} ({:?}) wrote CarbonScore {} while the Lease was last written by {:?} naming {:?}",
                write.identity,
                write.agent,
                write.name,
                last.map(|l| &l.identity),
                last.and_then(|l| l.holder_identity())
            ),
        });
    }
    out
}

/// Every point in time a Node changed, with the carbon-tainted Nodes after it.
fn tainted_over_time(
    nodes: &BTreeMap<String, Vec<NodeChange>>,
) -> Vec<(Timestamp, BTreeMap<String, bool>)> {
    let mut changes: Vec<(&str, &NodeChange)> = nodes
        .iter()
        .flat_map(|(node, cs)| cs.iter().map(move |c| (node.as_str(), c)))
        .collect();
    changes.sort_by_key(|(_, c)| c.at);
    let mut now: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for (node, change) in changes {
        match &change.state {
            Some(state) => now.insert(node.to_string(), state.carbon_tainted),
            None => now.remove(node),
        };
        out.push((change.at, now.clone()));
    }
    out
}

/// Never more Nodes tainted than `floor(nodes × fraction)`. A tainted Node
/// whose agent cannot act (see [`Impairment`]) is not held against the
/// budget, since no agent could remove its taint: such time is returned
/// apart, as node-seconds over the strict budget.
pub fn budget(
    nodes: &BTreeMap<String, Vec<NodeChange>>,
    fleet: usize,
    max_fraction: f64,
    impairments: &[Impairment],
) -> (Outcome, f64) {
    let allowed = (fleet as f64 * max_fraction).floor() as usize;
    let mut out = Outcome::default();
    let mut strict_over = 0.0;
    let timeline = tainted_over_time(nodes);
    for (i, (at, tainted)) in timeline.iter().enumerate() {
        let on: Vec<&String> = tainted
            .iter()
            .filter(|(_, t)| **t)
            .map(|(n, _)| n)
            .collect();
        if on.len() > allowed
            && let Some((next, _)) = timeline.get(i + 1)
        {
            strict_over += (on.len() - allowed) as f64 * next.duration_since(*at).as_secs_f64();
        }
        let held: Vec<&&String> = on
            .iter()
            .filter(|n| !excused(impairments, n, *at))
            .collect();
        out.check(held.len() <= allowed, || Violation {
            invariant: "taint-budget",
            at: *at,
            what: format!("{held:?} tainted at once (of {on:?}); the budget is {allowed}"),
        });
    }
    (out, strict_over)
}

/// No agent write ever removes or changes a taint, label or condition that
/// carbon-kube does not own.
pub fn foreign_kept(nodes: &BTreeMap<String, Vec<NodeChange>>) -> Outcome {
    let mut out = Outcome::default();
    for (node, changes) in nodes {
        for pair in changes.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            let (Some(agent), Some(was), Some(is)) = (&after.agent, &before.state, &after.state)
            else {
                continue;
            };
            out.check(was.foreign == is.foreign, || Violation {
                invariant: "foreign-kept",
                at: after.at,
                what: format!(
                    "{agent}'s write to {node} changed foreign state {:?} to {:?}",
                    was.foreign, is.foreign
                ),
            });
        }
    }
    out
}

/// Intervals `[from, to)` in which `changes` show the Node carbon-tainted;
/// the last runs to `end`.
fn taint_intervals(changes: &[NodeChange], end: Timestamp) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let mut since: Option<Timestamp> = None;
    for change in changes {
        let on = change.state.as_ref().is_some_and(|s| s.carbon_tainted);
        match (since, on) {
            (None, true) => since = Some(change.at),
            (Some(from), false) => {
                out.push((from, change.at));
                since = None;
            }
            _ => {}
        }
    }
    out.extend(since.map(|from| (from, end)));
    out
}

/// No carbon taint on a Node while its zone's data is older than `max_age`
/// (plus `slack` for a reconcile period, plus the agent's backward clock
/// skew), unless its agent could not act. Sampled every second of every
/// taint interval, against the zone's CarbonScore as last written.
pub fn no_taint_on_stale_data(
    nodes: &BTreeMap<String, Vec<NodeChange>>,
    scores: &BTreeMap<String, Vec<ScoreChange>>,
    zone_of: &BTreeMap<String, String>,
    max_age: Duration,
    slack: Duration,
    impairments: &[Impairment],
    end: Timestamp,
) -> Outcome {
    let mut out = Outcome::default();
    for (node, changes) in nodes {
        let Some(zone) = zone_of.get(node) else {
            continue;
        };
        let empty = Vec::new();
        let zone_scores = scores.get(zone).unwrap_or(&empty);
        for (from, to) in taint_intervals(changes, end) {
            let mut at = from;
            while at < to {
                let observed = zone_scores
                    .iter()
                    .take_while(|s| s.at <= at)
                    .last()
                    .and_then(|s| s.observed_at);
                let skew = SignedDuration::from_secs(backward_skew(impairments, node, at));
                let limit =
                    SignedDuration::try_from(max_age + slack).unwrap_or(SignedDuration::MAX);
                let fresh = observed.is_some_and(|o| at.duration_since(o) <= limit + skew);
                out.check(fresh || excused(impairments, node, at), || Violation {
                    invariant: "no-taint-on-stale-data",
                    at,
                    what: format!(
                        "{node} tainted while {zone}'s data was observed at {observed:?} (max-age {max_age:?})"
                    ),
                });
                at += SignedDuration::from_secs(1);
            }
        }
    }
    // One report per node and stretch is enough.
    out.violations
        .dedup_by(|a, b| a.what.split(" tainted").next() == b.what.split(" tainted").next());
    out
}

/// Whether `node` held the Lease at some time in `[from, to]`: it was the
/// holder when `from` came, or a write in between named it.
fn led_during(holders: &[(Timestamp, String)], node: &str, from: Timestamp, to: Timestamp) -> bool {
    let before = holders.iter().take_while(|(at, _)| *at <= from).last();
    before.is_some_and(|(_, h)| h == node)
        || holders
            .iter()
            .any(|(at, h)| from < *at && *at <= to && h == node)
}

/// When a gated pod must have lost its gate: its latest start plus `slack`,
/// pushed out by every impairment of the leader (or of the apiserver) that
/// began before that time: to its end plus [`RECOVERY`] for a leader that
/// could not act, and by its skew for a leader whose clock ran behind (it
/// sees the latest start that much later), at most until the clock is back.
fn release_due(
    latest_start: Timestamp,
    slack: SignedDuration,
    holders: &[(Timestamp, String)],
    impairments: &[Impairment],
) -> Timestamp {
    let mut due = latest_start + slack;
    let mut sorted: Vec<&Impairment> = impairments.iter().collect();
    sorted.sort_by_key(|i| i.from);
    // An extension may bring in an impairment that began after the old due time.
    loop {
        let before = due;
        for i in &sorted {
            let leader = i
                .node
                .as_deref()
                .is_none_or(|n| led_during(holders, n, i.from, i.to));
            if !leader || i.from > due || i.skew_secs > 0 {
                continue;
            }
            let recovered = i.to + RECOVERY;
            let until = match i.skew_secs {
                0 => recovered,
                behind => recovered.min(latest_start + slack + SignedDuration::from_secs(-behind)),
            };
            due = due.max(until);
        }
        if due == before {
            return due;
        }
    }
}

/// What [`released_by_latest_start`] saw besides its verdicts.
#[derive(Debug, Default, PartialEq)]
pub struct DeferralSeen {
    /// Pods that kept the gate for at least [`HELD`] (the leader held them).
    pub held: usize,
    /// Pods released after latest start + slack, within an excused window.
    pub excused: usize,
    /// Gated at the end of the run and not yet due.
    pub pending: usize,
    /// Release time minus latest start, seconds, of held pods released in
    /// time without an excuse (negative: before it).
    pub margins: Vec<f64>,
}

/// A pod gated this long was held by the planner, not released at once.
pub const HELD: SignedDuration = SignedDuration::from_secs(5);

/// No pod held past its latest start: every pod created behind the deferral
/// gate with a latest start lost the gate (or was deleted) by its latest
/// start plus `slack`, unless no leader could act then (see [`release_due`]).
/// A pod still gated at `end` is checked if it was already due.
pub fn released_by_latest_start(
    pods: &[GatedPod],
    holders: &[(Timestamp, String)],
    impairments: &[Impairment],
    slack: SignedDuration,
    end: Timestamp,
) -> (Outcome, DeferralSeen) {
    let mut out = Outcome::default();
    let mut seen = DeferralSeen::default();
    for pod in pods {
        let Some(latest) = pod.latest_start else {
            continue;
        };
        let gone = match (pod.released.as_ref().map(|r| r.0), pod.deleted) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        };
        let due = release_due(latest, slack, holders, impairments);
        let held = gone.is_some_and(|g| g.duration_since(pod.created) >= HELD);
        seen.held += usize::from(held);
        let Some(gone) = gone.or((end > due).then_some(end)) else {
            seen.pending += 1;
            continue;
        };
        out.check(gone <= due, || Violation {
            invariant: "released-by-latest-start",
            at: due,
            what: format!(
                "{} (latest start {latest}) still gated at {due}: {}",
                pod.name,
                match pod.released {
                    Some((at, _)) => format!("released at {at}"),
                    None => "never released".to_string(),
                }
            ),
        });
        if gone > latest + slack && gone <= due {
            seen.excused += 1;
        } else if gone <= due && held {
            seen.margins.push(gone.duration_since(latest).as_secs_f64());
        }
    }
    (out, seen)
}

/// After each episode's faults end, every Node's taint matches its zone's
/// decision within `bound`: `converged[i]` is how long episode `i` took,
/// `None` if it never did within the harness's wait.
pub fn convergence(converged: &[(Timestamp, Option<Duration>)], bound: Duration) -> Outcome {
    let mut out = Outcome::default();
    for (i, (at, took)) in converged.iter().enumerate() {
        out.check(took.is_some_and(|t| t <= bound), || Violation {
            invariant: "convergence",
            at: *at,
            what: format!(
                "episode {i}: taints matched the decisions after {took:?}, bound {bound:?}"
            ),
        });
    }
    out
}

/// No agent of `fleet` exits on its own `max` times within `window` (a
/// crash loop). `exits`: each unplanned exit, by node.
pub fn no_crash_loop(
    fleet: &[&str],
    exits: &[(String, Timestamp)],
    window: Duration,
    max: usize,
) -> Outcome {
    let mut out = Outcome::default();
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    for node in fleet {
        let times: Vec<Timestamp> = exits
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, t)| *t)
            .collect();
        // The most exits in any window that ends at an exit.
        let (at, most) = times
            .iter()
            .map(|end| {
                let n = times
                    .iter()
                    .filter(|t| *t <= end && end.duration_since(**t) <= window)
                    .count();
                (*end, n)
            })
            .max_by_key(|(_, n)| *n)
            .unwrap_or((Timestamp::UNIX_EPOCH, 0));
        out.check(most < max, || Violation {
            invariant: "no-crash-loop",
            at,
            what: format!("{node}'s agent exited on its own {most} times within {window:?}"),
        });
    }
    out
}

/// What each agent says at the end, against the cluster: its
/// `carbon_kube_node_tainted` matches its Node, and exactly one leads.
/// `agents`: (node, tainted on the Node, its tainted metric, its is_leader).
pub fn final_beliefs(
    agents: &[(String, bool, Option<f64>, Option<f64>)],
    at: Timestamp,
) -> Outcome {
    let mut out = Outcome::default();
    for (node, tainted, believed, _) in agents {
        let want = if *tainted { 1.0 } else { 0.0 };
        out.check(*believed == Some(want), || Violation {
            invariant: "final-beliefs",
            at,
            what: format!("{node}'s agent says tainted={believed:?}, its Node says {tainted}"),
        });
    }
    let leaders: Vec<&String> = agents
        .iter()
        .filter(|a| a.3 == Some(1.0))
        .map(|a| &a.0)
        .collect();
    out.check(leaders.len() == 1, || Violation {
        invariant: "final-beliefs",
        at,
        what: format!("agents saying they lead at the end: {leaders:?}"),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::super::history::{LEASE, NodeState};
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn write(agent: &str, resource: &str, at: i64, holder: Option<&str>) -> Write {
        Write {
            agent: Some(agent.to_string()),
            identity: Some(format!("carbon-kube-{agent}")),
            verb: "patch".to_string(),
            resource: resource.to_string(),
            name: if resource == "leases" { LEASE } else { "de" }.to_string(),
            code: 200,
            received: t(at),
            done: t(at),
            request: holder.map_or(
                serde_json::Value::Null,
                |h| serde_json::json!({"spec": {"holderIdentity": format!("carbon-kube-{h}")}}),
            ),
            response: serde_json::Value::Null,
            holder: holder.map(str::to_string),
        }
    }

    #[test]
    fn single_writer_passes_a_handover_and_catches_an_ex_leader() {
        let mut writes = vec![
            write("a", "leases", 0, Some("a")),
            write("a", "carbonscores", 1, None),
            write("b", "leases", 5, Some("b")),
            write("b", "carbonscores", 6, None),
        ];
        let clean = single_writer(&writes);
        assert_eq!((clean.checks, clean.violations.len()), (2, 0));
        writes.push(write("a", "carbonscores", 7, None));
        let caught = single_writer(&writes);
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(7));
    }

    /// A Lease write that left resourceVersion `version`.
    fn versioned(version: u64, mut w: Write) -> Write {
        w.response = serde_json::json!({"metadata": {"resourceVersion": version.to_string()}});
        w
    }

    #[test]
    fn single_writer_orders_the_lease_by_commit_not_by_audit_stamp() {
        // b releases the Lease on SIGTERM; a's takeover, based on the
        // release's version, is stamped done before the release is.
        let release = |done| {
            let mut w = versioned(2, write("b", "leases", done, None));
            w.request = serde_json::json!({"spec": {"holderIdentity": null}});
            w
        };
        let writes = |release_done| {
            vec![
                versioned(1, write("b", "leases", 0, Some("b"))),
                write("b", "carbonscores", 1, None),
                versioned(3, write("a", "leases", 5, Some("a"))),
                release(release_done),
                write("a", "carbonscores", 7, None),
            ]
        };
        let clean = single_writer(&writes(6));
        assert_eq!(
            (clean.checks, clean.violations.len()),
            (2, 0),
            "{:?}",
            clean.violations
        );
        // Committed after the takeover, the release would leave no holder.
        let mut late = writes(6);
        late[3] = versioned(4, release(6));
        let caught = single_writer(&late);
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(7));
    }

    #[test]
    fn single_writer_tells_two_pods_of_one_node_apart() {
        // The chart's pods: a1's old pod still writes after its replacement,
        // on the same node, took the Lease.
        let pod = |pod: &str, mut w: Write| {
            w.agent = Some("a1".to_string());
            w.identity = Some(pod.to_string());
            if w.resource == "leases" {
                w.request = serde_json::json!({"spec": {"holderIdentity": pod}});
            }
            w
        };
        let mut writes = vec![
            pod("old", write("x", "leases", 0, Some("a1"))),
            pod("old", write("x", "carbonscores", 1, None)),
            pod("new", write("x", "leases", 5, Some("a1"))),
            pod("new", write("x", "carbonscores", 6, None)),
        ];
        assert!(single_writer(&writes).violations.is_empty());
        writes.push(pod("old", write("x", "carbonscores", 7, None)));
        let caught = single_writer(&writes);
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(7));
    }

    fn change(at: i64, agent: Option<&str>, tainted: bool, foreign: &[&str]) -> NodeChange {
        NodeChange {
            at: t(at),
            agent: agent.map(str::to_string),
            state: Some(NodeState {
                carbon_tainted: tainted,
                foreign: foreign.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    fn fleet(entries: &[(&str, Vec<NodeChange>)]) -> BTreeMap<String, Vec<NodeChange>> {
        entries
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect()
    }

    #[test]
    fn the_budget_catches_a_third_taint_unless_its_agent_was_frozen() {
        // Budget of 4 nodes at 0.5: 2. a1, a2 tainted; b1 tainted at 10 s
        // while a2 still is, untainted at 12 s.
        let nodes = fleet(&[
            (
                "a1",
                vec![
                    change(0, None, false, &[]),
                    change(1, Some("a1"), true, &[]),
                ],
            ),
            (
                "a2",
                vec![
                    change(0, None, false, &[]),
                    change(2, Some("a2"), true, &[]),
                ],
            ),
            (
                "b1",
                vec![
                    change(0, None, false, &[]),
                    change(10, Some("b1"), true, &[]),
                    change(12, Some("b1"), false, &[]),
                ],
            ),
            ("b2", vec![change(0, None, false, &[])]),
        ]);
        let (caught, strict) = budget(&nodes, 4, 0.5, &[]);
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(10));
        assert!((strict - 2.0).abs() < 1e-9, "{strict}");
        let frozen = Impairment {
            node: Some("a2".into()),
            from: t(5),
            to: t(11),
            skew_secs: 0,
        };
        let (excused, strict) = budget(&nodes, 4, 0.5, &[frozen]);
        assert!(excused.violations.is_empty(), "{:?}", excused.violations);
        assert!((strict - 2.0).abs() < 1e-9, "still counted strictly");
        let clean = fleet(&[("a1", nodes["a1"].clone()), ("a2", nodes["a2"].clone())]);
        assert!(budget(&clean, 4, 0.5, &[]).0.violations.is_empty());
    }

    #[test]
    fn foreign_state_dropped_by_an_agent_is_caught_but_not_by_its_owner() {
        let mut changes = vec![
            change(0, None, false, &["label x=1"]),
            change(1, None, false, &["label x=1", "taint t"]),
            change(2, Some("a1"), true, &["label x=1", "taint t"]),
            // The foreign writer removes its own taint: fine.
            change(3, None, true, &["label x=1"]),
        ];
        let clean = foreign_kept(&fleet(&[("a1", changes.clone())]));
        assert_eq!((clean.checks, clean.violations.len()), (1, 0));
        changes.push(change(4, Some("a1"), false, &[]));
        let caught = foreign_kept(&fleet(&[("a1", changes)]));
        assert_eq!(caught.violations.len(), 1);
        assert_eq!(caught.violations[0].at, t(4));
    }

    #[test]
    fn a_taint_kept_on_stale_data_is_caught_unless_excused() {
        let scores: BTreeMap<String, Vec<ScoreChange>> = [(
            "de".to_string(),
            vec![
                ScoreChange {
                    at: t(0),
                    observed_at: Some(t(0)),
                },
                // The provider fails: the leader keeps the last reading.
                ScoreChange {
                    at: t(20),
                    observed_at: Some(t(0)),
                },
            ],
        )]
        .into();
        let zone_of: BTreeMap<String, String> = [("a1".to_string(), "de".to_string())].into();
        let max_age = Duration::from_secs(30);
        let slack = Duration::from_secs(5);
        let check = |changes: Vec<NodeChange>, impairments: &[Impairment]| {
            no_taint_on_stale_data(
                &fleet(&[("a1", changes)]),
                &scores,
                &zone_of,
                max_age,
                slack,
                impairments,
                t(100),
            )
        };
        // Untainted at 34 s, within max-age + slack of the observation.
        let clean = check(
            vec![
                change(1, Some("a1"), true, &[]),
                change(34, Some("a1"), false, &[]),
            ],
            &[],
        );
        assert!(clean.violations.is_empty(), "{:?}", clean.violations);
        assert_eq!(clean.checks, 33);
        // Kept until 50 s: caught at 36 s, once.
        let late = vec![
            change(1, Some("a1"), true, &[]),
            change(50, Some("a1"), false, &[]),
        ];
        let caught = check(late.clone(), &[]);
        assert_eq!(caught.violations.len(), 1, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(36));
        // Its agent was frozen from 30 to 40 s: excused until 60 s.
        let frozen = Impairment {
            node: Some("a1".into()),
            from: t(30),
            to: t(40),
            skew_secs: 0,
        };
        assert!(check(late.clone(), &[frozen]).violations.is_empty());
        // Its clock 25 s behind makes the data look 25 s younger: excused to 60 s.
        let behind = Impairment {
            node: Some("a1".into()),
            from: t(0),
            to: t(40),
            skew_secs: -25,
        };
        assert!(check(late, &[behind]).violations.is_empty());
    }

    fn gated(name: &str, latest: i64, released: Option<i64>) -> GatedPod {
        GatedPod {
            name: name.to_string(),
            created: t(0),
            latest_start: Some(t(latest)),
            released: released.map(|r| (t(r), Some("a1".to_string()))),
            deleted: None,
        }
    }

    fn impairment(node: Option<&str>, from: i64, to: i64, skew_secs: i64) -> Impairment {
        Impairment {
            node: node.map(str::to_string),
            from: t(from),
            to: t(to),
            skew_secs,
        }
    }

    #[test]
    fn a_pod_held_past_its_latest_start_is_caught_unless_no_leader_could_act() {
        let slack = SignedDuration::from_secs(5);
        // a1 leads from the start; b1 takes over at 60 s.
        let holders = vec![(t(0), "a1".to_string()), (t(60), "b1".to_string())];
        let check = |pods: &[GatedPod], impairments: &[Impairment], end: i64| {
            released_by_latest_start(pods, &holders, impairments, slack, t(end))
        };
        // Released 5 s before its latest start, one at once, one due after the end.
        let clean = [
            gated("held", 30, Some(25)),
            gated("at-once", 30, Some(1)),
            gated("later", 200, None),
        ];
        let (ok, seen) = check(&clean, &[], 100);
        assert_eq!(
            (ok.checks, ok.violations.len()),
            (2, 0),
            "{:?}",
            ok.violations
        );
        assert_eq!(
            seen,
            DeferralSeen {
                held: 1,
                excused: 0,
                pending: 1,
                margins: vec![-5.0],
            }
        );
        // Released 10 s late, and one never released.
        let late = [gated("late", 30, Some(40)), gated("never", 30, None)];
        let (caught, _) = check(&late, &[], 100);
        assert_eq!(caught.violations.len(), 2, "{:?}", caught.violations);
        assert_eq!(caught.violations[0].at, t(35));
        // The leader frozen from 28 to 33 s: due at 53 s, so 40 s is excused but
        // never is not.
        let frozen = impairment(Some("a1"), 28, 33, 0);
        let (excused, seen) = check(&late, std::slice::from_ref(&frozen), 100);
        assert_eq!(excused.violations.len(), 1, "{:?}", excused.violations);
        assert_eq!(excused.violations[0].at, t(53));
        assert_eq!(seen.excused, 1);
        // A follower's impairment excuses nothing; the apiserver's does.
        let follower = impairment(Some("b1"), 28, 33, 0);
        assert_eq!(check(&late[..1], &[follower], 100).0.violations.len(), 1);
        let apiserver = impairment(None, 28, 33, 0);
        assert!(check(&late[..1], &[apiserver], 100).0.violations.is_empty());
        // One that began after the pod was due excuses nothing; one that began
        // within an extension extends it again.
        let after = impairment(Some("a1"), 36, 50, 0);
        assert_eq!(
            check(&late[..1], std::slice::from_ref(&after), 100)
                .0
                .violations
                .len(),
            1
        );
        let chained = [gated("chained", 30, Some(70))];
        assert_eq!(
            check(&chained, std::slice::from_ref(&frozen), 100)
                .0
                .violations
                .len(),
            1
        );
        let restart = impairment(None, 50, 60, 0);
        assert!(
            check(&chained, &[frozen, restart], 100)
                .0
                .violations
                .is_empty()
        );
        // The leader's clock 25 s behind: it sees the latest start 25 s later.
        let behind = impairment(Some("a1"), 0, 100, -25);
        assert!(
            check(&late[..1], std::slice::from_ref(&behind), 100)
                .0
                .violations
                .is_empty()
        );
        let too_late = [gated("too-late", 30, Some(70))];
        assert_eq!(check(&too_late, &[behind], 100).0.violations.len(), 1);
        // A clock ahead releases early: no excuse.
        let ahead = impairment(Some("a1"), 0, 100, 25);
        assert_eq!(check(&late[..1], &[ahead], 100).0.violations.len(), 1);
        // A gated pod deleted before it was due is not held.
        let deleted = [GatedPod {
            deleted: Some(t(20)),
            ..gated("deleted", 30, None)
        }];
        assert!(check(&deleted, &[], 100).0.violations.is_empty());
    }

    #[test]
    fn convergence_past_its_bound_or_never_is_caught() {
        let bound = Duration::from_secs(60);
        let ok = [(t(0), Some(Duration::from_secs(12)))];
        assert!(convergence(&ok, bound).violations.is_empty());
        let late = [(t(0), Some(Duration::from_secs(61))), (t(1), None)];
        assert_eq!(convergence(&late, bound).violations.len(), 2);
    }

    #[test]
    fn three_exits_in_five_minutes_are_a_crash_loop_two_are_not() {
        let window = Duration::from_secs(300);
        let fleet = ["a1", "a2"];
        let two = [("a1".to_string(), t(0)), ("a1".to_string(), t(100))];
        let clean = no_crash_loop(&fleet, &two, window, 3);
        assert_eq!((clean.checks, clean.violations.len()), (2, 0));
        let spread = [
            ("a1".to_string(), t(0)),
            ("a1".to_string(), t(200)),
            ("a1".to_string(), t(400)),
        ];
        assert!(
            no_crash_loop(&fleet, &spread, window, 3)
                .violations
                .is_empty()
        );
        let looping = [
            ("a1".to_string(), t(0)),
            ("a1".to_string(), t(10)),
            ("a1".to_string(), t(20)),
        ];
        let caught = no_crash_loop(&fleet, &looping, window, 3);
        assert_eq!(caught.violations.len(), 1);
        assert_eq!(caught.violations[0].at, t(20));
    }

    #[test]
    fn final_beliefs_catch_a_wrong_metric_and_two_leaders() {
        let good = [
            ("a1".to_string(), true, Some(1.0), Some(1.0)),
            ("a2".to_string(), false, Some(0.0), Some(0.0)),
        ];
        assert!(final_beliefs(&good, t(0)).violations.is_empty());
        let bad = [
            ("a1".to_string(), true, Some(0.0), Some(1.0)),
            ("a2".to_string(), false, Some(0.0), Some(1.0)),
        ];
        assert_eq!(final_beliefs(&bad, t(0)).violations.len(), 2);
    }
}
