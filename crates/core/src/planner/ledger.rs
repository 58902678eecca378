//! What deferred work may still take, per zone and slot: the non-deferred
//! load learned by hour of the week, and the ledger of bookings against it.

use std::collections::VecDeque;

use super::PlannerParams;

// ---- Non-deferred load ---------------------------------------------------

/// The CPU non-deferred work keeps busy, learned per zone and hour of the
/// week: work follows the working week, so next Tuesday 10:00 looks like the
/// last ones. Each bucket is a running mean over its last `memory`
/// observations, so it follows slow drift.
#[derive(Debug, Clone)]
pub struct RigidLoad {
    memory: u32,
    /// Per zone, per hour of week: (mean vCPUs, observations, capped at `memory`).
    buckets: Vec<Vec<(f64, u32)>>,
}

impl RigidLoad {
    pub fn new(zones: usize, memory: u32) -> Self {
        Self {
            memory: memory.max(1),
            buckets: vec![vec![(0.0, 0); 168]; zones],
        }
    }

    /// Non-deferred work busy in `zone` during `hour_of_week`, in vCPUs.
    pub fn observe(&mut self, zone: usize, hour_of_week: usize, vcpus: f64) {
        if !vcpus.is_finite() {
            return;
        }
        let (mean, n) = &mut self.buckets[zone][hour_of_week % 168];
        *n = (*n + 1).min(self.memory);
        *mean += (vcpus.max(0.0) - *mean) / f64::from(*n);
    }

    /// What non-deferred work is expected to keep busy then; `None` before that hour was seen.
    pub fn expected(&self, zone: usize, hour_of_week: usize) -> Option<f64> {
        let (mean, n) = self.buckets[zone][hour_of_week % 168];
        (n > 0).then_some(mean)
    }
}

// ---- The ledger -----------------------------------------------------------

/// What a zone offers deferred work, slot by slot from now.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneCapacity {
    /// Allocatable CPU of the zone's schedulable nodes, in vCPUs.
    pub allocatable: f64,
    /// Expected non-deferred load per slot (slot 0: what it uses now).
    pub rigid: Vec<f64>,
    /// Deferred work already released and still running, per slot.
    pub deferred_running: Vec<f64>,
}

/// Booked vCPU per zone and slot against the room deferred work may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    /// Room left per zone and slot (can go below zero: a zone over-committed
    /// by running work shows the excess).
    pub(super) room: Vec<Vec<f64>>,
    booked: Vec<Vec<f64>>,
}

impl Ledger {
    /// Room per slot: the CPU non-deferred work leaves free, times `1 − headroom`,
    /// less deferred work still running. `slots` long for every zone (missing
    /// slots of `rigid` or `deferred_running` repeat the last value given, or 0).
    pub fn new(params: &PlannerParams, zones: &[ZoneCapacity], slots: usize) -> Self {
        let at = |v: &[f64], k: usize| v.get(k).or(v.last()).copied().unwrap_or(0.0);
        let room = zones
            .iter()
            .map(|z| {
                (0..slots)
                    .map(|k| {
                        (z.allocatable - at(&z.rigid, k)).max(0.0) * (1.0 - params.headroom)
                            - at(&z.deferred_running, k)
                    })
                    .collect()
            })
            .collect();
        Self {
            room,
            booked: vec![vec![0.0; slots]; zones.len()],
        }
    }

    pub fn slots(&self) -> usize {
        self.room.first().map_or(0, Vec::len)
    }

    /// vCPUs booked per slot in `zone` by this round's plan.
    pub fn booked(&self, zone: usize) -> &[f64] {
        &self.booked[zone]
    }

    /// vCPUs still free for deferred work per slot in `zone`.
    pub fn room(&self, zone: usize) -> &[f64] {
        &self.room[zone]
    }

    pub(super) fn book(&mut self, zone: usize, start: usize, duration: usize, vcpus: f64) {
        let end = (start + duration).min(self.slots());
        for k in start..end {
            self.room[zone][k] -= vcpus;
            self.booked[zone][k] += vcpus;
        }
    }

    /// For each start in `0..=last`, whether `vcpus` fit over `duration` slots
    /// (cut at the ledger's end): a sliding minimum, linear in the window.
    pub(super) fn fits(&self, zone: usize, last: usize, duration: usize, vcpus: f64) -> Vec<bool> {
        let room = &self.room[zone];
        let n = room.len();
        let mut out = Vec::with_capacity(last + 1);
        let mut window: VecDeque<usize> = VecDeque::new();
        let mut next = 0;
        for start in 0..=last.min(n.saturating_sub(1)) {
            let end = (start + duration).min(n);
            while next < end {
                while window.back().is_some_and(|&k| room[k] >= room[next]) {
                    window.pop_back();
                }
                window.push_back(next);
                next += 1;
            }
            while window.front().is_some_and(|&k| k < start) {
                window.pop_front();
            }
            out.push(window.front().is_some_and(|&k| room[k] >= vcpus - 1e-9));
        }
        out
    }
}
