//! Contract tests: every provider against a local server speaking its API's
//! documented format, healthy and broken in each way we expect in the wild,
//! alone and inside the chain.

#[path = "support/carbon_api.rs"]
mod carbon_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use carbon_api::*;
use carbon_kube::carbon::{GridZone, Reading, SourceKind};
use carbon_kube::providers::electricity_maps::ElectricityMaps;
use carbon_kube::providers::noaa::{self, Noaa};
use carbon_kube::providers::static_table;
use carbon_kube::providers::uk::UkCarbonIntensity;
use carbon_kube::providers::watttime::WattTime;
use carbon_kube::providers::{
    Chain, ChainError, ChainSettings, HttpClient, Provider, ProviderError, ProviderKind, Secret,
    build_chain,
};
use jiff::Timestamp;

const TIMEOUT: Duration = Duration::from_millis(400);
const MAX_BYTES: usize = 64 * 1024;

fn zone(id: &str) -> GridZone {
    GridZone::parse(id).unwrap()
}

fn http() -> HttpClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    HttpClient::new(TIMEOUT, MAX_BYTES)
}

fn em(api: &CarbonApi, token: &str) -> Arc<dyn Provider> {
    Arc::new(ElectricityMaps::new(
        &api.electricity_maps_url(),
        Some(Secret::new(token.into())),
        http(),
    ))
}

fn wt(api: &CarbonApi, password: &str) -> Arc<dyn Provider> {
    Arc::new(WattTime::new(
        &api.watttime_url(),
        Some(WT_USERNAME.into()),
        Some(Secret::new(password.into())),
        BTreeMap::new(),
        http(),
    ))
}

fn uk(api: &CarbonApi, regions: &[(&str, u32)]) -> Arc<dyn Provider> {
    let regions = regions.iter().map(|(z, id)| (zone(z), *id)).collect();
    Arc::new(UkCarbonIntensity::new(&api.uk_url(), regions, http()))
}

fn noaa(api: &CarbonApi) -> Arc<dyn Provider> {
    Arc::new(Noaa::new(&api.noaa_url(), http()))
}

/// Always answers; shows the chain fell through to it.
struct Fallback;

#[async_trait]
impl Provider for Fallback {
    fn name(&self) -> &'static str {
        "fallback"
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        Ok(Reading {
            zone: zone.clone(),
            grams_per_kwh: 999.0,
            source: "fallback".into(),
            observed_at: Timestamp::now(),
            kind: SourceKind::Estimated,
            forecast: Vec::new(),
        })
    }
}

fn settings() -> ChainSettings {
    ChainSettings {
        attempt_timeout: TIMEOUT * 4,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(300),
        cache_ttl: Duration::ZERO,
    }
}

/// Each fault and the outcome a provider must report for it.
fn faults() -> Vec<(Fault, &'static str)> {
    vec![
        (Fault::Status(401), "unauthorized"),
        (Fault::Status(403), "unauthorized"),
        (
            Fault::RateLimited {
                retry_after_secs: 120,
            },
            "rate_limited",
        ),
        (Fault::Status(500), "server_error"),
        (Fault::Status(404), "client_error"),
        (Fault::Hang, "timeout"),
        (Fault::Truncated, "malformed"),
        (Fault::Oversized(4 * MAX_BYTES), "too_large"),
        (Fault::Garbage, "malformed"),
        (Fault::NaN, "malformed"),
        (Fault::Negative, "invalid"),
        (Fault::Null, "malformed"),
    ]
}

/// For every fault on `route`: the provider alone reports the right outcome
/// (and Retry-After), and a chain of [provider, fallback] falls through.
async fn check_faults(api: &CarbonApi, provider: Arc<dyn Provider>, zone_id: &str, route: &str) {
    let zone = zone(zone_id);
    let healthy = provider.fetch(&zone).await.expect("healthy before faults");
    assert_eq!(healthy.source, provider.name());
    for (fault, outcome) in faults() {
        api.set_fault(route, fault.clone());
        let err = provider
            .fetch(&zone)
            .await
            .expect_err(&format!("{route} {fault:?}"));
        assert_eq!(err.outcome(), outcome, "{route} {fault:?}: {err}");
        if let Fault::RateLimited { retry_after_secs } = fault {
            assert_eq!(
                err,
                ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(retry_after_secs))
                }
            );
        }
        let chain = Chain::new(vec![provider.clone(), Arc::new(Fallback)], settings());
        let fetch = chain.fetch(&zone).await;
        let seen: Vec<_> = fetch
            .attempts
            .iter()
            .map(|a| (a.provider, a.outcome))
            .collect();
        assert_eq!(
            seen,
            vec![(provider.name(), outcome), ("fallback", "ok")],
            "{route} {fault:?}"
        );
        assert_eq!(fetch.result.unwrap().source, "fallback");
        api.clear_faults();
    }
    provider
        .fetch(&zone)
        .await
        .expect("healthy again once the fault is gone");
}

#[tokio::test]
async fn electricity_maps_contract() {
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 312.5);
    let provider = em(&api, EM_TOKEN);
    let reading = provider.fetch(&zone("DE")).await.unwrap();
    assert_eq!(reading.grams_per_kwh, 312.5);
    assert!(!reading.kind.is_estimated());
    assert_eq!(reading.forecast.len(), 24);
    check_faults(&api, provider, "DE", EM_LATEST).await;
}

#[tokio::test]
async fn electricity_maps_forecast_refusal_is_not_a_failure_and_is_remembered() {
    let api = CarbonApi::start().await;
    api.set_intensity("FR", 56.0);
    api.set_fault(EM_FORECAST, Fault::Status(401));
    let provider = em(&api, EM_TOKEN);
    for _ in 0..3 {
        let reading = provider.fetch(&zone("FR")).await.unwrap();
        assert_eq!(reading.grams_per_kwh, 56.0);
        assert!(reading.forecast.is_empty());
    }
    assert_eq!(api.requests(EM_LATEST), 3);
    assert_eq!(
        api.requests(EM_FORECAST),
        1,
        "a free-tier key is not re-tried every poll"
    );

    // Other forecast failures are just "no forecast" too.
    let fresh = em(&api, EM_TOKEN);
    api.set_fault(EM_FORECAST, Fault::Garbage);
    assert!(fresh.fetch(&zone("FR")).await.unwrap().forecast.is_empty());
}

#[tokio::test]
async fn electricity_maps_unknown_zone_and_wrong_token() {
    let api = CarbonApi::start().await;
    let err = em(&api, EM_TOKEN).fetch(&zone("XX")).await.unwrap_err();
    assert_eq!(err, ProviderError::Status(404));
    api.set_intensity("DE", 300.0);
    let err = em(&api, "not-the-token")
        .fetch(&zone("DE"))
        .await
        .unwrap_err();
    assert_eq!(err, ProviderError::Unauthorized(401));
}

#[tokio::test]
async fn watttime_contract() {
    let api = CarbonApi::start().await;
    api.set_intensity("US-CAL-CISO", 250.0);
    let provider = wt(&api, WT_PASSWORD);
    let reading = provider.fetch(&zone("US-CAL-CISO")).await.unwrap();
    assert!(
        (reading.grams_per_kwh - 250.0).abs() < 1e-9,
        "lbs/MWh converted back: {}",
        reading.grams_per_kwh
    );
    assert!(reading.kind.is_estimated());
    assert_eq!(reading.forecast.len(), 24 * 12);
    check_faults(&api, provider, "US-CAL-CISO", WT_FORECAST).await;
}

#[tokio::test]
async fn watttime_login_faults_fail_the_fetch() {
    let api = CarbonApi::start().await;
    api.set_intensity("US-MIDA-PJM", 400.0);
    for (fault, outcome) in [
        (Fault::Status(500), "server_error"),
        (Fault::Garbage, "malformed"),
        (Fault::Hang, "timeout"),
    ] {
        api.set_fault(WT_LOGIN, fault);
        let err = wt(&api, WT_PASSWORD)
            .fetch(&zone("US-MIDA-PJM"))
            .await
            .unwrap_err();
        assert_eq!(err.outcome(), outcome);
    }
    assert_eq!(api.requests(WT_FORECAST), 0);
}

#[tokio::test]
async fn watttime_caches_its_token_and_logs_in_again_once_after_a_401() {
    let api = CarbonApi::start().await;
    api.set_intensity("US-TEX-ERCO", 380.0);
    let provider = wt(&api, WT_PASSWORD);
    provider.fetch(&zone("US-TEX-ERCO")).await.unwrap();
    provider.fetch(&zone("US-TEX-ERCO")).await.unwrap();
    assert_eq!(api.requests(WT_LOGIN), 1, "token reused");

    api.expire_watttime_tokens();
    provider.fetch(&zone("US-TEX-ERCO")).await.unwrap();
    assert_eq!(api.requests(WT_LOGIN), 2);
    assert_eq!(api.requests(WT_FORECAST), 4, "two ok, one 401, one retry");

    // A wrong password is refused at login, once, without a retry loop.
    let wrong = wt(&api, "wrong-password");
    assert_eq!(
        wrong.fetch(&zone("US-TEX-ERCO")).await.unwrap_err(),
        ProviderError::Unauthorized(401)
    );
    assert_eq!(api.requests(WT_LOGIN), 3);
}

#[tokio::test]
async fn watttime_skips_zones_without_a_region_and_uses_configured_ones() {
    let api = CarbonApi::start().await;
    let err = wt(&api, WT_PASSWORD).fetch(&zone("DE")).await.unwrap_err();
    assert!(err.is_skip(), "{err}");
    assert_eq!(api.requests(WT), 0);

    api.set_intensity("US-NW-GCPD", 90.0);
    api.map_watttime_region("CHPD", "US-NW-GCPD");
    let mut cfg = api.config();
    cfg.order = vec![ProviderKind::WattTime];
    cfg.watttime_regions
        .insert(zone("US-NW-GCPD"), "CHPD".into());
    let fetch = build_chain(&cfg, None).fetch(&zone("US-NW-GCPD")).await;
    assert!((fetch.result.unwrap().grams_per_kwh - 90.0).abs() < 1e-9);
}

#[tokio::test]
async fn uk_national_contract() {
    let api = CarbonApi::start().await;
    api.set_intensity("GB", 180.0);
    let provider = uk(&api, &[]);
    let reading = provider.fetch(&zone("GB")).await.unwrap();
    assert_eq!(reading.grams_per_kwh, 180.0);
    assert!(
        !reading.kind.is_estimated(),
        "the current slot has an actual"
    );
    assert!(reading.forecast.len() >= 90, "{}", reading.forecast.len());
    assert!(reading.observed_at <= Timestamp::now());
    check_faults(&api, provider, "GB", UK_NATIONAL).await;
}

#[tokio::test]
async fn uk_regional_contract() {
    let api = CarbonApi::start().await;
    api.set_intensity("GB-LDN", 140.0);
    api.map_uk_region(13, "GB-LDN");
    let provider = uk(&api, &[("GB-LDN", 13)]);
    let reading = provider.fetch(&zone("GB-LDN")).await.unwrap();
    assert_eq!(reading.grams_per_kwh, 140.0);
    assert!(
        reading.kind.is_estimated(),
        "regional figures are forecasts"
    );
    assert_eq!(api.requests(UK_REGIONAL), 1);
    assert!(provider.fetch(&zone("FR")).await.unwrap_err().is_skip());
    check_faults(&api, provider, "GB-LDN", UK_REGIONAL).await;
}

#[tokio::test]
async fn noaa_contract() {
    let api = CarbonApi::start().await;
    let average =
        static_table::yearly_average(&zone("US-CAL-CISO")).expect("static table covers CAISO");
    api.set_weather(100.0, 0.0);
    let provider = noaa(&api);
    let reading = provider.fetch(&zone("US-CAL-CISO")).await.unwrap();
    assert!(
        (reading.grams_per_kwh - average * noaa::MAX_FACTOR).abs() < 1e-9,
        "calm and overcast"
    );
    assert!(reading.kind.is_estimated());
    assert_eq!(reading.source, "noaa-estimate");
    assert_eq!(reading.forecast.len(), 24);
    assert_eq!(api.requests(NOAA_POINTS), 1);
    provider.fetch(&zone("US-CAL-CISO")).await.unwrap();
    assert_eq!(
        api.requests(NOAA_POINTS),
        1,
        "the grid URL is resolved once"
    );

    api.set_weather(0.0, 60.0);
    let windy = provider
        .fetch(&zone("US-CAL-CISO"))
        .await
        .unwrap()
        .grams_per_kwh;
    assert!(windy < average, "{windy} < {average}");
    assert!(windy >= average * noaa::MIN_FACTOR);

    assert!(provider.fetch(&zone("DE")).await.unwrap_err().is_skip());
    check_faults(&api, provider, "US-CAL-CISO", NOAA_GRID).await;
}

#[tokio::test]
async fn noaa_points_faults_fail_the_fetch() {
    let api = CarbonApi::start().await;
    api.set_fault(NOAA_POINTS, Fault::Status(503));
    let err = noaa(&api).fetch(&zone("US-TEX-ERCO")).await.unwrap_err();
    assert_eq!(err.outcome(), "server_error");
    assert_eq!(api.requests(NOAA_GRID), 0);
}

#[tokio::test]
async fn every_provider_failing_reports_all_failed_with_the_last_good_reading() {
    let api = CarbonApi::start().await;
    api.set_intensity("US-CAL-CISO", 210.0);
    let mut cfg = api.config();
    cfg.order = vec![
        ProviderKind::ElectricityMaps,
        ProviderKind::UkCarbonIntensity,
        ProviderKind::WattTime,
        ProviderKind::Noaa,
    ];
    let chain = build_chain(&cfg, None);
    let good = chain.fetch(&zone("US-CAL-CISO")).await.result.unwrap();
    assert_eq!(good.source, "electricity-maps");

    for provider in [EM, WT, NOAA] {
        api.set_fault(provider, Fault::Status(502));
    }
    let fetch = chain.fetch(&zone("US-CAL-CISO")).await;
    let seen: Vec<_> = fetch
        .attempts
        .iter()
        .map(|a| (a.provider, a.outcome))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("electricity-maps", "server_error"),
            ("watttime", "server_error"),
            ("noaa-estimate", "server_error")
        ]
    );
    let err = fetch.result.unwrap_err();
    let ChainError::AllFailed { errors, last_good } = &err;
    assert_eq!(last_good.as_ref(), Some(&good));
    assert_eq!(errors.len(), 4, "the skipping UK provider is listed too");
    let text = err.to_string();
    for part in [
        "electricity-maps: HTTP 502",
        "uk-carbon-intensity: does not cover zone US-CAL-CISO",
        "watttime: HTTP 502",
        "noaa-estimate: HTTP 502",
        "210 g/kWh",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
}

#[tokio::test]
async fn the_breaker_stops_calling_a_failing_api() {
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 300.0);
    api.set_fault(EM_LATEST, Fault::Status(500));
    let mut cfg = api.config();
    cfg.order = vec![ProviderKind::ElectricityMaps, ProviderKind::Static];
    cfg.breaker_failures = 2;
    let chain = build_chain(&cfg, None);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let fetch = chain.fetch(&zone("DE")).await;
        assert_eq!(fetch.result.unwrap().source, "static");
        outcomes.push(fetch.attempts[0].outcome);
    }
    assert_eq!(
        outcomes,
        [
            "server_error",
            "server_error",
            "circuit_open",
            "circuit_open"
        ]
    );
    assert_eq!(api.requests(EM_LATEST), 2);
}

#[tokio::test]
async fn rate_limits_silence_the_provider_for_retry_after() {
    let api = CarbonApi::start().await;
    api.set_intensity("DE", 300.0);
    api.set_fault(
        EM_LATEST,
        Fault::RateLimited {
            retry_after_secs: 600,
        },
    );
    let mut cfg = api.config();
    cfg.order = vec![ProviderKind::ElectricityMaps, ProviderKind::Static];
    let chain = build_chain(&cfg, None);
    assert_eq!(
        chain.fetch(&zone("DE")).await.attempts[0].outcome,
        "rate_limited"
    );
    assert_eq!(
        chain.fetch(&zone("DE")).await.attempts[0].outcome,
        "circuit_open"
    );
    assert_eq!(api.requests(EM_LATEST), 1);
}

#[tokio::test]
async fn unconfigured_providers_are_skipped_silently() {
    let api = CarbonApi::start().await;
    let mut cfg = api.config();
    cfg.electricity_maps_token = None;
    cfg.watttime_password = None;
    let fetch = build_chain(&cfg, None).fetch(&zone("DE")).await;
    let seen: Vec<_> = fetch
        .attempts
        .iter()
        .map(|a| (a.provider, a.outcome))
        .collect();
    assert_eq!(seen, vec![("static", "ok")]);
    assert_eq!(
        api.requests(EM) + api.requests(WT) + api.requests(UK) + api.requests(NOAA),
        0
    );
}

#[tokio::test]
async fn transport_errors_hide_the_query() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let provider = ElectricityMaps::new(
        &format!("http://127.0.0.1:{port}/v3"),
        Some(Secret::new("k".into())),
        http(),
    );
    let err = provider.fetch(&zone("DE")).await.unwrap_err();
    assert_eq!(err.outcome(), "transport", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/v3/carbon-intensity/latest") && !text.contains("zone="),
        "{text}"
    );
}

#[tokio::test]
async fn credentials_never_appear_in_errors_or_debug_output() {
    let em_key = "em-SECRET-key-4242";
    let wt_password = "wt-SECRET-password-4242";
    let api = CarbonApi::start().await;
    api.set_intensity("US-CAL-CISO", 200.0);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let mut texts = Vec::new();
    let mut cfg = api.config();
    cfg.electricity_maps_token = Some(Secret::new(em_key.into()));
    cfg.watttime_password = Some(Secret::new(wt_password.into()));
    cfg.order = vec![ProviderKind::ElectricityMaps, ProviderKind::WattTime];
    texts.push(format!("{cfg:?}"));

    // Refused credentials.
    let fetch = build_chain(&cfg, None).fetch(&zone("US-CAL-CISO")).await;
    texts.push(format!("{fetch:?}"));
    if let Err(e) = &fetch.result {
        texts.push(e.to_string());
    }
    // Unreachable, hanging and garbage servers, with valid-looking secrets.
    for base in [closed.clone(), api.base_url()] {
        let mut cfg = api.config();
        cfg.electricity_maps_url = format!("{base}/electricitymaps/v3");
        cfg.watttime_url = format!("{base}/watttime");
        cfg.electricity_maps_token = Some(Secret::new(em_key.into()));
        cfg.watttime_password = Some(Secret::new(wt_password.into()));
        cfg.order = vec![ProviderKind::ElectricityMaps, ProviderKind::WattTime];
        for fault in [Fault::Hang, Fault::Garbage, Fault::Truncated] {
            api.set_fault(EM, fault.clone());
            api.set_fault(WT, fault);
            let fetch = build_chain(&cfg, None).fetch(&zone("US-CAL-CISO")).await;
            texts.push(format!("{fetch:?}"));
            if let Err(e) = &fetch.result {
                texts.push(e.to_string());
            }
        }
    }
    // A WattTime token the server issued must not leak either.
    api.clear_faults();
    let provider = wt(&api, WT_PASSWORD);
    provider.fetch(&zone("US-CAL-CISO")).await.unwrap();
    api.expire_watttime_tokens();
    api.set_fault(WT_LOGIN, Fault::Status(500));
    let err = provider.fetch(&zone("US-CAL-CISO")).await.unwrap_err();
    texts.push(format!("{err} {err:?}"));

    for text in &texts {
        for secret in [
            em_key,
            wt_password,
            EM_TOKEN,
            WT_PASSWORD,
            "wt-issued-token",
            "c0ffee",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked in {text}");
        }
    }
    assert!(texts.iter().any(|t| t.contains("[redacted]")));
}
