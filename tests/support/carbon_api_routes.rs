//! The four APIs' routes for the test server in `carbon_api.rs`: each renders
//! the documented response shape from the server's state.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use carbon_kube::carbon::GridZone;
use carbon_kube::providers::watttime::{G_PER_KWH_PER_LB_PER_MWH, builtin_region};
use jiff::{SignedDuration, Timestamp};

use super::{
    EM, EM_FORECAST, EM_LATEST, EM_TOKEN, Fault, NOAA, NOAA_GRID, NOAA_POINTS, Reply, Request,
    State, UK, UK_NATIONAL, UK_REGIONAL, WT, WT_FORECAST, WT_LOGIN, WT_PASSWORD, WT_USERNAME,
};

pub(super) struct Ctx<'a> {
    state: &'a mut State,
    base: &'a str,
    /// NaN, Negative or Null: how to corrupt the current value.
    fault: Option<Fault>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(state: &'a mut State, base: &'a str, fault: Option<Fault>) -> Self {
        Ctx { state, base, fault }
    }

    /// The current value as JSON, corrupted as the fault says.
    fn value(&self, v: f64) -> String {
        match self.fault {
            Some(Fault::NaN) => "NaN".into(),
            Some(Fault::Negative) => num(-v.abs().max(1.0)),
            Some(Fault::Null) => "null".into(),
            _ => num(v),
        }
    }
}

/// (provider, route) for a request path.
pub(super) fn classify(path: &str) -> Option<(&'static str, &'static str)> {
    let found = match path {
        "/electricitymaps/v3/carbon-intensity/latest" => (EM, EM_LATEST),
        "/electricitymaps/v3/carbon-intensity/forecast" => (EM, EM_FORECAST),
        "/watttime/login" => (WT, WT_LOGIN),
        "/watttime/v3/forecast" => (WT, WT_FORECAST),
        p if p == "/uk/intensity" || p.starts_with("/uk/intensity/") => (UK, UK_NATIONAL),
        p if p.starts_with("/uk/regional/") => (UK, UK_REGIONAL),
        p if p.starts_with("/noaa/points/") => (NOAA, NOAA_POINTS),
        p if p.starts_with("/noaa/gridpoints/") => (NOAA, NOAA_GRID),
        _ => return None,
    };
    Some(found)
}

pub(super) fn answer(ctx: &mut Ctx<'_>, route: &str, request: &Request) -> Reply {
    match route {
        EM_LATEST => em_latest(ctx, request),
        EM_FORECAST => em_forecast(ctx, request),
        WT_LOGIN => wt_login(ctx, request),
        WT_FORECAST => wt_forecast(ctx, request),
        UK_NATIONAL => uk_national(ctx, request),
        UK_REGIONAL => uk_regional(ctx, request),
        NOAA_POINTS => noaa_points(ctx, request),
        NOAA_GRID => noaa_grid(ctx, request),
        _ => Reply::json(404, r#"{"error":"no such route"}"#.into()),
    }
}

fn num(v: f64) -> String {
    format!("{v}")
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn floor(at: Timestamp, step_seconds: i64) -> Timestamp {
    Timestamp::from_second(at.as_second().div_euclid(step_seconds) * step_seconds).unwrap_or(at)
}

fn plus(at: Timestamp, seconds: i64) -> Timestamp {
    at.checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(at)
}

// ---- Electricity Maps v3 ----

fn em_authorized(request: &Request) -> Option<Reply> {
    (request.headers.get("auth-token").map(String::as_str) != Some(EM_TOKEN)).then(|| {
        Reply::json(
            401,
            r#"{"status":"error","message":"Invalid authentication token"}"#.into(),
        )
    })
}

fn em_zone(ctx: &Ctx<'_>, request: &Request) -> Result<(String, f64), Reply> {
    let zone = request
        .query
        .get("zone")
        .cloned()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match ctx.state.intensity.get(&zone) {
        Some(g) => Ok((zone, *g)),
        None => Err(Reply::json(
            404,
            format!(
                r#"{{"status":"error","message":"Zone {} does not exist."}}"#,
                quoted(&zone)
            ),
        )),
    }
}

fn em_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()
}

fn em_latest(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    if let Some(denied) = em_authorized(request) {
        return denied;
    }
    let (zone, g) = match em_zone(ctx, request) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let now = Timestamp::now();
    Reply::json(
        200,
        format!(
            r#"{{"zone":{},"carbonIntensity":{},"datetime":"{}","updatedAt":"{}","createdAt":"{}","emissionFactorType":"lifecycle","isEstimated":false,"estimationMethod":null}}"#,
            quoted(&zone),
            ctx.value(g),
            em_time(floor(now, ctx.state.em_period_secs)),
            em_time(now),
            em_time(now),
        ),
    )
}

fn em_forecast(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    if let Some(denied) = em_authorized(request) {
        return denied;
    }
    let (zone, g) = match em_zone(ctx, request) {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    let hour = floor(Timestamp::now(), 3600);
    let series: Vec<(Timestamp, f64)> = match ctx.state.forecast.get(&zone) {
        Some(points) => points.clone(),
        None => (1..=24).map(|k| (plus(hour, k * 3600), g)).collect(),
    };
    let points: Vec<String> = series
        .iter()
        .map(|(at, v)| {
            format!(
                r#"{{"datetime":"{}","carbonIntensity":{}}}"#,
                em_time(*at),
                ctx.value(*v)
            )
        })
        .collect();
    Reply::json(
        200,
        format!(
            r#"{{"zone":{},"forecast":[{}],"updatedAt":"{}"}}"#,
            quoted(&zone),
            points.join(","),
            em_time(hour)
        ),
    )
}

// ---- WattTime v3 ----

fn wt_login(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    // Decoded as a server would, not encoded the way the client does.
    let credentials = request
        .headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded).ok());
    if credentials.as_deref() != Some(format!("{WT_USERNAME}:{WT_PASSWORD}").as_bytes()) {
        return Reply::json(401, r#"{"error":"invalid credentials"}"#.into());
    }
    ctx.state.issued += 1;
    let token = format!("wt-issued-token-{}-c0ffee", ctx.state.issued);
    ctx.state.tokens.push(token.clone());
    Reply::json(200, format!(r#"{{"token":{}}}"#, quoted(&token)))
}

fn wt_zone(state: &State, region: &str) -> Option<String> {
    if let Some(zone) = state.watttime_regions.get(region) {
        return Some(zone.clone());
    }
    state
        .intensity
        .keys()
        .find(|zone| GridZone::parse(zone).ok().and_then(|z| builtin_region(&z)) == Some(region))
        .cloned()
}

fn wt_forecast(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    let bearer = request
        .headers
        .get("authorization")
        .and_then(|h| h.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| ctx.state.tokens.iter().any(|t| t == token)) {
        return Reply::json(401, r#"{"error":"token expired or invalid"}"#.into());
    }
    if request.query.get("signal_type").map(String::as_str) != Some("co2_moer") {
        return Reply::json(400, r#"{"error":"unsupported signal_type"}"#.into());
    }
    let region = request.query.get("region").cloned().unwrap_or_default();
    let Some(g) =
        wt_zone(ctx.state, &region).and_then(|zone| ctx.state.intensity.get(&zone).copied())
    else {
        return Reply::json(
            400,
            format!(r#"{{"error":"unknown region {}"}}"#, quoted(&region)),
        );
    };
    let lbs = g / G_PER_KWH_PER_LB_PER_MWH;
    let hours: i64 = request
        .query
        .get("horizon_hours")
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    let start = floor(Timestamp::now(), 300);
    let wt_time = |at: Timestamp| at.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string();
    let points: Vec<String> = (0..hours * 12)
        .map(|k| {
            let value = if k == 0 { ctx.value(lbs) } else { num(lbs) };
            format!(
                r#"{{"point_time":"{}","value":{value}}}"#,
                wt_time(plus(start, k * 300))
            )
        })
        .collect();
    Reply::json(
        200,
        format!(
            r#"{{"data":[{}],"meta":{{"data_point_period_seconds":300,"region":{},"warnings":[],"signal_type":"co2_moer","model":{{"date":"2023-03-01"}},"units":"lbs_co2_per_mwh","generated_at_period_seconds":300,"generated_at":"{}"}}}}"#,
            points.join(","),
            quoted(&region),
            wt_time(start)
        ),
    )
}

// ---- UK Carbon Intensity ----

fn uk_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%MZ").to_string()
}

/// `count` half-hour slots from the one containing `from`. Past and current
/// slots have an `actual` only when `national`.
fn uk_slots(ctx: &Ctx<'_>, g: f64, from: Timestamp, count: i64, national: bool) -> String {
    let now = Timestamp::now();
    let first = floor(from, 1800);
    let slots: Vec<String> = (0..count)
        .map(|k| {
            let start = plus(first, k * 1800);
            let end = plus(start, 1800);
            let current = start <= now && now < end;
            let value = if current { ctx.value(g) } else { num(g) };
            let intensity = if national {
                let actual = if start <= now {
                    value.clone()
                } else {
                    "null".into()
                };
                format!(r#"{{"forecast":{value},"actual":{actual},"index":"moderate"}}"#)
            } else {
                format!(r#"{{"forecast":{value},"index":"moderate"}}"#)
            };
            let mix = if national {
                ""
            } else {
                r#","generationmix":[{"fuel":"gas","perc":41.2},{"fuel":"wind","perc":30.1}]"#
            };
            format!(
                r#"{{"from":"{}","to":"{}","intensity":{intensity}{mix}}}"#,
                uk_time(start),
                uk_time(end)
            )
        })
        .collect();
    slots.join(",")
}

/// `/intensity/{from}/fw24h|fw48h` → (from, slots); anything else is "now".
fn uk_window(path_rest: &str) -> (Timestamp, i64) {
    let parts: Vec<&str> = path_rest.split('/').filter(|p| !p.is_empty()).collect();
    let from = parts.first().and_then(|p| p.parse::<Timestamp>().ok());
    match (from, parts.get(1).copied()) {
        (Some(from), Some("fw24h")) => (from, 48),
        (Some(from), Some("fw48h")) => (from, 96),
        (Some(from), _) => (from, 1),
        (None, _) => (Timestamp::now(), 1),
    }
}

fn uk_national(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    let Some(g) = ctx.state.intensity.get("GB").copied() else {
        return Reply::json(
            400,
            r#"{"error":{"code":"400 Bad Request","message":"no data for GB"}}"#.into(),
        );
    };
    let rest = request.path.trim_start_matches("/uk/intensity");
    let (from, count) = uk_window(rest);
    Reply::json(
        200,
        format!(r#"{{"data":[{}]}}"#, uk_slots(ctx, g, from, count, true)),
    )
}

fn uk_regional(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    let id: Option<u32> = request
        .path
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok());
    let zone = id.and_then(|id| ctx.state.uk_regions.get(&id).cloned());
    let Some((id, g)) = id.zip(zone.and_then(|z| ctx.state.intensity.get(&z).copied())) else {
        return Reply::json(
            400,
            r#"{"error":{"code":"400 Bad Request","message":"unknown region"}}"#.into(),
        );
    };
    let region = |slots: String| {
        format!(
            r#"{{"regionid":{id},"dnoregion":"Test DNO","shortname":"Test Region {id}","data":[{slots}]}}"#
        )
    };
    // The documented quirk: the windowed endpoint answers `data` as an
    // object, the plain one as an array.
    match request.path.strip_prefix("/uk/regional/intensity/") {
        Some(rest) => {
            let (from, count) = uk_window(rest);
            Reply::json(
                200,
                format!(
                    r#"{{"data":{}}}"#,
                    region(uk_slots(ctx, g, from, count, false))
                ),
            )
        }
        None => {
            let slots = uk_slots(ctx, g, Timestamp::now(), 1, false);
            Reply::json(200, format!(r#"{{"data":[{}]}}"#, region(slots)))
        }
    }
}

// ---- NOAA api.weather.gov ----

fn noaa_user_agent(request: &Request) -> Option<Reply> {
    // api.weather.gov refuses requests without a User-Agent.
    (request
        .headers
        .get("user-agent")
        .is_none_or(|ua| ua.is_empty()))
    .then(|| {
        Reply::json(
            403,
            r#"{"title":"Forbidden","detail":"a User-Agent header is required"}"#.into(),
        )
    })
}

fn noaa_points(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    if let Some(denied) = noaa_user_agent(request) {
        return denied;
    }
    let point = request.path.trim_start_matches("/noaa/points/");
    let grid = format!("{}/noaa/gridpoints/TST/{point}", ctx.base);
    Reply::json(
        200,
        format!(
            r#"{{"@context":[],"id":"{base}/noaa/points/{point}","type":"Feature","properties":{{"gridId":"TST","gridX":10,"gridY":20,"forecast":"{grid}/forecast","forecastGridData":"{grid}"}}}}"#,
            base = ctx.base
        ),
    )
}

fn noaa_grid(ctx: &mut Ctx<'_>, request: &Request) -> Reply {
    if let Some(denied) = noaa_user_agent(request) {
        return denied;
    }
    let weather = ctx.state.weather;
    let start = plus(floor(Timestamp::now(), 3600), -2 * 3600);
    let valid = |at: Timestamp, hours: i64| {
        format!("{}/PT{hours}H", at.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    };
    // One three-hour interval first, as the real grids mix durations.
    let series = |value: &dyn Fn() -> String| {
        let mut values = vec![format!(
            r#"{{"validTime":"{}","value":{}}}"#,
            valid(start, 3),
            value()
        )];
        values.extend((3..48).map(|h| {
            format!(
                r#"{{"validTime":"{}","value":{}}}"#,
                valid(plus(start, h * 3600), 1),
                value()
            )
        }));
        values.join(",")
    };
    let sky = series(&|| ctx.value(weather.sky_cover_percent));
    let wind = series(&|| num(weather.wind_km_h));
    Reply::json(
        200,
        format!(
            r#"{{"@context":[],"type":"Feature","properties":{{"updateTime":"{}","skyCover":{{"uom":"wmoUnit:percent","values":[{sky}]}},"windSpeed":{{"uom":"wmoUnit:km_h-1","values":[{wind}]}}}}}}"#,
            start.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        ),
    )
}
