//! Migration's pure decisions: the eviction rate limit, whether greener
//! capacity exists elsewhere, and how long a node has been tainted. The agent
//! reads pods and nodes into these and evicts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use crate::carbon::{GridZone, SourceKind};

const HOUR: Duration = Duration::from_secs(3600);

/// At most `per_hour` evictions in any sliding hour.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_hour: u32,
    recent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_hour,
            recent: VecDeque::new(),
        }
    }

    /// Whether one more eviction fits at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
        {
            self.recent.pop_front();
        }
        (self.recent.len() as u64) < u64::from(self.per_hour)
    }

    /// Counts an eviction that happened at `now`.
    pub fn record(&mut self, now: Instant) {
        self.recent.push_back(now);
    }

    /// How long until the next eviction fits (zero when it fits now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.allows(now) {
            return Duration::ZERO;
        }
        self.recent.front().map_or(Duration::ZERO, |t| {
            HOUR.saturating_sub(now.saturating_duration_since(*t))
        })
    }
}

/// A zone as migration sees it, from its CarbonScore.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneView {
    pub zone: GridZone,
    pub grams_per_kwh: f64,
    pub threshold_grams_per_kwh: f64,
    pub taint_allowed: bool,
    /// Decided by the relative policy: the allowance alone says whether it is tainted.
    pub ranked: bool,
    pub nodes: u32,
    pub observed_at: Timestamp,
    pub source: SourceKind,
}

/// Greener capacity: the greenest zone other than `own` that
/// - has nodes,
/// - has fresh, live data (not older than `max_age`, not the static yearly table),
/// - is greener than `own` now, and
/// - is certainly not tainted: the leader does not allow tainting it, or
///   (absolute policy) its intensity is below its threshold minus the
///   hysteresis, where every agent removes the taint.
///
/// Whether its nodes have room is the scheduler's call; a replacement that
/// finds none waits, like any pod.
pub fn greener_capacity<'a>(
    own: &ZoneView,
    zones: &'a [ZoneView],
    hysteresis_grams_per_kwh: f64,
    max_age: Duration,
    now: Timestamp,
) -> Option<&'a ZoneView> {
    let max_age = SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX);
    zones
        .iter()
        .filter(|z| z.zone != own.zone && z.nodes > 0)
        .filter(|z| z.source != SourceKind::Static && now.duration_since(z.observed_at) <= max_age)
        .filter(|z| z.grams_per_kwh < own.grams_per_kwh)
        .filter(|z| {
            !z.taint_allowed
                || (!z.ranked
                    && z.grams_per_kwh < z.threshold_grams_per_kwh - hysteresis_grams_per_kwh)
        })
        .min_by(|a, b| a.grams_per_kwh.total_cmp(&b.grams_per_kwh))
}

/// Why a pod on a tainted node is not evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    NotOptedIn,
    Terminating,
    Finished,
    /// No controller would replace it (a bare pod, or a static pod).
    NoController,
    /// A DaemonSet's replacement comes back to the same node.
    DaemonSet,
    /// It tolerates the carbon taint, so its replacement may come back.
    ToleratesTaint,
    /// Its node selector pins it to this node or this zone.
    Pinned,
}

impl Ineligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOptedIn => "not opted in",
            Self::Terminating => "terminating",
            Self::Finished => "finished",
            Self::NoController => "no controller would replace it",
            Self::DaemonSet => "a DaemonSet pod comes back to the same node",
            Self::ToleratesTaint => {
                "it tolerates the carbon taint, so its replacement may come back"
            }
            Self::Pinned => "its node selector pins it to this node or zone",
        }
    }
}

/// Whether a node tainted since `since` has been tainted long enough.
pub fn long_enough(since: Timestamp, now: Timestamp, migrate_after: Duration) -> bool {
    let after = SignedDuration::try_from(migrate_after).unwrap_or(SignedDuration::MAX);
    now.duration_since(since) >= after
}
