//! The provider chain's settings: its order, endpoints, credentials and limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::carbon::GridZone;
use crate::cli::ProviderArgs;
use crate::error::ConfigError;
use crate::providers::{ProviderKind, ProvidersConfig, Secret};

/// Reads a secret from a file (preferred) or a value from the environment.
fn secret(
    field: &str,
    file: Option<&Path>,
    value: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    match (file, value) {
        (Some(path), _) => Secret::from_file(path)
            .map(Some)
            .map_err(|e| ConfigError::new(field, e.to_string())),
        (None, Some(v)) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim().to_string()))),
        _ => Ok(None),
    }
}

fn zone_map<T: std::str::FromStr>(
    field: &str,
    entries: &[String],
) -> Result<BTreeMap<GridZone, T>, ConfigError> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let (zone, value) = entry.split_once('=').ok_or_else(|| {
                ConfigError::new(field, format!("{entry:?} must look like ZONE=VALUE"))
            })?;
            let zone = GridZone::parse(zone).map_err(|e| ConfigError::new(field, e))?;
            let value = value.trim().parse().map_err(|_| {
                ConfigError::new(
                    field,
                    format!("{entry:?}: cannot parse the value {value:?}"),
                )
            })?;
            Ok((zone, value))
        })
        .collect()
}

pub fn providers_config(args: &ProviderArgs) -> Result<ProvidersConfig, ConfigError> {
    let order = args
        .providers
        .iter()
        .map(|name| name.trim().parse::<ProviderKind>().map_err(|_| {
            ConfigError::new("providers", format!("unknown provider {name:?} (known: electricity-maps, watttime, uk-carbon-intensity, noaa, static)"))
        }))
        .collect::<Result<Vec<_>, _>>()?;
    if order.is_empty() {
        return Err(ConfigError::new("providers", "list at least one provider"));
    }
    for (field, url) in [
        ("electricity-maps-url", &args.electricity_maps_url),
        ("watttime-url", &args.watttime_url),
        ("uk-carbon-intensity-url", &args.uk_carbon_intensity_url),
        ("noaa-url", &args.noaa_url),
    ] {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::new(
                field,
                format!("{url:?} must be an http(s) URL"),
            ));
        }
    }
    if args.max_response_bytes < 1024 {
        return Err(ConfigError::new(
            "max-response-bytes",
            "must be at least 1024",
        ));
    }
    if args.breaker_failures == 0 {
        return Err(ConfigError::new("breaker-failures", "must be at least 1"));
    }
    Ok(ProvidersConfig {
        order,
        electricity_maps_url: args.electricity_maps_url.trim_end_matches('/').to_string(),
        electricity_maps_token: secret(
            "electricity-maps-token-file",
            args.electricity_maps_token_file.as_deref(),
            args.electricity_maps_token.as_deref(),
        )?,
        watttime_url: args.watttime_url.trim_end_matches('/').to_string(),
        watttime_username: args.watttime_username.clone().filter(|u| !u.is_empty()),
        watttime_password: secret(
            "watttime-password-file",
            args.watttime_password_file.as_deref(),
            args.watttime_password.as_deref(),
        )?,
        watttime_regions: zone_map("watttime-regions", &args.watttime_regions)?,
        uk_url: args
            .uk_carbon_intensity_url
            .trim_end_matches('/')
            .to_string(),
        uk_regions: zone_map("uk-regions", &args.uk_regions)?,
        noaa_url: args.noaa_url.trim_end_matches('/').to_string(),
        timeout: args.provider_timeout,
        max_response_bytes: args.max_response_bytes,
        breaker_failures: args.breaker_failures,
        breaker_cooldown: args.breaker_cooldown,
        cache_ttl: Duration::from_secs(60),
    })
}
