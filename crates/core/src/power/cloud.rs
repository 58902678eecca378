//! Which cloud a node runs in, for its PUE and the averages used when its
//! processor is unknown. Decided once when the agent starts, so the node's
//! power, its pods' shares and deferral's savings all use one model.

use crate::zones::{Cloud, lookup_region};

/// Where a node's cloud came from, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudSource {
    /// The operator's `--cloud`.
    Flag,
    /// The scheme of the node's `spec.providerID`.
    ProviderId,
    /// The cloud whose region table holds the node's region label.
    RegionLabel,
    /// Nothing said: AWS, the cloud this project deploys to.
    Assumed,
}

impl CloudSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::ProviderId => "provider-id",
            Self::RegionLabel => "region-label",
            Self::Assumed => "assumed",
        }
    }
}

/// The node's cloud: `flag`, else its providerID's scheme (as each cloud's
/// controller manager writes it: `aws://`, `gce://`, `azure://`), else the
/// cloud of its region label, else AWS.
pub fn cloud_of_node(
    flag: Option<Cloud>,
    provider_id: Option<&str>,
    region_label: Option<&str>,
) -> (Cloud, CloudSource) {
    if let Some(cloud) = flag {
        return (cloud, CloudSource::Flag);
    }
    let scheme = provider_id
        .and_then(|id| id.split_once("://"))
        .map(|(scheme, _)| scheme.trim().to_ascii_lowercase());
    let by_scheme = match scheme.as_deref() {
        Some("aws") => Some(Cloud::Aws),
        Some("gce") => Some(Cloud::Gcp),
        Some("azure") => Some(Cloud::Azure),
        _ => None,
    };
    if let Some(cloud) = by_scheme {
        return (cloud, CloudSource::ProviderId);
    }
    match region_label.and_then(lookup_region) {
        Some(region) => (region.cloud, CloudSource::RegionLabel),
        None => (Cloud::Aws, CloudSource::Assumed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_the_provider_id_then_the_region_decide() {
        let cases = [
            (
                Some(Cloud::Azure),
                Some("aws:///eu-west-1a/i-0abc"),
                Some("us-central1"),
                Cloud::Azure,
                CloudSource::Flag,
            ),
            (
                None,
                Some("aws:///eu-west-1a/i-0abc"),
                Some("us-central1"),
                Cloud::Aws,
                CloudSource::ProviderId,
            ),
            (
                None,
                Some("gce://project/europe-west4-a/node-1"),
                None,
                Cloud::Gcp,
                CloudSource::ProviderId,
            ),
            (
                None,
                Some("azure:///subscriptions/x/resourceGroups/y"),
                None,
                Cloud::Azure,
                CloudSource::ProviderId,
            ),
            // kind, k3s and bare metal name no cloud: the region label may.
            (
                None,
                Some("kind://docker/kind/kind-worker"),
                Some("westeurope"),
                Cloud::Azure,
                CloudSource::RegionLabel,
            ),
            (
                None,
                None,
                Some("europe-west4"),
                Cloud::Gcp,
                CloudSource::RegionLabel,
            ),
            (
                None,
                Some("k3s://node-1"),
                Some("moon-base-1"),
                Cloud::Aws,
                CloudSource::Assumed,
            ),
            (None, None, None, Cloud::Aws, CloudSource::Assumed),
        ];
        for (flag, provider_id, region, cloud, source) in cases {
            assert_eq!(
                cloud_of_node(flag, provider_id, region),
                (cloud, source),
                "{flag:?} {provider_id:?} {region:?}"
            );
        }
    }
}
