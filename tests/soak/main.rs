//! Chaos soak (Jepsen's method on a small scale): a seeded random schedule of
//! combined faults against a real control plane and five agents, then
//! invariants checked on the apiserver's audit log, on what the harness saw
//! and on the agents' metrics.
//!
//! `cargo test --test soak -- --nocapture` runs the CI soaks, one after the
//! other: a fixed seed for 300 s of episodes against agent processes
//! (`chaos_soak`), then against the chart's pods on real nodes
//! (`chaos_soak_on_real_nodes`: root, see `tests/real_nodes.rs`). By hand:
//!
//! - `CARBON_KUBE_SOAK_SECS=3600 CARBON_KUBE_SOAK_SEED=random` a long soak on
//!   a fresh seed (printed first);
//! - `CARBON_KUBE_SOAK_SEED=S CARBON_KUBE_SOAK_EPISODES=K` replays the first
//!   K episodes of seed S (what a failure prints), whatever the time, then
//!   waits until its last pods are due, so that every one is judged;
//! - `CARBON_KUBE_SOAK_FROM=N` starts at episode N of the seed's schedule
//!   (numbered as in the full run, the zone order in force there set
//!   first): with `CARBON_KUBE_SOAK_EPISODES=K`, episodes N..N+K alone, to
//!   replay one episode of a long soak without the hour before it;
//! - `CARBON_KUBE_SOAK_LOGS=DIR` keeps each agent process's log in
//!   DIR/agent-NODE.log, every run of it in turn (a restart starts the
//!   working copy afresh), and the apiserver's audit log, which the
//!   invariants are checked on, in DIR/audit.log; the chart's pods log to
//!   `kubectl logs`;
//! - `CARBON_KUBE_SOAK_SHRINK=1` on failure re-runs ever longer prefixes of
//!   the failing schedule and reports the shortest that fails again.
//!
//! The schedule is a function of the seed; the timing of real processes is
//! not, so a replay re-injects the same faults in the same order at the same
//! offsets, and a timing-dependent failure may need a few replays.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod history;
mod invariants;
mod pods;
mod rng;
mod schedule;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chaos::{CONVERGENCE_WAIT, MAX_AGE, MAX_TAINTED_FRACTION, NODES, Record, Soak};
use history::{gated_pods, lease_holders, node_changes, parse_audit, score_changes};
use invariants::{DeferralSeen, Outcome, Violation};
use jiff::{SignedDuration, Timestamp};
use schedule::{Episode, episodes};

/// The CI soak's seed.
const CI_SEED: u64 = 20;
/// The real-node CI soak's: its first nine episodes hold kills of the leader
/// and of followers (SIGKILL and pod deletion in turn), freezes, network cuts,
/// apiserver pauses and restarts, two `helm upgrade`s and provider faults, and
/// none of the kinds left to processes (clock jumps, Node recreation).
const CI_SEED_REAL_NODES: u64 = 732;
const CI_SECS: u64 = 300;
/// More episodes than any run can get through: the run stops by time.
const MAX_EPISODES: usize = 10_000;
/// Convergence bound: lease (4 s) + dwell (4 s) + a poll (2 s) + the longest
/// Retry-After (20 s) + watches reconnecting after a restart, with margin.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(90);
/// Beyond max-age: a reconcile period (5 s) and a poll (2 s), with margin.
const STALE_SLACK: Duration = Duration::from_secs(10);
/// Past a pod's latest start: the planner releases a pod once less than a
/// planning slot (10 s here) is left, re-planning every 2 s, so a leader that
/// can act releases it before its latest start; this allows one re-plan
/// (2 s) and the release's round trip to the apiserver (3 s on the busy VM).
const RELEASE_SLACK: SignedDuration = SignedDuration::from_secs(5);

struct Plan {
    /// The agents are the chart's pods on real kubelets, not processes.
    real_nodes: bool,
    seed: u64,
    /// Run until this much time has passed, or exactly `episodes`.
    secs: u64,
    episodes: Option<usize>,
    /// The first episode of the schedule to run.
    from: usize,
    /// Where to keep the agent processes' logs.
    keep_logs: Option<std::path::PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn plan(real_nodes: bool) -> Plan {
    let seed = match env("CARBON_KUBE_SOAK_SEED").as_deref() {
        None if real_nodes => CI_SEED_REAL_NODES,
        None => CI_SEED,
        Some("random") => Timestamp::now().as_nanosecond() as u64,
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("CARBON_KUBE_SOAK_SEED={s}: a number or `random`")),
    };
    let number = |name: &str| {
        env(name).map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v}: not a whole number"))
        })
    };
    Plan {
        real_nodes,
        seed,
        secs: number("CARBON_KUBE_SOAK_SECS").unwrap_or(CI_SECS),
        episodes: number("CARBON_KUBE_SOAK_EPISODES").map(|n| n as usize),
        from: number("CARBON_KUBE_SOAK_FROM").unwrap_or(0) as usize,
        keep_logs: env("CARBON_KUBE_SOAK_LOGS").map(Into::into),
    }
}

/// The episodes `plan` runs, numbered as in the seed's whole schedule. A
/// window that starts later begins on the zone order in force there.
fn window(plan: &Plan) -> Vec<(usize, Episode)> {
    let count = plan.episodes.unwrap_or(MAX_EPISODES);
    let mut all = episodes(
        plan.seed,
        plan.from + count,
        NODES.len(),
        chaos::ZONES.len(),
    );
    let mut ran = all.split_off(plan.from.min(all.len()));
    if let Some(first) = ran.first_mut().filter(|e| e.intensities.is_none()) {
        first.intensities = all.iter().rev().find_map(|e| e.intensities.clone());
    }
    (plan.from..).zip(ran).collect()
}

/// One run's results.
struct Run {
    /// The episodes run, by their number in the seed's schedule.
    episodes: Vec<(usize, Episode)>,
    record: Record,
    checked: Checked,
    wall: Duration,
}

/// What the checkers found, with the figures they measured on the way.
struct Checked {
    outcomes: Vec<(&'static str, Outcome)>,
    strict_over_budget_node_secs: f64,
    lease_holders: usize,
    deferral: DeferralSeen,
}

impl Run {
    fn violations(&self) -> Vec<&Violation> {
        let mut all: Vec<&Violation> = self
            .checked
            .outcomes
            .iter()
            .flat_map(|(_, o)| &o.violations)
            .collect();
        all.sort_by_key(|v| v.at);
        all
    }

    /// The episodes up to the one in which the first violation happened.
    fn failing_prefix(&self) -> Option<usize> {
        let first = self.violations().first()?.at;
        let during = self.record.started.iter().filter(|s| **s <= first).count();
        Some(during.max(1))
    }
}

fn run(plan: &Plan) -> Run {
    let wall = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _enter = rt.enter();
    let all = window(plan);
    let mut soak = Soak::start(&rt, plan.real_nodes, plan.keep_logs.clone());
    let (stop, writer) = soak.foreign_writer(plan.seed ^ 0x5eed);
    let started = Instant::now();
    let mut done = Vec::new();
    for (i, episode) in all {
        if plan.episodes.is_none() && started.elapsed() >= Duration::from_secs(plan.secs) {
            break;
        }
        println!("episode {i}: {episode}");
        soak.run_episode(i, &episode);
        done.push((i, episode));
    }
    // A replay is short: its last pods would otherwise end it still pending.
    if plan.episodes.is_some() {
        soak.wait_for_pods_due(RELEASE_SLACK + SignedDuration::from_secs(1));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let foreign = writer.join().expect("foreign writer");
    let mut record = soak.finish();
    record.foreign_writes = foreign;
    let checked = check(&record);
    Run {
        episodes: done,
        record,
        checked,
        wall: wall.elapsed(),
    }
}

/// Every invariant over the run's record.
fn check(record: &Record) -> Checked {
    let writes = parse_audit(&record.audit);
    let nodes = node_changes(&writes);
    let scores = score_changes(&writes);
    let zone_of: BTreeMap<String, String> = NODES
        .iter()
        .map(|(n, z)| (n.to_string(), z.to_lowercase()))
        .collect();
    let end = Timestamp::now();
    let (budget, strict) = invariants::budget(
        &nodes,
        NODES.len(),
        MAX_TAINTED_FRACTION,
        &record.impairments,
    );
    let holders = lease_holders(&writes);
    let (released, deferral) = invariants::released_by_latest_start(
        &gated_pods(&writes),
        &holders,
        &record.impairments,
        RELEASE_SLACK,
        end,
    );
    let at_end = record.converged.last().map(|(at, _)| *at).unwrap_or(end);
    let outcomes = vec![
        (
            "single writer of CarbonScores (fenced by the Lease)",
            invariants::single_writer(&writes),
        ),
        ("never more Nodes tainted than the budget", budget),
        (
            "foreign taints, labels, conditions never lost",
            invariants::foreign_kept(&nodes),
        ),
        (
            "no taint on data older than max-age",
            invariants::no_taint_on_stale_data(
                &nodes,
                &scores,
                &zone_of,
                MAX_AGE,
                STALE_SLACK,
                &record.impairments,
                end,
            ),
        ),
        ("no pod held past its latest start", released),
        (
            "taints match the decisions after faults stop",
            invariants::convergence(&record.converged, CONVERGENCE_BOUND),
        ),
        (
            "no agent crash loop",
            invariants::no_crash_loop(
                &NODES.map(|(n, _)| n),
                &record.exits,
                Duration::from_secs(300),
                3,
            ),
        ),
        (
            "agents' metrics match the cluster at the end",
            invariants::final_beliefs(&record.final_agents, at_end),
        ),
    ];
    let mut changes = holders.iter().map(|(_, h)| h).collect::<Vec<_>>();
    changes.dedup();
    Checked {
        outcomes,
        strict_over_budget_node_secs: strict,
        lease_holders: changes.len(),
        deferral,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(plan: &Plan, run: &Run) -> String {
    let mut lines = vec![format!(
        "soak seed {} : {} episodes in {:.0} s wall ({} nodes, {} zones; agents: {})",
        plan.seed,
        run.episodes.len(),
        run.wall.as_secs_f64(),
        NODES.len(),
        chaos::ZONES.len(),
        if plan.real_nodes {
            "the chart's pods on real kubelets"
        } else {
            "processes"
        }
    )];
    let injected: Vec<String> = run
        .record
        .injected
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    lines.push(format!("faults injected by kind: {}", injected.join(", ")));
    if !run.record.skipped.is_empty() {
        lines.push(format!(
            "skipped (target already down or skewed, no leader found, apiserver paused): {:?}",
            run.record.skipped
        ));
    }
    let mut times: Vec<f64> = run
        .record
        .converged
        .iter()
        .filter_map(|(_, t)| t.map(|t| t.as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    lines.push(format!(
        "convergence after the last fault of each episode: p50 {:.1} s, p99 {:.1} s, max {:.1} s over {} episodes ({} did not converge within {:?})",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN),
        times.len(),
        run.record.converged.len() - times.len(),
        CONVERGENCE_WAIT
    ));
    lines.push(format!(
        "foreign writes applied: {}; Lease holder changes: {}; agent exits on their own: {}; \
         node-seconds over the strict budget (a tainted Node whose agent could not act): {:.1}",
        run.record.foreign_writes,
        run.checked.lease_holders.saturating_sub(1),
        run.record.exits.len(),
        run.checked.strict_over_budget_node_secs
    ));
    let seen = &run.checked.deferral;
    let mut margins = seen.margins.clone();
    margins.sort_by(f64::total_cmp);
    lines.push(format!(
        "deferrable pods created: {}; held by the leader (gated {} s or more): {}, released \
         before their latest start by {:.1} s at least, {:.1} s p50; released after latest start + \
         {} s while no leader could act (excused): {}; not yet due at the end: {}",
        run.record.deferred_pods,
        invariants::HELD.as_secs(),
        seen.held,
        -margins.last().copied().unwrap_or(f64::NAN),
        -percentile(&margins, 50.0),
        RELEASE_SLACK.as_secs(),
        seen.excused,
        seen.pending,
    ));
    if !run.record.rolls.is_empty() {
        let took: Vec<String> = run
            .record
            .rolls
            .iter()
            .map(|d| format!("{:.0} s", d.as_secs_f64()))
            .collect();
        lines.push(format!(
            "rolling upgrades (SIGTERM, restart on the next configuration, one agent at a time) took {}; \
             agents not ready within the wait: {}; helm upgrades failed: {:?}",
            took.join(", "),
            run.record.unready_after_upgrade,
            run.record.upgrade_failures
        ));
    }
    let total: usize = run.checked.outcomes.iter().map(|(_, o)| o.checks).sum();
    lines.push(format!("invariant checks made: {total}"));
    for (name, outcome) in &run.checked.outcomes {
        lines.push(format!(
            "  {name}: {} checks, {} violations",
            outcome.checks,
            outcome.violations.len()
        ));
    }
    lines.join("\n")
}

/// The agents as processes: every fault kind.
#[test]
fn chaos_soak() {
    soak(plan(false), "chaos_soak");
}

/// The agents as the chart's DaemonSet pods on five real kubelets (root,
/// and what `tests/tools/install.sh` installs; see `tests/real_nodes.rs`).
#[test]
fn chaos_soak_on_real_nodes() {
    soak(plan(true), "chaos_soak_on_real_nodes");
}

/// One soak at a time: each judges timing on a busy machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn soak(plan: Plan, test: &str) {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "soak: seed {}, {} from episode {} (replay: CARBON_KUBE_SOAK_SEED={} cargo test --test soak {test} -- --exact --nocapture)",
        plan.seed,
        match plan.episodes {
            Some(n) => format!("{n} episodes"),
            None => format!("{} s", plan.secs),
        },
        plan.from,
        plan.seed
    );
    let result = run(&plan);
    println!("{}", report(&plan, &result));
    let violations = result.violations();
    if violations.is_empty() {
        return;
    }
    let prefix = result.failing_prefix().unwrap_or(result.episodes.len());
    let mut failure = vec![format!("{} invariant violations:", violations.len())];
    failure.extend(
        violations
            .iter()
            .take(20)
            .map(|v| format!("  [{}] {} {}", v.invariant, v.at, v.what)),
    );
    failure.extend(result.record.exit_logs.iter().cloned());
    let (last, _) = result.episodes[prefix - 1];
    failure.push(format!(
        "the first violation happened in episode {last}; the schedule up to it:"
    ));
    failure.extend(
        result.episodes[..prefix]
            .iter()
            .map(|(i, e)| format!("  {i}: {e}")),
    );
    failure.push(format!(
        "replay it: {} cargo test --test soak {test} -- --exact --nocapture",
        replay_env(plan.seed, plan.from, prefix)
    ));
    if env("CARBON_KUBE_SOAK_SHRINK").is_some() {
        failure.push(shrink(&plan, prefix));
    }
    panic!("{}", failure.join("\n"));
}

/// The variables that run `count` episodes of `seed`'s schedule from `from`.
fn replay_env(seed: u64, from: usize, count: usize) -> String {
    let start = match from {
        0 => String::new(),
        n => format!(" CARBON_KUBE_SOAK_FROM={n}"),
    };
    format!("CARBON_KUBE_SOAK_SEED={seed}{start} CARBON_KUBE_SOAK_EPISODES={count}")
}

/// Replays prefixes of the run's window, shortest first, up to `prefix`
/// episodes, and says which is the shortest that fails again (each tried once).
fn shrink(failed: &Plan, prefix: usize) -> String {
    let seed = failed.seed;
    for k in 1..=prefix {
        let plan = Plan {
            real_nodes: failed.real_nodes,
            seed,
            secs: 0,
            episodes: Some(k),
            from: failed.from,
            keep_logs: None,
        };
        let again = run(&plan);
        println!("{}", report(&plan, &again));
        if !again.violations().is_empty() {
            return format!(
                "shrunk: {k} episodes fail again ({})",
                replay_env(seed, failed.from, k)
            );
        }
    }
    format!("shrinking: no prefix of up to {prefix} episodes failed again (timing-dependent)")
}

#[test]
fn percentiles_are_nearest_rank() {
    let xs = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(percentile(&xs, 50.0), 2.0);
    assert_eq!(percentile(&xs, 99.0), 4.0);
    assert!(percentile(&[], 50.0).is_nan());
}
