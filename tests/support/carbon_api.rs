//! A local stand-in for the four carbon-intensity APIs, speaking their
//! documented response formats (see `notes/carbon-apis.md`) from in-memory
//! per-zone state that a test steers, with injectable faults and request
//! counters. Hand-written HTTP/1.1 over tokio so that faults can break the
//! protocol itself (truncated bodies, unframed oversized bodies, hangs).
//!
//! Use from a test crate with
//! `#[path = "support/carbon_api.rs"] mod carbon_api;`.
#![allow(dead_code)]

#[path = "carbon_api_routes.rs"]
mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use carbon_kube::providers::{ProviderKind, ProvidersConfig, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Credentials the server accepts.
pub const EM_TOKEN: &str = "em-test-token-5d1f0c";
pub const WT_USERNAME: &str = "carbon-kube-test";
pub const WT_PASSWORD: &str = "wt-test-password-8a2e";

/// Provider names, for `set_fault` and `requests` (every route of that API).
pub const EM: &str = "electricity-maps";
pub const WT: &str = "watttime";
pub const UK: &str = "uk-carbon-intensity";
pub const NOAA: &str = "noaa";

/// Single routes, for `set_fault` and `requests`.
pub const EM_LATEST: &str = "electricity-maps/latest";
pub const EM_FORECAST: &str = "electricity-maps/forecast";
pub const WT_LOGIN: &str = "watttime/login";
pub const WT_FORECAST: &str = "watttime/forecast";
pub const UK_NATIONAL: &str = "uk-carbon-intensity/national";
pub const UK_REGIONAL: &str = "uk-carbon-intensity/regional";
pub const NOAA_POINTS: &str = "noaa/points";
pub const NOAA_GRID: &str = "noaa/grid";

/// What a route does instead of answering normally.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    RateLimited { retry_after_secs: u64 },
    /// Accept the request and never answer.
    Hang,
    /// 200 with an HTML error page.
    Garbage,
    /// Declare the full Content-Length, send half the body, close.
    Truncated,
    /// A valid document padded to this many bytes, without Content-Length.
    Oversized(usize),
    /// The intensity (or sky cover) as the bare token `NaN`, as some JSON
    /// encoders write it.
    NaN,
    /// The intensity (or sky cover) negated.
    Negative,
    /// The intensity (or sky cover) as `null`.
    Null,
}

/// Weather served by the NOAA routes for every point.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    pub sky_cover_percent: f64,
    pub wind_km_h: f64,
}

struct State {
    intensity: BTreeMap<String, f64>,
    /// Forecast points per zone set by a test; without them, a flat forecast.
    forecast: BTreeMap<String, Vec<(jiff::Timestamp, f64)>>,
    faults: BTreeMap<String, Fault>,
    requests: BTreeMap<String, usize>,
    watttime_regions: BTreeMap<String, String>,
    uk_regions: BTreeMap<u32, String>,
    weather: Weather,
    tokens: Vec<String>,
    issued: usize,
    /// Electricity Maps' `datetime` is the start of this period (seconds).
    em_period_secs: i64,
}

pub struct CarbonApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CarbonApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CarbonApi {
    pub async fn start() -> CarbonApi {
        Self::start_on("127.0.0.1").await
    }

    /// Listening on `ip`, e.g. a real node's IP, which that node's pods can reach.
    pub async fn start_on(ip: &str) -> CarbonApi {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind test server");
        let addr = listener.local_addr().expect("test server address");
        let state = Arc::new(Mutex::new(State {
            intensity: BTreeMap::new(),
            forecast: BTreeMap::new(),
            faults: BTreeMap::new(),
            requests: BTreeMap::new(),
            watttime_regions: BTreeMap::new(),
            uk_regions: BTreeMap::new(),
            weather: Weather {
                sky_cover_percent: 50.0,
                wind_km_h: 15.0,
            },
            tokens: Vec::new(),
            issued: 0,
            em_period_secs: 3600,
        }));
        let base = format!("http://{addr}");
        let task = tokio::spawn(serve(listener, state.clone(), base));
        CarbonApi { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The chart's values (`--set` pairs) that make this server its only
    /// provider, as Electricity Maps, with a short timeout.
    pub fn helm_values(&self) -> Vec<String> {
        vec![
            "providers.order={electricity-maps}".to_string(),
            format!(
                "providers.electricityMaps.url={}",
                self.electricity_maps_url()
            ),
            format!("providers.electricityMaps.token={EM_TOKEN}"),
            "providers.timeout=2s".to_string(),
        ]
    }

    pub fn electricity_maps_url(&self) -> String {
        format!("{}/electricitymaps/v3", self.base_url())
    }

    pub fn watttime_url(&self) -> String {
        format!("{}/watttime", self.base_url())
    }

    pub fn uk_url(&self) -> String {
        format!("{}/uk", self.base_url())
    }

    pub fn noaa_url(&self) -> String {
        format!("{}/noaa", self.base_url())
    }

    /// A provider config pointed at this server with valid credentials,
    /// short timeouts and no cache, every provider in the default order.
    pub fn config(&self) -> ProvidersConfig {
        ProvidersConfig {
            order: ProviderKind::ALL.to_vec(),
            electricity_maps_url: self.electricity_maps_url(),
            electricity_maps_token: Some(Secret::new(EM_TOKEN.into())),
            watttime_url: self.watttime_url(),
            watttime_username: Some(WT_USERNAME.into()),
            watttime_password: Some(Secret::new(WT_PASSWORD.into())),
            watttime_regions: BTreeMap::new(),
            uk_url: self.uk_url(),
            uk_regions: BTreeMap::new(),
            noaa_url: self.noaa_url(),
            timeout: Duration::from_millis(500),
            max_response_bytes: 64 * 1024,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(300),
            cache_ttl: Duration::ZERO,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The zone's intensity in g/kWh as every API reports it (WattTime in
    /// lbs/MWh that convert back to this value). `GB` is the UK national zone.
    pub fn set_intensity(&self, zone: &str, g_per_kwh: f64) {
        self.state()
            .intensity
            .insert(zone.to_ascii_uppercase(), g_per_kwh);
    }

    /// Electricity Maps' forecast for `zone`: these points (times as given,
    /// whole seconds) instead of the default 24 hourly points at the current
    /// intensity.
    pub fn set_forecast(&self, zone: &str, points: &[(jiff::Timestamp, f64)]) {
        self.state()
            .forecast
            .insert(zone.to_ascii_uppercase(), points.to_vec());
    }

    /// Back to the default flat forecast for `zone`.
    pub fn clear_forecast(&self, zone: &str) {
        self.state().forecast.remove(&zone.to_ascii_uppercase());
    }

    /// Answer WattTime `region` with `zone`'s intensity (the client's
    /// built-in regions work without this).
    pub fn map_watttime_region(&self, region: &str, zone: &str) {
        self.state()
            .watttime_regions
            .insert(region.into(), zone.to_ascii_uppercase());
    }

    /// Answer UK region `id` with `zone`'s intensity.
    pub fn map_uk_region(&self, id: u32, zone: &str) {
        self.state()
            .uk_regions
            .insert(id, zone.to_ascii_uppercase());
    }

    pub fn set_weather(&self, sky_cover_percent: f64, wind_km_h: f64) {
        self.state().weather = Weather {
            sky_cover_percent,
            wind_km_h,
        };
    }

    /// `target` is a route (`watttime/login`) or a provider (`watttime`);
    /// a route's own fault wins over its provider's.
    /// Electricity Maps' latest `datetime` is the start of the hour, so its
    /// data is up to an hour old when fresh; a shorter period here lets a
    /// test with a short `--max-age` tell fresh data from stale.
    pub fn set_em_period(&self, seconds: i64) {
        self.state().em_period_secs = seconds;
    }

    pub fn set_fault(&self, target: &str, fault: Fault) {
        self.state().faults.insert(target.into(), fault);
    }

    pub fn clear_fault(&self, target: &str) {
        self.state().faults.remove(target);
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Requests received by a route or by all routes of a provider.
    pub fn requests(&self, target: &str) -> usize {
        self.state().requests.get(target).copied().unwrap_or(0)
    }

    /// Invalidate every WattTime token issued so far, as if they expired.
    pub fn expire_watttime_tokens(&self) {
        self.state().tokens.clear();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A parsed request head.
pub(crate) struct Request {
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}

pub(crate) enum Reply {
    Full {
        status: u16,
        content_type: &'static str,
        headers: Vec<(String, String)>,
        body: String,
    },
    Hang,
    Truncated(String),
    Unframed(String),
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply::Full {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    fn body(&self) -> String {
        match self {
            Reply::Full { body, .. } | Reply::Truncated(body) | Reply::Unframed(body) => {
                body.clone()
            }
            Reply::Hang => String::new(),
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, base: String) {
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        let base = base.clone();
        tokio::spawn(async move {
            if let Some(request) = read_request(stream).await {
                let (stream, request) = request;
                let reply = respond(&state, &base, &request);
                write_reply(stream, reply).await;
            }
        });
    }
}

fn respond(state: &Mutex<State>, base: &str, request: &Request) -> Reply {
    let mut state = lock(state);
    let Some((provider, route)) = routes::classify(&request.path) else {
        return Reply::json(404, r#"{"error":"no such route"}"#.into());
    };
    *state.requests.entry(provider.into()).or_default() += 1;
    *state.requests.entry(route.into()).or_default() += 1;
    let fault = state
        .faults
        .get(route)
        .or_else(|| state.faults.get(provider))
        .cloned();
    match fault {
        Some(Fault::Status(code)) => Reply::json(
            code,
            format!(r#"{{"status":"error","message":"injected HTTP {code}"}}"#),
        ),
        Some(Fault::RateLimited { retry_after_secs }) => Reply::Full {
            status: 429,
            content_type: "application/json",
            headers: vec![("Retry-After".into(), retry_after_secs.to_string())],
            body: r#"{"error":"rate limited"}"#.into(),
        },
        Some(Fault::Hang) => Reply::Hang,
        Some(Fault::Garbage) => Reply::Full {
            status: 200,
            content_type: "text/html",
            headers: Vec::new(),
            body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        },
        Some(Fault::Truncated) => Reply::Truncated(
            routes::answer(
                &mut routes::Ctx::new(&mut state, base, None),
                route,
                request,
            )
            .body(),
        ),
        Some(Fault::Oversized(bytes)) => {
            let mut body = routes::answer(
                &mut routes::Ctx::new(&mut state, base, None),
                route,
                request,
            )
            .body();
            // Trailing whitespace keeps the document valid JSON: only the
            // size is wrong.
            let pad = bytes.saturating_sub(body.len());
            body.push_str(&" ".repeat(pad));
            Reply::Unframed(body)
        }
        value_fault => routes::answer(
            &mut routes::Ctx::new(&mut state, base, value_fault),
            route,
            request,
        ),
    }
}

async fn read_request(mut stream: TcpStream) -> Option<(TcpStream, Request)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace('+', " ")))
        .collect();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((
        stream,
        Request {
            path: path.to_string(),
            query,
            headers,
        },
    ))
}

async fn write_reply(mut stream: TcpStream, reply: Reply) {
    let head =
        |status: u16, content_type: &str, length: Option<usize>, extra: &[(String, String)]| {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n",
                reason(status)
            );
            if let Some(length) = length {
                head.push_str(&format!("Content-Length: {length}\r\n"));
            }
            for (name, value) in extra {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            head
        };
    // Write errors mean the client gave up (timeouts, size limits): expected.
    let _ = match reply {
        Reply::Full {
            status,
            content_type,
            headers,
            body,
        } => {
            let bytes = head(status, content_type, Some(body.len()), &headers) + &body;
            stream.write_all(bytes.as_bytes()).await
        }
        Reply::Truncated(body) => {
            let half = &body.as_bytes()[..body.len() / 2];
            let head = head(200, "application/json", Some(body.len()), &[]);
            match stream.write_all(head.as_bytes()).await {
                Ok(()) => stream.write_all(half).await,
                Err(e) => Err(e),
            }
        }
        Reply::Unframed(body) => {
            let bytes = head(200, "application/json", None, &[]) + &body;
            stream.write_all(bytes.as_bytes()).await
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    };
    let _ = stream.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
