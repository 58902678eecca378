//! The CarbonScore custom resource: one per grid zone, written by the leader,
//! read by every agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::budget::TaintPolicy;
use crate::carbon::{ForecastPoint, GridZone, Reading, Snapshot, SourceKind};
use crate::decision::{ZoneRanking, ZoneScore};

/// Forecast points kept in the status: 48 h at hourly resolution is plenty
/// for deferral, and keeps the object small.
pub const MAX_FORECAST_POINTS: usize = 48;

// Each printer column repeats `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "carbon-kube.io",
    version = "v1alpha1",
    kind = "CarbonScore",
    plural = "carbonscores",
    singular = "carbonscore",
    shortname = "cscore",
    status = "CarbonScoreStatus",
    doc = "Carbon intensity of one electricity grid zone, written by the carbon-kube leader.",
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.zone"),
    printcolumn(
        name = "Intensity",
        type_ = "number",
        json_path = ".status.intensityGramsPerKwh",
        description = "gCO2eq/kWh"
    ),
    printcolumn(
        name = "Forecast-Min",
        type_ = "number",
        json_path = ".status.forecastMinGramsPerKwh",
        description = "lowest forecast gCO2eq/kWh"
    ),
    printcolumn(
        name = "Threshold",
        type_ = "number",
        json_path = ".status.thresholdGramsPerKwh"
    ),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.ranking.verdict",
        description = "the leader's word under the relative policy"
    ),
    printcolumn(
        name = "Rank",
        type_ = "integer",
        json_path = ".status.ranking.rank",
        description = "1 = dirtiest",
        priority = 1
    ),
    printcolumn(
        name = "Estimated",
        type_ = "boolean",
        json_path = ".status.kind.is_estimated()",
        priority = 1
    ),
    printcolumn(
        name = "Taint-Allowed",
        type_ = "boolean",
        json_path = ".status.taintAllowed"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes",
        priority = 1
    ),
    printcolumn(
        name = "Observed",
        type_ = "date",
        json_path = ".status.observedAt",
        description = "age of the data"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CarbonScoreSpec {
    /// Grid zone id (Electricity Maps naming), e.g. `DE` or `US-CAL-CISO`.
    pub zone: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CarbonScoreStatus {
    /// Current intensity in gCO2eq/kWh.
    pub intensity_grams_per_kwh: f64,
    /// Provider that answered, e.g. `electricity-maps`.
    pub source: String,
    /// True when the provider modelled rather than measured the value.
    pub estimated: bool,
    /// What the value rests on; the agents never act on `Static`.
    #[serde(default)]
    pub kind: SourceKind,
    /// When the grid was in this state.
    pub observed_at: Option<Time>,
    /// When the leader fetched it.
    pub fetched_at: Option<Time>,
    #[serde(default)]
    pub forecast: Vec<ForecastEntry>,
    pub forecast_min_grams_per_kwh: Option<f64>,
    pub forecast_min_at: Option<Time>,
    /// Threshold in force for this zone (tuned by the leader); under the
    /// relative policy the floor below which no zone is tainted (0: none).
    pub threshold_grams_per_kwh: f64,
    /// Whether the cluster-wide taint budget lets this zone's nodes be
    /// tainted; under the relative policy, whether the leader's verdict is `Taint`.
    pub taint_allowed: bool,
    /// The policy the leader decided by; absent from leaders before it existed (absolute).
    #[serde(default)]
    pub policy: Option<TaintPolicy>,
    /// Where the leader ranked this zone (relative policy only).
    #[serde(default)]
    pub ranking: Option<ZoneRanking>,
    /// The leader's verdict in words (relative policy only).
    #[serde(default)]
    pub message: Option<String>,
    /// Nodes in this zone at the last poll.
    pub nodes: u32,
    /// The grant covers the nodes created before this time (the API server's
    /// clock): when the leader listed the nodes, or, in a poll that revokes
    /// another zone's grant, what the previous poll covered. A node created
    /// later waits for a poll that covers it before it follows a grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_at: Option<Time>,
    /// The last fetch error, when the data shown is older than the last poll.
    pub last_error: Option<String>,
    /// The threshold tuner's learned state for this zone (JSON), so that a new
    /// leader continues learning; absent while the tuner is off.
    pub tuner_state: Option<String>,
}

impl From<&CarbonScoreStatus> for Snapshot {
    fn from(status: &CarbonScoreStatus) -> Self {
        Self {
            grams_per_kwh: status.intensity_grams_per_kwh,
            source: status.source.clone(),
            observed_at: status.observed_at.as_ref().map(|t| t.0),
            forecast: status
                .forecast
                .iter()
                .map(|p| ForecastPoint {
                    at: p.at.0,
                    grams_per_kwh: p.grams_per_kwh,
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForecastEntry {
    pub at: Time,
    pub grams_per_kwh: f64,
}

/// Hundredths of a gram are far below any provider's precision and keep
/// `kubectl get carbonscores` readable.
fn round_centi(grams_per_kwh: f64) -> f64 {
    (grams_per_kwh * 100.0).round() / 100.0
}

/// The CRD as YAML, what `carbon-kube crd` prints and the chart installs:
/// generated from the types above by a test (which fails when they drift
/// apart), so that the agent does not carry the schema generator.
pub const CRD_YAML: &str =
    include_str!("../deploy/helm/carbon-kube/files/carbonscores.carbon-kube.io.yaml");

/// Asserts that the chart's `file` (embedded as `embedded`) is the CRD
/// `crd` generates; with CARBON_KUBE_UPDATE_CRD set, writes it first.
#[cfg(test)]
pub(crate) fn assert_checked_in(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    file: &str,
    embedded: &str,
) {
    let generated = yaml_serde::to_string(crd).unwrap();
    let path = format!(
        "{}/deploy/helm/carbon-kube/files/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("CARBON_KUBE_UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    assert!(
        generated == embedded,
        "{path} differs from the CRD the types generate: run `CARBON_KUBE_UPDATE_CRD=1 cargo test --lib crd` (then rebuild) and `bash deploy/render.sh`"
    );
}

impl CarbonScoreStatus {
    /// Status for a fresh reading.
    pub fn from_reading(
        reading: &Reading,
        fetched_at: jiff::Timestamp,
        threshold_grams_per_kwh: f64,
        taint_allowed: bool,
        nodes: u32,
    ) -> Self {
        let forecast: Vec<ForecastEntry> = reading
            .forecast
            .iter()
            .filter(|p| p.at >= reading.observed_at)
            .take(MAX_FORECAST_POINTS)
            .map(|p| ForecastEntry {
                at: Time(p.at),
                grams_per_kwh: round_centi(p.grams_per_kwh),
            })
            .collect();
        let min = forecast
            .iter()
            .min_by(|a, b| a.grams_per_kwh.total_cmp(&b.grams_per_kwh));
        Self {
            intensity_grams_per_kwh: round_centi(reading.grams_per_kwh),
            source: reading.source.clone(),
            estimated: reading.kind.is_estimated(),
            kind: reading.kind,
            observed_at: Some(Time(reading.observed_at)),
            fetched_at: Some(Time(fetched_at)),
            forecast_min_grams_per_kwh: min.map(|p| p.grams_per_kwh),
            forecast_min_at: min.map(|p| p.at.clone()),
            forecast,
            threshold_grams_per_kwh,
            taint_allowed,
            policy: None,
            ranking: None,
            message: None,
            nodes,
            counted_at: None,
            last_error: None,
            tuner_state: None,
        }
    }
}

impl CarbonScore {
    pub fn for_zone(zone: &GridZone) -> Self {
        Self::new(
            &zone.object_name(),
            CarbonScoreSpec {
                zone: zone.to_string(),
            },
        )
    }

    /// What the agents decide on; `None` until the leader has written data.
    pub fn zone_score(&self) -> Option<ZoneScore> {
        let status = self.status.as_ref()?;
        Some(ZoneScore {
            grams_per_kwh: status.intensity_grams_per_kwh,
            threshold_grams_per_kwh: status.threshold_grams_per_kwh,
            observed_at: status.observed_at.as_ref()?.0,
            taint_allowed: status.taint_allowed,
            ranking: match status.policy {
                Some(TaintPolicy::Relative) => status.ranking.clone(),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use kube::core::CustomResourceExt;

    use super::*;
    use crate::carbon::ForecastPoint;

    #[test]
    fn crd_is_cluster_scoped_with_printer_columns() {
        let crd = CarbonScore::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "carbon-kube.io");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(columns.contains(&"Intensity") && columns.contains(&"Observed"));
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        assert!(CRD_YAML.contains("intensityGramsPerKwh"));
    }

    #[test]
    fn the_checked_in_crd_is_generated_from_the_types() {
        assert_checked_in(
            &CarbonScore::crd(),
            "carbonscores.carbon-kube.io.yaml",
            CRD_YAML,
        );
    }

    #[test]
    fn status_keeps_future_forecast_and_its_minimum() {
        let at = |s: &str| -> jiff::Timestamp { s.parse().unwrap() };
        let reading = Reading {
            zone: GridZone::parse("DE").unwrap(),
            grams_per_kwh: 420.0,
            source: "electricity-maps".into(),
            observed_at: at("2024-01-01T10:00:00Z"),
            kind: SourceKind::Measured,
            forecast: vec![
                ForecastPoint {
                    at: at("2024-01-01T09:00:00Z"),
                    grams_per_kwh: 10.0,
                },
                ForecastPoint {
                    at: at("2024-01-01T11:00:00Z"),
                    grams_per_kwh: 380.0,
                },
                ForecastPoint {
                    at: at("2024-01-01T12:00:00Z"),
                    grams_per_kwh: 310.0,
                },
            ],
        };
        let status =
            CarbonScoreStatus::from_reading(&reading, at("2024-01-01T10:02:00Z"), 300.0, true, 3);
        assert_eq!(status.forecast.len(), 2, "the past point is dropped");
        assert_eq!(status.forecast_min_grams_per_kwh, Some(310.0));
        assert_eq!(
            status.forecast_min_at,
            Some(Time(at("2024-01-01T12:00:00Z")))
        );

        let mut score = CarbonScore::for_zone(&reading.zone);
        assert!(score.zone_score().is_none());
        score.status = Some(status);
        let view = score.zone_score().unwrap();
        assert_eq!((view.grams_per_kwh, view.taint_allowed), (420.0, true));
        assert_eq!(score.metadata.name.as_deref(), Some("de"));
    }
}
