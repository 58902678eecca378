"""Reading and checking context values (strings from `-c`, typed JSON from cdk.json)."""

from __future__ import annotations

import pytest

from carbon_kube_lab.config import ConfigError, LabConfig, from_context, validate
from conftest import CDK_DIR, context


def _cfg(**overrides):
    return from_context(context(**overrides).get)


def test_cdk_json_defaults():
    c = _cfg()
    assert (c.region, c.kubernetes_version, c.threshold, c.taint_effect) == ("eu-west-1", "1.33", 300, "PreferNoSchedule")
    assert c.enable_monitoring is True and c.sample_job is True and c.secondary_region == ""
    assert c.chart_dir == CDK_DIR.parent / "deploy" / "helm" / "carbon-kube"


def test_cdk_json_sets_every_lab_key():
    from carbon_kube_lab.config import CONTEXT_KEYS
    from carbon_kube_lab import load_cdk_json_context

    assert set(CONTEXT_KEYS) <= set(load_cdk_json_context())


def test_command_line_strings_are_typed():
    c = _cfg(threshold="250.5", hysteresis="0", maxTaintedFraction="1", enableMonitoring="false",
             sampleJob="0", nodeMaxSize="6", zones=" FR, DE ,", availabilityZones="eu-west-1a,eu-west-1b")
    assert c.threshold == 250.5 and c.hysteresis == 0 and c.max_tainted_fraction == 1
    assert c.enable_monitoring is False and c.sample_job is False and c.node_max_size == 6
    assert c.zones == ("FR", "DE") and c.availability_zones == ("eu-west-1a", "eu-west-1b")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"threshold": "0"}, "threshold: 0 must be above 0"),
        ({"threshold": "lots"}, "threshold: 'lots' is not a number"),
        ({"threshold": "nan"}, "not a finite number"),
        ({"hysteresis": 300}, "hysteresis: 300 must be at least 0 and below threshold"),
        ({"taintEffect": "NoExecute"}, "taintEffect: 'NoExecute' is not one of PreferNoSchedule, NoSchedule"),
        ({"maxTaintedFraction": "1.5"}, "maxTaintedFraction"),
        ({"pollInterval": "0s"}, "pollInterval"),
        ({"pollInterval": "five minutes"}, "pollInterval"),
        ({"defaultZone": "DE FR"}, "defaultZone"),
        ({"region": "Ireland"}, "region"),
        ({"enableMonitoring": "maybe"}, "enableMonitoring: 'maybe' is not true or false"),
        ({"nodeMaxSize": "2.5"}, "not a whole number"),
        ({"keySecretName": "bad name!"}, "keySecretName"),
        ({"keySecretName": "carbon-kube-abcdef"}, "six characters"),
        ({"imageTag": "1.0"}, "imageTag: set imageRepository too"),
        ({"adminPrincipalArn": "admin"}, "adminPrincipalArn"),
        ({"chartDir": "/nonexistent/chart"}, "chartDir: no Helm chart"),
        ({"clusterName": "1lab"}, "clusterName"),
        ({"natGateways": "0"}, "natGateways: 0 must be between 1 and 3"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _cfg(**overrides)


def test_secondary_config_is_derived_from_the_primary():
    c = _cfg(secondaryRegion="eu-north-1", availabilityZones="eu-west-1a,eu-west-1b")
    s = c.for_secondary()
    assert (s.region, s.cluster_name, s.vpc_cidr, s.is_secondary, s.secondary_region) == (
        "eu-north-1", "carbon-kube-lab-secondary", "10.1.0.0/16", True, "",
    )
    assert s.availability_zones == ()
    assert (s.threshold, s.key_secret_name) == (c.threshold, c.key_secret_name)
    validate(s)


def test_dataclass_defaults_match_cdk_json():
    """LabConfig() and cdk.json agree, so running without cdk.json gives the same lab."""
    from carbon_kube_lab import load_cdk_json_context

    assert from_context(load_cdk_json_context().get) == LabConfig()
