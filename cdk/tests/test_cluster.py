"""The EKS cluster and its managed node groups."""

from __future__ import annotations

import re

import pytest
import yaml
from aws_cdk.assertions import Match

from carbon_kube_lab import ConfigError, build_app
from conftest import context


def test_cluster_runs_kubernetes_1_33_in_private_subnets(default):
    default.template().resource_count_is("AWS::EKS::Cluster", 1)
    default.template().has_resource_properties(
        "AWS::EKS::Cluster",
        {
            "Name": "carbon-kube-lab",
            "Version": "1.33",
            # Access entries, not the aws-auth ConfigMap.
            "AccessConfig": {"AuthenticationMode": "API"},
            # Managed node groups, not Auto Mode.
            "ComputeConfig": {"Enabled": False},
        },
    )


def test_cluster_version_is_within_the_charts_supported_range(default):
    # The chart's kubeVersion is a lower bound (">=1.30.0-0"); helm template checks the
    # whole constraint against 1.33 in test_helm_values.py.
    chart = default.stacks["CarbonKubeLab"].config.chart_dir / "Chart.yaml"
    kube_version = yaml.safe_load(chart.read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(\.\d+)?(-0)?", kube_version.strip())
    assert match, f"unexpected kubeVersion constraint {kube_version!r}"
    version = next(iter(default.resources("AWS::EKS::Cluster").values()))["Properties"]["Version"]
    assert tuple(int(x) for x in version.split(".")) >= (int(match[1]), int(match[2]))


def _private_subnets(s, name="CarbonKubeLab"):
    subnets = s.resources("AWS::EC2::Subnet", name)
    return {
        logical_id: res["Properties"]
        for logical_id, res in subnets.items()
        if {"Key": "aws-cdk:subnet-type", "Value": "Private"} in res["Properties"]["Tags"]
    }


def test_node_group_size_and_spread_over_two_azs(default):
    groups = default.resources("AWS::EKS::Nodegroup")
    assert len(groups) == 1
    props = next(iter(groups.values()))["Properties"]
    assert props["ScalingConfig"] == {"MinSize": 2, "DesiredSize": 2, "MaxSize": 4}
    assert props["InstanceTypes"] == ["t3.large"]
    assert props["AmiType"] == "AL2023_x86_64_STANDARD"

    private = _private_subnets(default)
    refs = [s["Ref"] for s in props["Subnets"]]
    assert len(refs) >= 2
    # Every subnet of the node group is private (no public IPs), and they sit in
    # distinct availability zones.
    assert set(refs) <= set(private), f"node group uses non-private subnets: {refs}"
    azs = {str(private[r]["AvailabilityZone"]) for r in refs}
    assert len(azs) == len(refs) >= 2, azs
    assert all(private[r]["MapPublicIpOnLaunch"] is False for r in refs)


def test_explicit_availability_zones(synth):
    s = synth(availabilityZones="eu-west-1a,eu-west-1b,eu-west-1c")
    props = next(iter(s.resources("AWS::EKS::Nodegroup").values()))["Properties"]
    private = _private_subnets(s)
    azs = sorted(private[r["Ref"]]["AvailabilityZone"] for r in props["Subnets"])
    assert azs == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]


def test_one_labelled_node_group_per_simulated_grid_zone(synth):
    s = synth(zones="FR,DE", nodeMinSize=1, nodeDesiredSize=1, nodeMaxSize=3)
    groups = {g["Properties"]["NodegroupName"]: g["Properties"] for g in s.resources("AWS::EKS::Nodegroup").values()}
    assert set(groups) == {"carbon-kube-lab-fr", "carbon-kube-lab-de"}
    assert groups["carbon-kube-lab-fr"]["Labels"] == {"carbon-kube.io/grid-zone": "FR"}
    assert groups["carbon-kube-lab-de"]["Labels"] == {"carbon-kube.io/grid-zone": "DE"}
    for g in groups.values():
        assert g["ScalingConfig"] == {"MinSize": 1, "DesiredSize": 1, "MaxSize": 3}
        assert len(g["Subnets"]) >= 2


def test_kubectl_handler_is_the_1_33_layer(default):
    default.template().has_resource_properties(
        "AWS::Lambda::LayerVersion", {"Description": Match.string_like_regexp("kubectl")}
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kubernetesVersion": "1.29"}, "kubernetesVersion"),
        ({"availabilityZones": "eu-west-1a"}, "at least two zones"),
        ({"availabilityZones": "us-east-1a,us-east-1b"}, "not in region eu-west-1"),
        ({"nodeMinSize": 3, "nodeDesiredSize": 2}, "nodeDesiredSize"),
        ({"zones": "FR,fr"}, "zones repeat"),
    ],
)
def test_bad_cluster_context_is_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_app(context(**overrides), outdir=str(tmp_path))
