//! The last-resort provider: a yearly average per zone, so that a zone always
//! has a number even when every API is down or unconfigured.
//!
//! Figures are Cloud Carbon Footprint's grid emission factors (Apache-2.0,
//! © Thoughtworks), mapped onto zones through the cloud-region table and
//! averaged per zone, plus a few zones without a cloud region whose yearly
//! mean we computed from the traces in the shared data. Origins are in
//! `src/data/README.md`. These are years-old averages: readings say
//! `estimated` so that nobody mistakes them for the grid's state.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use jiff::Timestamp;

use super::{Provider, ProviderError};
use crate::carbon::{GridZone, Reading, SourceKind, check_intensity};
use crate::zones::{self, Cloud};

use crate::zones::{
    CCF_GRID_FACTORS_CSV as CCF_FACTORS_CSV, STATIC_EXTRA_ZONES_CSV as EXTRA_ZONES_CSV,
};

/// Yearly average intensity of `zone` in g/kWh, if the table has one.
pub fn yearly_average(zone: &GridZone) -> Option<f64> {
    TABLE.get(zone).copied()
}

/// Serves [`yearly_average`] as a [`Provider`].
/// Source name of static readings. A yearly average says nothing about this
/// hour, so the leader never lets a zone be tainted on it.
pub const NAME: &str = "static";

#[derive(Clone, Copy, Debug, Default)]
pub struct StaticTable;

impl StaticTable {
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Provider for StaticTable {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, zone: &GridZone) -> Result<Reading, ProviderError> {
        let grams_per_kwh =
            yearly_average(zone).ok_or_else(|| ProviderError::UnsupportedZone(zone.clone()))?;
        let grams_per_kwh = check_intensity(grams_per_kwh).map_err(ProviderError::Invalid)?;
        Ok(Reading {
            zone: zone.clone(),
            grams_per_kwh,
            source: self.name().to_string(),
            // A yearly average holds for any hour, so it is as fresh as the asking.
            observed_at: Timestamp::now(),
            kind: SourceKind::Static,
            forecast: Vec::new(),
        })
    }
}

// Both CSVs are compiled in and `tests::embedded_tables_parse` proves they
// parse, so a failure here is a build defect, not a runtime condition.
static TABLE: LazyLock<HashMap<GridZone, f64>> = LazyLock::new(|| {
    build_table(CCF_FACTORS_CSV, EXTRA_ZONES_CSV)
        .expect("src/data tables are checked by unit tests")
});

fn build_table(ccf_csv: &str, extra_csv: &str) -> Result<HashMap<GridZone, f64>, String> {
    let mut sums: HashMap<GridZone, (f64, u32)> = HashMap::new();
    for (zone, grams) in ccf_zone_factors(ccf_csv)? {
        let entry = sums.entry(zone).or_insert((0.0, 0));
        entry.0 += grams;
        entry.1 += 1;
    }
    let mut table: HashMap<GridZone, f64> = sums
        .into_iter()
        .map(|(zone, (sum, n))| (zone, sum / f64::from(n)))
        .collect();

    for (index, line) in extra_csv.lines().enumerate().skip(1) {
        let line_no = index + 1;
        let [zone, grams, source] = line.splitn(3, ',').collect::<Vec<_>>()[..] else {
            return Err(format!(
                "extra zones line {line_no}: expected zone,g_co2e_per_kwh,source"
            ));
        };
        let zone = GridZone::parse(zone).map_err(|e| format!("extra zones line {line_no}: {e}"))?;
        let grams = parse_grams(grams).map_err(|e| format!("extra zones line {line_no}: {e}"))?;
        if source.trim().is_empty() {
            return Err(format!(
                "extra zones line {line_no}: the source is required"
            ));
        }
        // Cloud zones keep CCF's figure so that the table has one basis where it can.
        if table.insert(zone.clone(), grams).is_some() {
            return Err(format!(
                "extra zones line {line_no}: {zone} already has a CCF figure"
            ));
        }
    }
    Ok(table)
}

/// `(zone, g/kWh)` for every located CCF region, location-based (`grid`) variant only.
fn ccf_zone_factors(ccf_csv: &str) -> Result<Vec<(GridZone, f64)>, String> {
    let mut out = Vec::new();
    for (index, line) in ccf_csv.lines().enumerate().skip(1) {
        let line_no = index + 1;
        let fields: Vec<&str> = line.splitn(6, ',').collect();
        let [provider, region, variant, grams, _, _] = fields[..] else {
            return Err(format!("CCF line {line_no}: expected 6 fields"));
        };
        // Unknown is CCF's own average, and GCP's CFE-adjusted factors net out
        // Google's purchases: neither describes a grid.
        if variant != "grid" || region == "Unknown" {
            continue;
        }
        let cloud = match provider {
            "aws" => Cloud::Aws,
            "gcp" => Cloud::Gcp,
            "azure" => Cloud::Azure,
            other => return Err(format!("CCF line {line_no}: unknown provider {other:?}")),
        };
        // Multi-regions and geographies are not in the located table: CCF sums
        // or blends several grids for them.
        let Some(entry) = zones::lookup_region(region).filter(|e| e.cloud == cloud) else {
            continue;
        };
        let grams = parse_grams(grams).map_err(|e| format!("CCF line {line_no}: {e}"))?;
        out.push((entry.zone.clone(), grams));
    }
    Ok(out)
}

fn parse_grams(raw: &str) -> Result<f64, String> {
    let grams: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number"))?;
    check_intensity(grams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(id: &str) -> GridZone {
        GridZone::parse(id).unwrap()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
    }

    #[test]
    fn embedded_tables_parse() {
        let table = build_table(CCF_FACTORS_CSV, EXTRA_ZONES_CSV).unwrap();
        assert!(table.len() >= 40, "{} zones", table.len());
    }

    #[test]
    fn zone_figure_is_the_mean_of_its_regions() {
        // eu-west-3 51.1, europe-west9 59, francecentral and francesouth 51.28.
        assert_close(
            yearly_average(&zone("FR")).unwrap(),
            (51.1 + 59.0 + 51.28 + 51.28) / 4.0,
        );
        // eu-central-1 311, europe-west3 269, germanynorth and germanywestcentral 338.66;
        // the `germany` geography is not a place and is left out.
        assert_close(
            yearly_average(&zone("DE")).unwrap(),
            (311.0 + 269.0 + 338.66 + 338.66) / 4.0,
        );
        // Only northeurope and eu-west-1, both 278.6.
        assert_close(yearly_average(&zone("IE")).unwrap(), 278.6);
    }

    #[test]
    fn gcp_uses_the_grid_factor_not_the_cfe_adjusted_one() {
        // europe-west1: grid 110, CFE-adjusted 19.8; BE has no other region in CCF.
        assert_close(yearly_average(&zone("BE")).unwrap(), 110.0);
    }

    #[test]
    fn every_located_zone_with_a_ccf_region_has_a_figure() {
        for (z, _) in ccf_zone_factors(CCF_FACTORS_CSV).unwrap() {
            let grams = yearly_average(&z).unwrap();
            // The dirtiest real CCF region is 960 g/kWh; CCF's multi-region
            // sums (`us` is 2805) would show here if they leaked in.
            assert!((0.0..=960.0).contains(&grams), "{z}: {grams}");
        }
    }

    #[test]
    fn zones_without_a_cloud_region_come_from_the_extra_table() {
        assert_close(yearly_average(&zone("US-NY-NYIS")).unwrap(), 272.77);
        assert_close(yearly_average(&zone("NO")).unwrap(), 35.22);
    }

    #[test]
    fn extra_table_may_not_shadow_ccf() {
        let err = build_table(CCF_FACTORS_CSV, "zone,g,source\nFR,10,somewhere").unwrap_err();
        assert!(err.contains("FR already has a CCF figure"), "{err}");
        let err = build_table(CCF_FACTORS_CSV, "zone,g,source\nXX,-3,somewhere").unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[tokio::test]
    async fn fetch_returns_an_estimated_reading_now() {
        let before = Timestamp::now();
        let reading = StaticTable::new().fetch(&zone("FR")).await.unwrap();
        assert_eq!(reading.zone, zone("FR"));
        assert_eq!(reading.source, "static");
        assert!(reading.kind.is_estimated());
        assert!(reading.forecast.is_empty());
        assert!(reading.observed_at >= before);
        assert_close(reading.grams_per_kwh, yearly_average(&zone("FR")).unwrap());
    }

    #[tokio::test]
    async fn unknown_zone_is_unsupported() {
        let err = StaticTable::new()
            .fetch(&zone("XX-NOWHERE"))
            .await
            .unwrap_err();
        assert_eq!(err, ProviderError::UnsupportedZone(zone("XX-NOWHERE")));
        assert!(err.is_skip());
        assert_eq!(StaticTable::new().name(), "static");
    }
}
