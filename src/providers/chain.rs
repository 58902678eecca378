//! The provider chain: providers in order, each behind a timeout and a circuit
//! breaker, with a per-zone cache of the last good reading. The breaker and
//! cache are plain state machines over an injected clock, so they are tested
//! without sleeping; `Chain::fetch` is the thin async edge around them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Provider, ProviderError};
use crate::carbon::{GridZone, Reading};

/// A 429's Retry-After opens the breaker for at most this long, so a bogus
/// header cannot silence a provider for days.
const MAX_RATE_LIMIT_HOLD: Duration = Duration::from_secs(3600);

/// Time source, injectable so breaker and cache tests need no sleeps.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Clone, Debug)]
pub struct ChainSettings {
    /// Bound on one provider's whole attempt (all its requests).
    pub attempt_timeout: Duration,
    /// Consecutive failures that open a provider's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one trial.
    pub breaker_cooldown: Duration,
    /// A zone's reading younger than this is served without any call.
    pub cache_ttl: Duration,
}

/// One provider asked (or refused by its open breaker) during a fetch.
/// Providers skipped because they do not cover the zone or lack credentials
/// are not attempts and do not appear.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub provider: &'static str,
    /// `ok` or [`ProviderError::outcome`].
    pub outcome: &'static str,
    pub seconds: f64,
}

/// The result of [`Chain::fetch`] with what it took to get it; `attempts` is
/// empty when the reading came from the cache.
#[derive(Debug)]
pub struct Fetch {
    pub result: Result<Reading, ChainError>,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// Nobody answered. `last_good` is the zone's most recent good reading,
    /// however old, so the caller can keep it and judge its age.
    #[error("{}", describe_failures(errors, last_good.as_ref()))]
    AllFailed {
        errors: Vec<(&'static str, ProviderError)>,
        last_good: Option<Reading>,
    },
}

fn describe_failures(
    errors: &[(&'static str, ProviderError)],
    last_good: Option<&Reading>,
) -> String {
    let mut text = if errors.is_empty() {
        "no carbon-intensity provider is configured".to_string()
    } else {
        let each: Vec<String> = errors
            .iter()
            .map(|(name, e)| format!("{name}: {e}"))
            .collect();
        format!("every provider failed: {}", each.join("; "))
    };
    if let Some(r) = last_good {
        let _ = write!(
            text,
            " (last good reading: {} g/kWh from {} at {})",
            r.grams_per_kwh, r.source, r.observed_at
        );
    }
    text
}

#[derive(Clone, Debug, PartialEq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Cooldown over: one trial call may go out. `trial_started` is set while
    /// that trial runs.
    HalfOpen {
        trial_started: Option<Instant>,
    },
}

/// A consecutive-failure circuit breaker for one provider.
#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    /// A trial older than this was abandoned (its fetch was cancelled), so
    /// another may start instead of the breaker staying half-open forever.
    trial_timeout: Duration,
    state: BreakerState,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration, trial_timeout: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            trial_timeout,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> &BreakerState {
        &self.state
    }

    /// Whether a call may go out at `now`; claims the half-open trial if so.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::HalfOpen {
                trial_started: Some(started),
            } if now.saturating_duration_since(started) < self.trial_timeout => false,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen {
                    trial_started: Some(now),
                };
                true
            }
        }
    }

    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// `hold` is a rate limit's Retry-After: the provider asked for silence,
    /// so the breaker opens for that long whatever the failure count.
    pub fn record_failure(&mut self, now: Instant, hold: Option<Duration>) {
        let held = hold.map(|h| now + h.min(MAX_RATE_LIMIT_HOLD));
        let tripped = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures < self.threshold {
                    self.state = BreakerState::Closed { failures };
                    None
                } else {
                    Some(now + self.cooldown)
                }
            }
            BreakerState::HalfOpen { .. } => Some(now + self.cooldown),
            // A call admitted before the breaker opened; keep the later end.
            BreakerState::Open { until } => Some(until.max(now + self.cooldown)),
        };
        if let Some(until) = tripped.into_iter().chain(held).max() {
            self.state = BreakerState::Open { until };
        }
    }

    /// The call said only "not my zone" or "not configured": no verdict on
    /// the provider's health, so a half-open trial is handed back.
    pub fn record_skip(&mut self) {
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen {
                trial_started: None,
            };
        }
    }
}

/// The last good reading per zone and when it was stored.
#[derive(Debug)]
pub struct ReadingCache {
    ttl: Duration,
    entries: HashMap<GridZone, (Reading, Instant)>,
}

impl ReadingCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The zone's reading if it was stored less than `ttl` before `now`.
    pub fn fresh(&self, zone: &GridZone, now: Instant) -> Option<&Reading> {
        self.entries
            .get(zone)
            .filter(|(_, stored)| now.saturating_duration_since(*stored) < self.ttl)
            .map(|(reading, _)| reading)
    }

    pub fn last_good(&self, zone: &GridZone) -> Option<&Reading> {
        self.entries.get(zone).map(|(reading, _)| reading)
    }

    pub fn store(&mut self, reading: Reading, now: Instant) {
        self.entries.insert(reading.zone.clone(), (reading, now));
    }
}

struct Link {
    provider: Arc<dyn Provider>,
    breaker: Mutex<Breaker>,
}

pub struct Chain {
    links: Vec<Link>,
    settings: ChainSettings,
    clock: Arc<dyn Clock>,
    cache: Mutex<ReadingCache>,
}

/// Poisoning only means another fetch panicked mid-update; the breaker and
/// cache states are valid after any single assignment, so keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Chain {
    pub fn new(providers: Vec<Arc<dyn Provider>>, settings: ChainSettings) -> Self {
        Self::with_clock(providers, settings, Arc::new(SystemClock))
    }

    pub fn with_clock(
        providers: Vec<Arc<dyn Provider>>,
        settings: ChainSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let links = providers
            .into_iter()
            .map(|provider| Link {
                provider,
                breaker: Mutex::new(Breaker::new(
                    settings.breaker_failures,
                    settings.breaker_cooldown,
                    settings.attempt_timeout,
                )),
            })
            .collect();
        Self {
            links,
            cache: Mutex::new(ReadingCache::new(settings.cache_ttl)),
            settings,
            clock,
        }
    }

    /// Provider names in chain order, e.g. to pre-register metric labels.
    pub fn provider_names(&self) -> Vec<&'static str> {
        self.links.iter().map(|l| l.provider.name()).collect()
    }

    pub fn settings(&self) -> &ChainSettings {
        &self.settings
    }

    /// The first good reading for `zone`, trying providers in order.
    pub async fn fetch(&self, zone: &GridZone) -> Fetch {
        if let Some(reading) = lock(&self.cache).fresh(zone, self.clock.now()) {
            return Fetch {
                result: Ok(reading.clone()),
                attempts: Vec::new(),
            };
        }
        let mut attempts = Vec::new();
        let mut errors = Vec::new();
        for link in &self.links {
            let name = link.provider.name();
            if !lock(&link.breaker).admit(self.clock.now()) {
                attempts.push(Attempt {
                    provider: name,
                    outcome: ProviderError::CircuitOpen.outcome(),
                    seconds: 0.0,
                });
                errors.push((name, ProviderError::CircuitOpen));
                continue;
            }
            let started = self.clock.now();
            let result = self.attempt(link.provider.as_ref(), zone).await;
            let finished = self.clock.now();
            let seconds = finished.saturating_duration_since(started).as_secs_f64();
            match result {
                Ok(reading) => {
                    lock(&link.breaker).record_success();
                    lock(&self.cache).store(reading.clone(), finished);
                    attempts.push(Attempt {
                        provider: name,
                        outcome: "ok",
                        seconds,
                    });
                    return Fetch {
                        result: Ok(reading),
                        attempts,
                    };
                }
                Err(error) if error.is_skip() => {
                    lock(&link.breaker).record_skip();
                    errors.push((name, error));
                }
                Err(error) => {
                    let hold = match &error {
                        ProviderError::RateLimited { retry_after } => *retry_after,
                        _ => None,
                    };
                    lock(&link.breaker).record_failure(finished, hold);
                    tracing::debug!(provider = name, %zone, %error, "provider failed; trying the next");
                    attempts.push(Attempt {
                        provider: name,
                        outcome: error.outcome(),
                        seconds,
                    });
                    errors.push((name, error));
                }
            }
        }
        let last_good = lock(&self.cache).last_good(zone).cloned();
        Fetch {
            result: Err(ChainError::AllFailed { errors, last_good }),
            attempts,
        }
    }

    /// One provider call, bounded in time; its answer is checked again here
    /// because a reading for the wrong zone or an implausible one must never
    /// reach a node, whichever provider produced it.
    async fn attempt(
        &self,
        provider: &dyn Provider,
        zone: &GridZone,
    ) -> Result<Reading, ProviderError> {
        let timeout = self.settings.attempt_timeout;
        let reading = tokio::time::timeout(timeout, provider.fetch(zone))
            .await
            .map_err(|_| ProviderError::Timeout(timeout))??;
        if reading.zone != *zone {
            return Err(ProviderError::Malformed(format!(
                "asked for zone {zone}, got a reading for {}",
                reading.zone
            )));
        }
        reading.validated().map_err(ProviderError::Invalid)
    }
}

#[cfg(test)]
mod tests;
