//! Proof of life for the reconcile loop, read by /healthz. The loop goes round
//! at least every 5 s; one that stops going round (a call that hangs, a
//! deadlock) fails the liveness probe, and the kubelet restarts the agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Twelve of the loop's ticks: well beyond a slow API call or an apiserver
/// frozen for half a minute, which the loop rides out.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin`.
    last: AtomicU64,
}

impl Default for Heartbeat {
    /// Counts as a beat: a loop that has not started yet is not stalled.
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let since_origin = now.saturating_duration_since(self.origin).as_millis();
        let millis = u64::try_from(since_origin).unwrap_or(u64::MAX);
        self.last.store(millis, Ordering::Relaxed);
    }

    /// How long since the last beat, when that is longer than [`STALLED_AFTER`].
    pub fn stalled_at(&self, now: Instant) -> Option<Duration> {
        let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
        let age = now.saturating_duration_since(last);
        (age > STALLED_AFTER).then_some(age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_only_when_the_last_beat_is_too_old() {
        let heartbeat = Heartbeat::default();
        let start = Instant::now();
        assert_eq!(heartbeat.stalled_at(start), None);
        let late = start + STALLED_AFTER + Duration::from_secs(5);
        assert!(
            heartbeat
                .stalled_at(late)
                .is_some_and(|age| age > STALLED_AFTER)
        );
        // A later beat resets it: the same moment is no longer late, until
        // the loop misses as long again.
        heartbeat.beat_at(start + Duration::from_secs(50));
        assert_eq!(heartbeat.stalled_at(late), None);
        let again = start + Duration::from_secs(50) + STALLED_AFTER + Duration::from_secs(1);
        assert!(
            heartbeat
                .stalled_at(again)
                .is_some_and(|age| age > STALLED_AFTER)
        );
    }
}
