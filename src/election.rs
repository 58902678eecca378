//! Leader election on a coordination.k8s.io Lease.
//!
//! Followers watch the Lease and send nothing while a leader renews it; they
//! try to acquire only once it has gone unrenewed for a whole lease duration,
//! as measured on their own monotonic clock from the moment they saw it change
//! (so clock skew between nodes does not matter), plus jitter so that a
//! thousand followers do not all try in the same instant.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

/// The Lease as last seen, and when this process saw it change.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub holder: Option<String>,
    pub resource_version: String,
    pub seen_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// We hold the Lease: keep renewing it.
    Renew,
    /// Nobody holds a live Lease: try to take it.
    Acquire,
    /// Someone else holds it: do nothing until then unless it changes.
    WaitUntil(Instant),
}

/// What to do about the Lease. Pure: the caller supplies the clock.
pub fn evaluate(
    observed: Option<&Observed>,
    me: &str,
    now: Instant,
    lease_duration: Duration,
) -> Action {
    let Some(lease) = observed else {
        return Action::Acquire;
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => Action::Renew,
        None | Some("") => Action::Acquire,
        Some(_) => {
            let expiry = lease.seen_at + lease_duration;
            if now >= expiry {
                Action::Acquire
            } else {
                Action::WaitUntil(expiry)
            }
        }
    }
}

/// Timing of renewals, derived from the lease duration as client-go does
/// (15 s lease: renew every 5 s, give up after 10 s without a renewal).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
    pub max_jitter: Duration,
}

impl Timing {
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_every: lease_duration / 3,
            renew_deadline: lease_duration * 2 / 3,
            max_jitter: lease_duration / 5,
        }
    }

    /// Whether a leader whose last successful renewal was at `last_renewed`
    /// must stop leader work now: before its Lease could expire for others.
    pub fn must_step_down(&self, last_renewed: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last_renewed) >= self.renew_deadline
    }
}

/// Until when this process may act as leader, checked right before each
/// leader write: a leader frozen past its renew deadline must not write even
/// if its elector has not yet run to step it down.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<Mutex<Option<Instant>>>);

impl Fence {
    pub fn holds(&self) -> bool {
        self.0
            .lock()
            .map(|until| until.is_some_and(|until| Instant::now() < until))
            .unwrap_or(false)
    }

    pub(crate) fn set(&self, until: Option<Instant>) {
        if let Ok(mut current) = self.0.lock() {
            *current = until;
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    is_leader: watch::Sender<bool>,
    fence: Fence,
}

impl Elector {
    pub fn new(
        api: Api<Lease>,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> (Self, watch::Receiver<bool>) {
        let (is_leader, rx) = watch::channel(false);
        let elector = Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            is_leader,
            fence: Fence::default(),
        };
        (elector, rx)
    }

    /// The fence that leader-only writers check.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Runs until `shutdown` turns true; then releases the Lease if held.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (seen_tx, mut seen_rx) = watch::channel::<(bool, Option<Lease>)>((false, None));
        // Dropping the set aborts the watch, however this loop ends.
        let mut watch = JoinSet::new();
        watch.spawn(watch_lease(self.api.clone(), self.name.clone(), seen_tx));
        let mut observed: Option<Observed> = None;
        let mut latest: Option<Lease> = None;
        let mut last_renewed: Option<Instant> = None;

        // Decide nothing until the first list has told us whether a Lease exists.
        while !seen_rx.borrow().0 {
            tokio::select! {
                changed = seen_rx.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
        loop {
            if let Some(lease) = seen_rx.borrow_and_update().1.clone() {
                observed = Some(observe(observed.take(), &lease));
                latest = Some(lease);
            }
            let now = Instant::now();
            // A leader that has gone its renew deadline without a successful
            // renewal (the process was paused or frozen, the apiserver hung)
            // stops leader work first, before any other await: others may
            // take over once the Lease expires.
            if last_renewed.is_some_and(|at| self.timing.must_step_down(at, now)) {
                self.set_leader(false);
                last_renewed = None;
            }
            let renew_due = last_renewed.map(|at| at + self.timing.renew_every);
            let wake_at = match evaluate(
                observed.as_ref(),
                &self.identity,
                now,
                self.timing.lease_duration,
            ) {
                // Our own renewal comes back through the watch: not a reason to write again.
                Action::Renew if renew_due.is_some_and(|due| now < due) => renew_due.unwrap_or(now),
                Action::Renew | Action::Acquire => {
                    let renewing = last_renewed.is_some() && *self.is_leader.borrow();
                    // The Lease may have been written as early as when the
                    // request went out, and followers count from then: so
                    // does the leader.
                    let started = Instant::now();
                    // A write can hang (a frozen apiserver keeps connections
                    // open): a leader waits no longer than its renew deadline.
                    let deadline = match last_renewed {
                        Some(at) if renewing => at + self.timing.renew_deadline,
                        _ => started + self.timing.renew_deadline,
                    };
                    let written =
                        tokio::time::timeout_at(deadline, self.try_write(latest.clone(), renewing))
                            .await
                            .unwrap_or(Err(WriteError::TimedOut));
                    match written {
                        Ok(lease) => {
                            observed = Some(observe(observed.take(), &lease));
                            latest = Some(lease);
                            last_renewed = Some(started);
                            self.fence.set(Some(started + self.timing.renew_deadline));
                            self.set_leader(true);
                            started + self.timing.renew_every
                        }
                        Err(WriteError::Lost) => {
                            // Someone wrote first; the watch brings their version.
                            last_renewed = None;
                            self.set_leader(false);
                            Instant::now() + self.timing.renew_every
                        }
                        Err(error @ (WriteError::Api(_) | WriteError::TimedOut)) => {
                            match error {
                                WriteError::Api(e) => {
                                    warn!(error = %e, lease = %self.name, "lease write failed")
                                }
                                _ => warn!(lease = %self.name, "lease write timed out"),
                            }
                            if let Some(at) = last_renewed {
                                if self.timing.must_step_down(at, Instant::now()) {
                                    self.set_leader(false);
                                    last_renewed = None;
                                }
                            }
                            Instant::now() + Duration::from_secs(2).min(self.timing.renew_every)
                        }
                    }
                }
                Action::WaitUntil(expiry) => {
                    last_renewed = None;
                    self.set_leader(false);
                    expiry + jitter(self.timing.max_jitter)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                changed = seen_rx.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        watch.abort_all();
        if *self.is_leader.borrow() {
            self.set_leader(false);
            self.release(latest).await;
        }
    }

    fn set_leader(&self, leader: bool) {
        if !leader {
            self.fence.set(None);
        }
        self.is_leader.send_if_modified(|current| {
            let changed = *current != leader;
            if changed {
                info!(identity = %self.identity, leader, "leadership changed");
            }
            *current = leader;
            changed
        });
    }

    /// Creates, takes over or renews the Lease. The write carries the
    /// resourceVersion we decided on, so two followers cannot both win, and
    /// needs no read first: a stale version fails with 409.
    async fn try_write(&self, latest: Option<Lease>, renewing: bool) -> Result<Lease, WriteError> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = latest else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(classify);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !renewing || spec.holder_identity.as_deref() != Some(&self.identity) {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(classify)
    }

    /// Clears the holder so a follower can take over at once instead of after expiry.
    async fn release(&self, latest: Option<Lease>) {
        let Some(mut lease) = latest else { return };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(e) => warn!(error = %e, "could not release the leader lease; it will expire"),
        }
    }
}

enum WriteError {
    /// Someone else changed the Lease first (HTTP 409).
    Lost,
    Api(kube::Error),
    /// No answer within the deadline; the write may still land.
    TimedOut,
}

fn classify(error: kube::Error) -> WriteError {
    match &error {
        kube::Error::Api(status) if status.code == 409 => WriteError::Lost,
        _ => WriteError::Api(error),
    }
}

/// Records a Lease seen now; the observation time moves only when it changed.
fn observe(previous: Option<Observed>, lease: &Lease) -> Observed {
    let resource_version = lease.resource_version().unwrap_or_default();
    match previous {
        Some(prev) if prev.resource_version == resource_version => prev,
        _ => Observed {
            holder: lease.spec.as_ref().and_then(|s| s.holder_identity.clone()),
            resource_version,
            seen_at: Instant::now(),
        },
    }
}

/// A draw in `0..=max`. Std's hasher keys are random per process and change with
/// every `RandomState`, which spreads agents' retries as well as an RNG crate
/// would; jitter needs no more, and the agent links no RNG.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let span = max.as_millis() as u64;
    if span == 0 {
        return max;
    }
    Duration::from_millis(RandomState::new().hash_one(()) % (span + 1))
}

/// Feeds the latest Lease (or its absence) into `seen`; the flag says the first list is done.
async fn watch_lease(api: Api<Lease>, name: String, seen: watch::Sender<(bool, Option<Lease>)>) {
    let config = crate::watches::config().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                seen.send_modify(|s| s.1 = Some(lease));
            }
            Ok(watcher::Event::Delete(_)) => seen.send_modify(|s| s.1 = None),
            Ok(watcher::Event::InitDone) => seen.send_modify(|s| s.0 = true),
            Ok(watcher::Event::Init) => {}
            Err(e) => warn!(error = %e, "lease watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests;
