//! Zone discovery: which grid zone a node draws its power from.
//!
//! Pure: a function of the node's labels and the configured default. The
//! cloud-region table lives in `src/data/cloud_regions.csv` (sources in
//! `src/data/README.md`) so that it can be reviewed and extended without
//! touching code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::LazyLock;

use crate::carbon::GridZone;

/// Set by an operator to pin a node's zone; wins over everything else.
pub const GRID_ZONE_LABEL: &str = "carbon-kube.io/grid-zone";
/// Set by the cloud controller manager on every node of a managed cluster.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

const CLOUD_REGIONS_CSV: &str = include_str!("data/cloud_regions.csv");
/// Cloud Carbon Footprint's yearly grid emission factors (the static provider's table).
pub const CCF_GRID_FACTORS_CSV: &str = include_str!("data/ccf_grid_emission_factors.csv");
/// Yearly averages for zones CCF lacks (the static provider's second table).
pub const STATIC_EXTRA_ZONES_CSV: &str = include_str!("data/static_extra_zones.csv");

/// A public cloud whose region names the table knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "aws" => Some(Self::Aws),
            "gcp" => Some(Self::Gcp),
            "azure" => Some(Self::Azure),
            _ => None,
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cloud region that is a physical place, with the grid zone it sits in.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudRegion {
    pub cloud: Cloud,
    /// Lower-case API name, as in the node's region label.
    pub region: String,
    pub zone: GridZone,
}

/// Where a node's zone came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneSource {
    Label,
    /// Mapped from this cloud region.
    Region(String),
    /// Neither label resolved: the configured default, if there is one.
    Default,
}

impl ZoneSource {
    /// Bounded value for metric labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Label => "label",
            Self::Region(_) => "region",
            Self::Default => "default",
        }
    }
}

/// The outcome of zone discovery for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// `None` only when nothing resolved and no default is configured: the
    /// node then has no zone, so carbon-kube leaves it alone.
    pub zone: Option<GridZone>,
    pub source: ZoneSource,
    /// Something the operator should fix; the agent still runs with `zone`.
    pub warning: Option<String>,
}

/// Resolves a node's zone: its grid-zone label, else its cloud region, else `default`.
///
/// An invalid grid-zone label is reported and then treated as absent, so the
/// region (usually right) is used before the default (often wrong).
pub fn zone_for_node(labels: &BTreeMap<String, String>, default: Option<&GridZone>) -> Resolution {
    let mut warnings = Vec::new();

    if let Some(raw) = labels.get(GRID_ZONE_LABEL) {
        match GridZone::parse(raw) {
            Ok(zone) => {
                return Resolution {
                    zone: Some(zone),
                    source: ZoneSource::Label,
                    warning: None,
                };
            }
            Err(why) => warnings.push(format!(
                "node label {GRID_ZONE_LABEL}={raw:?} is not an Electricity Maps zone id ({why}); \
                 ignoring it"
            )),
        }
    }

    if let Some(raw) = labels.get(REGION_LABEL) {
        if let Some(entry) = lookup_region(raw) {
            return Resolution {
                zone: Some(entry.zone.clone()),
                source: ZoneSource::Region(entry.region.clone()),
                warning: join(warnings),
            };
        }
        warnings.push(format!(
            "node label {REGION_LABEL}={raw:?} is not in carbon-kube's table of AWS, GCP and Azure \
             regions; set {GRID_ZONE_LABEL} on the node to choose its grid zone"
        ));
    }

    let warning = match default {
        Some(zone) => join(warnings).map(|w| format!("{w}; using the default grid zone {zone}")),
        None => {
            if warnings.is_empty() {
                warnings.push(format!(
                    "node has neither {GRID_ZONE_LABEL} nor {REGION_LABEL}"
                ));
            }
            join(warnings).map(|w| {
                format!(
                    "{w}; no default grid zone is configured (--default-zone), so carbon-kube \
                     leaves this node alone"
                )
            })
        }
    };
    Resolution {
        zone: default.cloned(),
        source: ZoneSource::Default,
        warning,
    }
}

fn join(warnings: Vec<String>) -> Option<String> {
    (!warnings.is_empty()).then(|| warnings.join("; "))
}

/// The table entry for a region label value, case-insensitively.
pub fn lookup_region(region: &str) -> Option<&'static CloudRegion> {
    REGIONS.located.get(&region.trim().to_ascii_lowercase())
}

/// The grid zone a cloud region sits in, if the table knows the region.
pub fn zone_for_region(region: &str) -> Option<&'static GridZone> {
    lookup_region(region).map(|entry| &entry.zone)
}

/// Every located region in the table.
pub fn cloud_regions() -> impl Iterator<Item = &'static CloudRegion> {
    REGIONS.located.values()
}

struct RegionTable {
    located: HashMap<String, CloudRegion>,
    /// Names that CCF lists but that no node runs in (multi-regions, geographies).
    #[cfg_attr(not(test), allow(dead_code))]
    not_located: Vec<(Cloud, String)>,
}

// The CSV is compiled in and `tests::embedded_table_parses` proves it parses,
// so a failure here is a build defect, not a runtime condition.
static REGIONS: LazyLock<RegionTable> = LazyLock::new(|| {
    parse_table(CLOUD_REGIONS_CSV).expect("src/data/cloud_regions.csv is checked by unit tests")
});

fn parse_table(text: &str) -> Result<RegionTable, String> {
    let mut located = HashMap::new();
    let mut not_located = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        // The note is last, so it may contain commas.
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        let [provider, region, zone, note] = fields[..] else {
            return Err(format!(
                "line {line_no}: expected provider,region,zone,note"
            ));
        };
        let cloud = Cloud::parse(provider)
            .ok_or_else(|| format!("line {line_no}: unknown provider {provider:?}"))?;
        let region = region.trim().to_ascii_lowercase();
        if region.is_empty() || note.trim().is_empty() {
            return Err(format!("line {line_no}: region and note are required"));
        }
        if zone.trim().is_empty() {
            if !note.starts_with("not a location") {
                return Err(format!(
                    "line {line_no}: a row without zone must say 'not a location'"
                ));
            }
            not_located.push((cloud, region));
            continue;
        }
        let zone = GridZone::parse(zone).map_err(|e| format!("line {line_no}: {e}"))?;
        let entry = CloudRegion {
            cloud,
            region: region.clone(),
            zone,
        };
        if located.insert(region.clone(), entry).is_some() {
            return Err(format!("line {line_no}: region {region:?} listed twice"));
        }
    }
    Ok(RegionTable {
        located,
        not_located,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn zone(id: &str) -> GridZone {
        GridZone::parse(id).unwrap()
    }

    #[test]
    fn embedded_table_parses() {
        let table = parse_table(CLOUD_REGIONS_CSV).unwrap();
        assert!(table.located.len() > 150, "{} regions", table.located.len());
    }

    #[test]
    fn every_ccf_region_is_in_the_table() {
        let ccf = CCF_GRID_FACTORS_CSV;
        let table = parse_table(CLOUD_REGIONS_CSV).unwrap();
        let mut checked = 0;
        for line in ccf.lines().skip(1) {
            let mut fields = line.split(',');
            let provider = fields.next().unwrap();
            let region = fields.next().unwrap().to_ascii_lowercase();
            if region == "unknown" {
                continue;
            }
            let cloud = Cloud::parse(provider).unwrap();
            let located = table.located.get(&region).is_some_and(|e| e.cloud == cloud);
            let listed = table.not_located.contains(&(cloud, region.clone()));
            assert!(
                located || listed,
                "CCF region {provider}/{region} is not in cloud_regions.csv"
            );
            checked += 1;
        }
        // 27 AWS, 77 Azure and 41 GCP names (35 regions, 6 dual/multi), GCP listed twice.
        assert_eq!(checked, 27 + 77 + 2 * 41);
    }

    #[test]
    fn well_known_regions_map_to_their_grids() {
        for (region, id) in [
            ("us-east-1", "US-MIDA-PJM"),
            ("us-west-2", "US-NW-BPAT"),
            ("eu-central-1", "DE"),
            ("europe-west1", "BE"),
            ("westeurope", "NL"),
            ("eu-north-1", "SE-SE3"),
            ("us-central1", "US-MIDW-MISO"),
            ("southcentralus", "US-TEX-ERCO"),
            ("ap-northeast-1", "JP-TK"),
        ] {
            assert_eq!(zone_for_region(region), Some(&zone(id)), "{region}");
        }
        assert_eq!(lookup_region("westeurope").unwrap().cloud, Cloud::Azure);
        assert_eq!(
            zone_for_region("asia"),
            None,
            "multi-regions are not places"
        );
    }

    #[test]
    fn azure_camel_case_and_whitespace_are_accepted() {
        assert_eq!(zone_for_region(" CentralUS "), Some(&zone("US-MIDW-MISO")));
    }

    #[test]
    fn label_wins_over_region() {
        let node = labels(&[(GRID_ZONE_LABEL, "fr"), (REGION_LABEL, "eu-central-1")]);
        let r = zone_for_node(&node, Some(&zone("PL")));
        let expected = Resolution {
            zone: Some(zone("FR")),
            source: ZoneSource::Label,
            warning: None,
        };
        assert_eq!(r, expected);
    }

    #[test]
    fn region_is_mapped_when_no_label() {
        let r = zone_for_node(&labels(&[(REGION_LABEL, "us-east-1")]), None);
        assert_eq!(r.zone, Some(zone("US-MIDA-PJM")));
        assert_eq!(r.source, ZoneSource::Region("us-east-1".into()));
        assert_eq!(r.warning, None);
    }

    #[test]
    fn no_labels_means_default_without_warning() {
        let r = zone_for_node(&BTreeMap::new(), Some(&zone("PL")));
        let expected = Resolution {
            zone: Some(zone("PL")),
            source: ZoneSource::Default,
            warning: None,
        };
        assert_eq!(r, expected);
        assert_eq!(r.source.as_str(), "default");
    }

    #[test]
    fn no_labels_and_no_default_means_no_zone_and_says_so() {
        let r = zone_for_node(&BTreeMap::new(), None);
        assert_eq!((r.zone, r.source), (None, ZoneSource::Default));
        let warning = r.warning.unwrap();
        assert!(warning.contains("neither"), "{warning}");
        assert!(warning.contains("--default-zone"), "{warning}");
    }

    #[test]
    fn unknown_region_warns_and_uses_default() {
        let r = zone_for_node(
            &labels(&[(REGION_LABEL, "mars-north-1")]),
            Some(&zone("PL")),
        );
        assert_eq!((r.zone, r.source), (Some(zone("PL")), ZoneSource::Default));
        let warning = r.warning.unwrap();
        assert!(warning.contains("\"mars-north-1\""), "{warning}");
        assert!(warning.contains(GRID_ZONE_LABEL), "{warning}");
        assert!(
            warning.ends_with("using the default grid zone PL"),
            "{warning}"
        );
    }

    #[test]
    fn unknown_region_without_default_leaves_the_node_alone() {
        let r = zone_for_node(&labels(&[(REGION_LABEL, "mars-north-1")]), None);
        assert_eq!(r.zone, None);
        let warning = r.warning.unwrap();
        assert!(warning.contains("\"mars-north-1\""), "{warning}");
        assert!(warning.ends_with("leaves this node alone"), "{warning}");
    }

    #[test]
    fn invalid_label_warns_and_falls_through_to_region() {
        let node = labels(&[(GRID_ZONE_LABEL, "DE/FR"), (REGION_LABEL, "westeurope")]);
        let r = zone_for_node(&node, Some(&zone("PL")));
        assert_eq!(r.zone, Some(zone("NL")));
        assert_eq!(r.source.as_str(), "region");
        assert!(
            r.warning
                .unwrap()
                .contains("\"DE/FR\" is not an Electricity Maps zone id")
        );
    }

    #[test]
    fn invalid_label_and_unknown_region_report_both() {
        let node = labels(&[(GRID_ZONE_LABEL, ""), (REGION_LABEL, "nowhere")]);
        let r = zone_for_node(&node, Some(&zone("PL")));
        assert_eq!(r.zone, Some(zone("PL")));
        let warning = r.warning.unwrap();
        assert!(
            warning.contains(GRID_ZONE_LABEL) && warning.contains("\"nowhere\""),
            "{warning}"
        );
    }

    #[test]
    fn malformed_tables_are_rejected() {
        let header = "provider,region,zone,note\n";
        for (body, why) in [
            ("ibm,us-south,US-TEX-ERCO,x", "unknown provider"),
            ("aws,us-east-1,US/PJM,x", "may contain only"),
            ("aws,us-east-1,,multi", "not a location"),
            ("aws,us-east-1,DE,x\naws,US-EAST-1,DE,y", "listed twice"),
            ("aws,us-east-1", "expected"),
        ] {
            let err = parse_table(&format!("{header}{body}")).err().unwrap();
            assert!(err.contains(why), "{body}: {err}");
        }
    }
}
