//! Breaker, cache and chain behaviour under a fake clock: no sleeps.

use super::*;
use crate::testing::provider::{Scripted, reading};

struct FakeClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl FakeClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

fn zone() -> GridZone {
    GridZone::parse("DE").unwrap()
}

const COOLDOWN: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);

fn settings() -> ChainSettings {
    ChainSettings {
        attempt_timeout: TIMEOUT,
        breaker_failures: 3,
        breaker_cooldown: COOLDOWN,
        cache_ttl: TTL,
    }
}

fn chain(providers: Vec<Arc<Scripted>>, clock: &Arc<FakeClock>) -> Chain {
    let providers = providers
        .into_iter()
        .map(|p| p as Arc<dyn Provider>)
        .collect();
    Chain::with_clock(providers, settings(), clock.clone())
}

fn outcomes(fetch: &Fetch) -> Vec<(&'static str, &'static str)> {
    fetch
        .attempts
        .iter()
        .map(|a| (a.provider, a.outcome))
        .collect()
}

// ---- breaker ----

#[test]
fn breaker_opens_after_consecutive_failures_only() {
    let t0 = Instant::now();
    let mut b = Breaker::new(3, COOLDOWN, TIMEOUT);
    b.record_failure(t0, None);
    b.record_failure(t0, None);
    b.record_success();
    b.record_failure(t0, None);
    b.record_failure(t0, None);
    assert_eq!(b.state(), &BreakerState::Closed { failures: 2 });
    assert!(b.admit(t0));
    b.record_failure(t0, None);
    assert_eq!(
        b.state(),
        &BreakerState::Open {
            until: t0 + COOLDOWN
        }
    );
    assert!(!b.admit(t0 + COOLDOWN - Duration::from_millis(1)));
}

#[test]
fn half_open_allows_one_trial_then_closes_or_reopens() {
    let t0 = Instant::now();
    let mut b = Breaker::new(1, COOLDOWN, TIMEOUT);
    b.record_failure(t0, None);
    let t1 = t0 + COOLDOWN;
    assert!(b.admit(t1), "cooldown over: one trial");
    assert!(!b.admit(t1), "only one trial at a time");
    b.record_failure(t1, None);
    assert_eq!(
        b.state(),
        &BreakerState::Open {
            until: t1 + COOLDOWN
        }
    );

    let t2 = t1 + COOLDOWN;
    assert!(b.admit(t2));
    b.record_success();
    assert_eq!(b.state(), &BreakerState::Closed { failures: 0 });
    assert!(b.admit(t2) && b.admit(t2));
}

#[test]
fn skipped_or_abandoned_trials_free_the_half_open_slot() {
    let t0 = Instant::now();
    let mut b = Breaker::new(1, COOLDOWN, TIMEOUT);
    b.record_failure(t0, None);
    let t1 = t0 + COOLDOWN;
    assert!(b.admit(t1));
    b.record_skip();
    assert_eq!(
        b.state(),
        &BreakerState::HalfOpen {
            trial_started: None
        }
    );
    assert!(b.admit(t1));
    // The trial's fetch was dropped and never reported back.
    assert!(!b.admit(t1 + TIMEOUT - Duration::from_millis(1)));
    assert!(b.admit(t1 + TIMEOUT));
}

#[test]
fn rate_limits_open_the_breaker_for_retry_after_capped() {
    let t0 = Instant::now();
    let mut b = Breaker::new(5, COOLDOWN, TIMEOUT);
    b.record_failure(t0, Some(Duration::from_secs(30)));
    assert_eq!(
        b.state(),
        &BreakerState::Open {
            until: t0 + Duration::from_secs(30)
        }
    );

    let mut b = Breaker::new(5, COOLDOWN, TIMEOUT);
    b.record_failure(t0, Some(Duration::from_secs(86_400 * 7)));
    assert_eq!(
        b.state(),
        &BreakerState::Open {
            until: t0 + MAX_RATE_LIMIT_HOLD
        }
    );

    // A short Retry-After never shortens an already tripped cooldown.
    let mut b = Breaker::new(1, COOLDOWN, TIMEOUT);
    b.record_failure(t0, Some(Duration::from_secs(1)));
    assert_eq!(
        b.state(),
        &BreakerState::Open {
            until: t0 + COOLDOWN
        }
    );
}

#[test]
fn a_zero_threshold_still_needs_one_failure() {
    let t0 = Instant::now();
    let mut b = Breaker::new(0, COOLDOWN, TIMEOUT);
    assert!(b.admit(t0));
    b.record_failure(t0, None);
    assert!(!b.admit(t0));
}

// ---- cache ----

#[test]
fn cache_is_fresh_within_ttl_and_keeps_the_last_good_reading() {
    let t0 = Instant::now();
    let mut cache = ReadingCache::new(TTL);
    assert!(cache.fresh(&zone(), t0).is_none());
    cache.store(reading(&zone(), "a", 100.0), t0);
    assert_eq!(
        cache
            .fresh(&zone(), t0 + TTL - Duration::from_millis(1))
            .unwrap()
            .grams_per_kwh,
        100.0
    );
    assert!(cache.fresh(&zone(), t0 + TTL).is_none());
    assert_eq!(cache.last_good(&zone()).unwrap().grams_per_kwh, 100.0);
    assert!(cache.last_good(&GridZone::parse("FR").unwrap()).is_none());
}

// ---- chain ----

#[tokio::test]
async fn falls_through_to_the_next_provider() {
    let clock = FakeClock::new();
    let first = Scripted::always("first", Err(ProviderError::Status(503)));
    let second = Scripted::always("second", Ok(321.0));
    let chain = chain(vec![first.clone(), second.clone()], &clock);
    let fetch = chain.fetch(&zone()).await;
    assert_eq!(
        outcomes(&fetch),
        vec![("first", "server_error"), ("second", "ok")]
    );
    assert_eq!(fetch.result.unwrap().source, "second");
}

#[tokio::test]
async fn skips_are_not_attempts_and_do_not_trip_the_breaker() {
    let clock = FakeClock::new();
    let skipper = Scripted::always("skipper", Err(ProviderError::NotConfigured("no key")));
    let good = Scripted::always("good", Ok(1.0));
    let chain = chain(vec![skipper.clone(), good], &clock);
    for _ in 0..5 {
        let fetch = chain.fetch(&zone()).await;
        assert_eq!(outcomes(&fetch), vec![("good", "ok")]);
        clock.advance(TTL);
    }
    assert_eq!(
        skipper.calls(),
        5,
        "a skipping provider is asked every time"
    );
}

#[tokio::test]
async fn an_open_breaker_stops_calls_until_the_cooldown_ends() {
    let clock = FakeClock::new();
    let flaky = Scripted::new(
        "flaky",
        vec![
            Err(ProviderError::Status(500)),
            Err(ProviderError::Timeout(TIMEOUT)),
            Err(ProviderError::Transport("refused".into())),
            Ok(200.0),
        ],
    );
    let backup = Scripted::always("backup", Ok(400.0));
    let chain = chain(vec![flaky.clone(), backup], &clock);
    for _ in 0..3 {
        chain.fetch(&zone()).await;
        clock.advance(TTL);
    }
    assert_eq!(flaky.calls(), 3);
    let fetch = chain.fetch(&zone()).await;
    assert_eq!(
        outcomes(&fetch),
        vec![("flaky", "circuit_open"), ("backup", "ok")]
    );
    assert_eq!(flaky.calls(), 3, "no call while open");

    clock.advance(COOLDOWN);
    let fetch = chain.fetch(&zone()).await;
    assert_eq!(
        outcomes(&fetch),
        vec![("flaky", "ok")],
        "half-open trial succeeds"
    );
    assert_eq!(fetch.result.unwrap().grams_per_kwh, 200.0);
}

#[tokio::test]
async fn fresh_cache_answers_without_calls() {
    let clock = FakeClock::new();
    let only = Scripted::new("only", vec![Ok(100.0), Ok(150.0)]);
    let chain = chain(vec![only.clone()], &clock);
    assert_eq!(
        chain.fetch(&zone()).await.result.unwrap().grams_per_kwh,
        100.0
    );
    clock.advance(TTL - Duration::from_secs(1));
    let cached = chain.fetch(&zone()).await;
    assert!(cached.attempts.is_empty());
    assert_eq!(cached.result.unwrap().grams_per_kwh, 100.0);
    assert_eq!(only.calls(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        chain.fetch(&zone()).await.result.unwrap().grams_per_kwh,
        150.0
    );
    assert_eq!(only.calls(), 2);
}

#[tokio::test]
async fn total_failure_carries_the_last_good_reading_and_every_error() {
    let clock = FakeClock::new();
    let a = Scripted::new("a", vec![Ok(123.0), Err(ProviderError::Unauthorized(401))]);
    let b = Scripted::always("b", Err(ProviderError::UnsupportedZone(zone())));
    let chain = chain(vec![a, b], &clock);
    chain.fetch(&zone()).await.result.unwrap();
    clock.advance(TTL * 10);

    let fetch = chain.fetch(&zone()).await;
    assert_eq!(outcomes(&fetch), vec![("a", "unauthorized")]);
    let err = fetch.result.unwrap_err();
    let ChainError::AllFailed { errors, last_good } = &err;
    assert_eq!(errors.len(), 2);
    assert_eq!(last_good.as_ref().unwrap().grams_per_kwh, 123.0);
    let text = err.to_string();
    assert!(
        text.contains("a: credentials rejected (HTTP 401)"),
        "{text}"
    );
    assert!(text.contains("b: does not cover zone DE"), "{text}");
    assert!(
        text.contains("last good reading: 123 g/kWh from a"),
        "{text}"
    );

    let other = chain.fetch(&GridZone::parse("FR").unwrap()).await;
    let ChainError::AllFailed { last_good, .. } = other.result.unwrap_err();
    assert!(last_good.is_none(), "the cache is per zone");
}

#[tokio::test]
async fn readings_are_checked_again_by_the_chain() {
    let clock = FakeClock::new();
    let liar = Scripted::always("liar", Ok(f64::NAN));
    let good = Scripted::always("good", Ok(10.0));
    let chain = chain(vec![liar, good], &clock);
    let fetch = chain.fetch(&zone()).await;
    assert_eq!(outcomes(&fetch), vec![("liar", "invalid"), ("good", "ok")]);
}

#[tokio::test]
async fn an_empty_chain_says_so() {
    let clock = FakeClock::new();
    let chain = chain(vec![], &clock);
    let err = chain.fetch(&zone()).await.result.unwrap_err();
    assert!(
        err.to_string().contains("no carbon-intensity provider"),
        "{err}"
    );
}
