"""The optional second region (primary/secondary layout)."""

from __future__ import annotations

import pytest

from carbon_kube_lab import ConfigError, build_app
from conftest import all_manifests, context, helm_charts, policy_documents


def test_one_stack_by_default(default):
    assert list(default.stacks) == ["CarbonKubeLab"]
    assert default.stacks["CarbonKubeLab"].region == "eu-west-1"


@pytest.fixture(scope="module")
def pair(synth):
    return synth(secondaryRegion="eu-north-1", region="eu-west-1")


def test_second_region_gets_its_own_stack_after_the_primary(pair):
    primary, secondary = pair.stacks["CarbonKubeLab"], pair.stacks["CarbonKubeLabSecondary"]
    assert (primary.region, secondary.region) == ("eu-west-1", "eu-north-1")
    assert primary in secondary.dependencies
    sec = pair.template("CarbonKubeLabSecondary")
    sec.has_resource_properties("AWS::EKS::Cluster", {"Name": "carbon-kube-lab-secondary", "Version": "1.33"})
    sec.has_resource_properties("AWS::EC2::VPC", {"CidrBlock": "10.1.0.0/16"})
    pair.template().has_resource_properties("AWS::EC2::VPC", {"CidrBlock": "10.0.0.0/16"})
    groups = pair.resources("AWS::EKS::Nodegroup", "CarbonKubeLabSecondary")
    assert len(groups) == 1
    assert len(next(iter(groups.values()))["Properties"]["Subnets"]) >= 2
    assert "carbon-kube" in helm_charts(pair, "CarbonKubeLabSecondary")


def test_primary_replicates_the_key_secret_to_the_secondary_region(pair):
    secret = next(iter(pair.resources("AWS::SecretsManager::Secret").values()))["Properties"]
    assert secret["ReplicaRegions"] == [{"Region": "eu-north-1"}]
    # The secondary creates no secret: it reads the replica, in its own region only.
    assert not pair.resources("AWS::SecretsManager::Secret", "CarbonKubeLabSecondary")
    t = pair.json("CarbonKubeLabSecondary")
    grants = [
        st for _, doc in policy_documents(t) for st in doc["Statement"]
        if any(a.startswith("secretsmanager:") for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]))
    ]
    assert len(grants) == 1
    assert grants[0]["Resource"] == {
        "Fn::Join": ["", ["arn:aws:secretsmanager:eu-north-1:", {"Ref": "AWS::AccountId"}, ":secret:carbon-kube/electricity-maps-token-??????"]]
    }
    store = next(d for _, d in all_manifests(pair, "CarbonKubeLabSecondary") if d["kind"] == "SecretStore")
    assert store["spec"]["provider"]["aws"]["region"] == "eu-north-1"
    outputs = t["Outputs"]
    assert "SetKeyCommand" not in outputs  # set it once, in the primary region
    assert "--region eu-north-1 --name carbon-kube-lab-secondary" in str(outputs["KubeconfigCommand"]["Value"])


def test_secondary_uses_the_same_carbon_settings(synth):
    s = synth(secondaryRegion="us-west-2", threshold=250, taintEffect="NoSchedule")
    a = helm_charts(s)["carbon-kube"]["Values"]
    b = helm_charts(s, "CarbonKubeLabSecondary")["carbon-kube"]["Values"]
    # The same image, built into each region's own registry.
    image_a, image_b = a.pop("image"), b.pop("image")
    assert image_a["tag"] == image_b["tag"]
    assert ".us-west-2." in image_b["repository"] and ".eu-west-1." in image_a["repository"]
    assert a == b and b["threshold"] == 250 and b["taintEffect"] == "NoSchedule"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"secondaryRegion": "eu-west-1"}, "must differ from region"),
        ({"secondaryRegion": "mars-1"}, "not an AWS region"),
        ({"secondaryRegion": "eu-north-1", "secondaryVpcCidr": "10.0.0.0/16"}, "secondaryVpcCidr"),
    ],
)
def test_bad_second_region_is_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_app(context(**overrides), outdir=str(tmp_path))
