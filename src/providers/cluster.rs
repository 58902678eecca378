//! Another cluster's CarbonScores as a provider, so that a fleet polls each
//! zone's carbon API once: a worker cluster's leader reads the zone from the
//! cluster that already polls it (read-only access through a kubeconfig) and
//! falls through to its own providers when that data is missing or stale.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use kube::Api;

use super::{Provider, ProviderError};
use crate::carbon::{ForecastPoint, GridZone, Reading, check_intensity};
use crate::crd::{CarbonScore, CarbonScoreStatus};

/// Provider name in metrics and attempts. Readings keep the remote source
/// (the provider that answered over there), as they keep its kind.
pub const NAME: &str = "cluster";

pub struct SharedScores {
    scores: Api<CarbonScore>,
    /// The agent's own max-age: older remote data would be ignored by every
    /// consumer anyway, so the chain is better off asking the next provider.
    max_age: Duration,
}

impl SharedScores {
    pub fn new(scores: Api<CarbonScore>, max_age: Duration) -> Self {
        Self { scores, max_age }
    }
}

#[async_trait]
impl Provider for SharedScores {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let score = self
            .scores
            .get_opt(&zone.object_name())
            .await
            .map_err(from_kube)?
            // The source cluster has no nodes in this zone: not a fault of the source.
            .ok_or_else(|| ProviderError::UnsupportedZone(zone.clone()))?;
        let status = score.status.as_ref().ok_or_else(|| {
            ProviderError::Invalid(format!("the source's CarbonScore {zone} has no data yet"))
        })?;
        reading(zone, status, self.max_age, Timestamp::now())
    }
}

/// The remote status as a reading, if it is no older than `max_age` at `now`.
fn reading(
    zone: &GridZone,
    status: &CarbonScoreStatus,
    max_age: Duration,
    now: Timestamp,
) -> Result<Reading, ProviderError> {
    let observed_at = status
        .observed_at
        .as_ref()
        .ok_or_else(|| ProviderError::Invalid(format!("the source's {zone} has no observedAt")))?
        .0;
    let age = now.duration_since(observed_at);
    let max = jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX);
    if age > max {
        return Err(ProviderError::Invalid(format!(
            "the source's {zone} was observed at {observed_at}, {}s ago, older than max-age {}s",
            age.as_secs(),
            max_age.as_secs()
        )));
    }
    let check = |grams: f64| check_intensity(grams).map_err(ProviderError::Invalid);
    let forecast = status
        .forecast
        .iter()
        .map(|p| {
            Ok(ForecastPoint {
                at: p.at.0,
                grams_per_kwh: check(p.grams_per_kwh)?,
            })
        })
        .collect::<Result<_, ProviderError>>()?;
    Ok(Reading {
        zone: zone.clone(),
        grams_per_kwh: check(status.intensity_grams_per_kwh)?,
        source: status.source.clone(),
        observed_at,
        kind: status.kind,
        forecast,
    })
}

fn from_kube(error: kube::Error) -> ProviderError {
    match error {
        kube::Error::Api(status) if matches!(status.code, 401 | 403) => {
            ProviderError::Unauthorized(status.code)
        }
        kube::Error::Api(status) => ProviderError::Status(status.code),
        kube::Error::SerdeError(e) => ProviderError::Malformed(e.to_string()),
        other => ProviderError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
