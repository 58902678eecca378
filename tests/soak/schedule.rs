//! The seeded fault schedule: a sequence of episodes, each a burst of one to
//! three overlapping faults followed by a quiet phase in which the harness
//! waits for the cluster to converge. The schedule depends on the seed alone;
//! who "the leader" is gets resolved when a fault starts.

use std::fmt;

use super::rng::Rng;

/// Whom a fault hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Whichever agent leads when the fault starts.
    Leader,
    /// The agent of node `i` (in the fleet's order).
    Agent(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderFault {
    Hang,
    Garbage,
    RateLimited { retry_after_secs: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// SIGKILL; the harness restarts it when the fault ends, as a kubelet would.
    Kill(Target),
    /// SIGSTOP, SIGCONT when the fault ends.
    Freeze(Target),
    /// SIGSTOP of the control plane (etcd and the apiserver).
    PauseApiServer,
    /// SIGTERM of the control plane, started again on the same etcd data.
    RestartApiServer,
    /// The agent's TCP path to the apiserver is cut (resets, then refused).
    CutNetwork(Target),
    /// The carbon API's latest-intensity route misbehaves.
    Provider(ProviderFault),
    /// The agent's wall clock jumps by this many seconds (libfaketime), back
    /// when the fault ends; its monotonic clock is untouched, as with NTP.
    ClockJump(Target, i64),
    /// The Node is deleted, then created again when the fault ends.
    RecreateNode(usize),
    /// What `helm upgrade` does to the DaemonSet: each agent in turn gets
    /// SIGTERM (SIGKILL after the grace period), starts again on a changed
    /// configuration, and the next goes once it is ready (maxUnavailable 1).
    /// It runs to its end, however long the fault was drawn.
    RollingUpgrade,
}

impl FaultKind {
    /// The kind's name in the figures.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kill(Target::Leader) => "kill-leader",
            Self::Kill(_) => "kill-agent",
            Self::Freeze(Target::Leader) => "freeze-leader",
            Self::Freeze(_) => "freeze-agent",
            Self::PauseApiServer => "pause-apiserver",
            Self::RestartApiServer => "restart-apiserver",
            Self::CutNetwork(_) => "cut-network",
            Self::Provider(ProviderFault::Hang) => "provider-hang",
            Self::Provider(ProviderFault::Garbage) => "provider-garbage",
            Self::Provider(ProviderFault::RateLimited { .. }) => "provider-429",
            Self::ClockJump(..) => "clock-jump",
            Self::RecreateNode(_) => "recreate-node",
            Self::RollingUpgrade => "rolling-upgrade",
        }
    }
}

/// One fault: starts `start_ms` into its episode and lasts `length_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub start_ms: u64,
    pub length_ms: u64,
}

/// A deferrable pod the harness creates `start_ms` into its episode: gated
/// by `carbon-kube.io/defer`, to start within `latest_in_s` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct DeferredPod {
    pub start_ms: u64,
    /// The zone it must run in (fleet's zone order); `None`: the dirtiest
    /// zone when it is created, whose forecast promises greener hours, so
    /// the leader holds it.
    pub zone: Option<usize>,
    pub latest_in_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// Zone intensities (g/kWh) set when the episode starts, in the fleet's
    /// zone order; `None` keeps the previous ones.
    pub intensities: Option<Vec<f64>>,
    pub faults: Vec<Fault>,
    pub pods: Vec<DeferredPod>,
}

/// Intensities that rank the zones unambiguously: the dirtiest one beats the
/// next by far more than the hysteresis, the cleanest is far below both.
pub const LEVELS: [f64; 3] = [640.0, 420.0, 90.0];

/// Episodes `0..count` of the schedule of `seed`, for a fleet of `nodes`
/// agents in `zones` zones. The same seed always gives the same episodes.
/// Pods come from a stream of their own, so that a seed's faults are the
/// same with or without them.
pub fn episodes(seed: u64, count: usize, nodes: usize, zones: usize) -> Vec<Episode> {
    let mut rng = Rng::new(seed);
    let mut pods_rng = Rng::new(seed ^ 0xdefe_5eed);
    (0..count)
        .map(|_| Episode {
            pods: deferred_pods(&mut pods_rng, zones),
            ..episode(&mut rng, nodes)
        })
        .collect()
}

/// One to three pods, most of them for the dirtiest zone, with latest starts
/// from just over one planning slot (10 s) ahead, which the leader releases
/// at once, to six slots ahead, which it holds until the last slot.
fn deferred_pods(rng: &mut Rng, zones: usize) -> Vec<DeferredPod> {
    (0..rng.range(1, 3))
        .map(|_| DeferredPod {
            start_ms: rng.range(0, 15_000),
            zone: (!rng.chance(70)).then(|| rng.below(zones)),
            latest_in_s: rng.range(15, 60),
        })
        .collect()
}

fn episode(rng: &mut Rng, nodes: usize) -> Episode {
    let intensities = rng.chance(60).then(|| {
        let mut levels = LEVELS.to_vec();
        rng.shuffle(&mut levels);
        levels
    });
    let count = rng.range(1, 3);
    let faults = (0..count)
        .map(|_| {
            let kind = fault_kind(rng, nodes);
            let length_s = match kind {
                // Long enough for the data to go stale (max-age) now and then.
                FaultKind::Provider(_) => rng.range(5, 45),
                FaultKind::RestartApiServer | FaultKind::RollingUpgrade => 1,
                FaultKind::PauseApiServer => rng.range(3, 15),
                _ => rng.range(2, 20),
            };
            Fault {
                kind,
                start_ms: rng.range(0, 10_000),
                length_ms: length_s * 1000,
            }
        })
        .collect();
    Episode {
        intensities,
        faults,
        pods: Vec::new(),
    }
}

fn target(rng: &mut Rng, nodes: usize) -> Target {
    if rng.chance(50) {
        Target::Leader
    } else {
        Target::Agent(rng.below(nodes))
    }
}

fn fault_kind(rng: &mut Rng, nodes: usize) -> FaultKind {
    // It restarts the whole fleet, one agent at a time: long, so rare.
    if rng.chance(5) {
        return FaultKind::RollingUpgrade;
    }
    match rng.below(10) {
        0 => FaultKind::Kill(target(rng, nodes)),
        1 => FaultKind::Freeze(target(rng, nodes)),
        2 => FaultKind::PauseApiServer,
        3 => FaultKind::RestartApiServer,
        4 => FaultKind::CutNetwork(target(rng, nodes)),
        5 => FaultKind::Provider(ProviderFault::Hang),
        6 => FaultKind::Provider(ProviderFault::Garbage),
        7 => FaultKind::Provider(ProviderFault::RateLimited {
            retry_after_secs: rng.range(2, 20),
        }),
        8 => {
            let seconds = *rng.pick(&[-120, -25, 25, 120]);
            FaultKind::ClockJump(target(rng, nodes), seconds)
        }
        _ => FaultKind::RecreateNode(rng.below(nodes)),
    }
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(levels) = &self.intensities {
            write!(f, "zones {levels:?}; ")?;
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|x| {
                format!(
                    "{:?} at +{:.1}s for {:.0}s",
                    x.kind,
                    x.start_ms as f64 / 1000.0,
                    x.length_ms as f64 / 1000.0
                )
            })
            .collect();
        write!(f, "{}", faults.join(", "))?;
        for pod in &self.pods {
            write!(
                f,
                "; deferred pod ({}) at +{:.1}s, latest start +{}s",
                pod.zone
                    .map_or("dirtiest zone".to_string(), |z| format!("zone {z}")),
                pod.start_ms as f64 / 1000.0,
                pod.latest_in_s
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_another_seed_another() {
        let a = episodes(7, 50, 5, 3);
        assert_eq!(a, episodes(7, 50, 5, 3));
        assert_ne!(a, episodes(8, 50, 5, 3));
        // A prefix is the start of the longer schedule: shrinking by prefix
        // replays exactly the episodes the failing run began with.
        assert_eq!(episodes(7, 10, 5, 3), a[..10]);
    }

    #[test]
    fn every_kind_comes_up_and_targets_stay_in_the_fleet() {
        let all = episodes(1, 400, 5, 3);
        let mut kinds: Vec<&str> = all
            .iter()
            .flat_map(|e| e.faults.iter().map(|f| f.kind.name()))
            .collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), 13, "{kinds:?}");
        for fault in all.iter().flat_map(|e| &e.faults) {
            match fault.kind {
                FaultKind::Kill(Target::Agent(i))
                | FaultKind::Freeze(Target::Agent(i))
                | FaultKind::CutNetwork(Target::Agent(i))
                | FaultKind::ClockJump(Target::Agent(i), _)
                | FaultKind::RecreateNode(i) => assert!(i < 5),
                _ => {}
            }
        }
        let pods: Vec<&DeferredPod> = all.iter().flat_map(|e| &e.pods).collect();
        assert!(pods.iter().any(|p| p.zone.is_none()));
        assert!(pods.iter().any(|p| p.zone.is_some()));
        for pod in pods {
            assert!(pod.zone.is_none_or(|z| z < 3), "{pod:?}");
            assert!((15..=60).contains(&pod.latest_in_s), "{pod:?}");
        }
    }
}
