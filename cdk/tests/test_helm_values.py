"""The agent's Helm chart: installed from this repository, with the lab's values."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import helm_charts

CUSTOM = dict(
    threshold="275.5",
    hysteresis=15,
    defaultZone="DE",
    taintEffect="NoSchedule",
    maxTaintedFraction="0.25",
    pollInterval="2m",
)


def test_agent_chart_comes_from_the_repository_as_an_asset(default):
    agent = helm_charts(default)["carbon-kube"]
    assert "Chart" not in agent and "Repository" not in agent
    assert "ChartAssetURL" in agent
    assert agent["Namespace"] == "carbon-kube"
    assert agent["Wait"] is True
    # The asset is the chart directory, zipped at synth time.
    assets = json.loads(next(default.outdir.glob("CarbonKubeLab.assets.json")).read_text())
    sources = [f["source"] for f in assets["files"].values()]
    chart_dir = default.stacks["CarbonKubeLab"].config.chart_dir
    chart_assets = [
        src
        for src in sources
        if src.get("packaging") == "zip"
        and (default.outdir / src["path"] / "Chart.yaml").is_file()
    ]
    assert len(chart_assets) == 1, sources
    staged = yaml.safe_load((default.outdir / chart_assets[0]["path"] / "Chart.yaml").read_text())
    assert staged["name"] == yaml.safe_load((chart_dir / "Chart.yaml").read_text())["name"] == "carbon-kube"


def test_default_values_pass_through(default):
    values = helm_charts(default)["carbon-kube"]["Values"]
    assert values["threshold"] == 300
    assert values["hysteresis"] == 20
    assert values["taintEffect"] == "PreferNoSchedule"
    assert values["maxTaintedFraction"] == 0.5
    assert values["pollInterval"] == "5m"
    # No zone pinned: the agent maps the node's AWS region to its grid zone.
    assert values["defaultZone"] == ""
    assert values["providers"]["electricityMaps"] == {
        "existingSecret": "carbon-kube-provider-keys",
        "existingSecretKey": "token",
    }
    assert values["metrics"]["podMonitor"] == {"enabled": True}
    assert values["metrics"]["prometheusRule"] == {"enabled": False}
    # The image built from the repository's Dockerfile (tests/test_image.py).
    assert ".dkr.ecr." in values["image"]["repository"] and values["image"]["tag"]


def test_context_values_pass_through(synth):
    values = helm_charts(synth(**CUSTOM))["carbon-kube"]["Values"]
    assert values["threshold"] == 275.5
    assert values["hysteresis"] == 15
    assert values["defaultZone"] == "DE"
    assert values["taintEffect"] == "NoSchedule"
    assert values["maxTaintedFraction"] == 0.25
    assert values["pollInterval"] == "2m"


def test_first_simulated_zone_is_the_default_zone(synth):
    values = helm_charts(synth(zones="FR,DE"))["carbon-kube"]["Values"]
    assert values["defaultZone"] == "FR"


def test_image_override(synth):
    values = helm_charts(synth(imageRepository="123456789012.dkr.ecr.eu-west-1.amazonaws.com/carbon-kube", imageTag="0.1.0"))[
        "carbon-kube"
    ]["Values"]
    assert values["image"] == {
        "repository": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/carbon-kube",
        "tag": "0.1.0",
    }


def _paths(value, prefix=()):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    else:
        yield prefix


def test_every_value_the_lab_sets_exists_in_the_charts_values_yaml(synth):
    """Catches a renamed chart value before a deploy silently ignores it."""
    s = synth(imageRepository="example.com/carbon-kube", imageTag="dev")
    chart_defaults = yaml.safe_load((s.stacks["CarbonKubeLab"].config.chart_dir / "values.yaml").read_text())
    for path in _paths(helm_charts(s)["carbon-kube"]["Values"]):
        node = chart_defaults
        for key in path:
            assert isinstance(node, dict) and key in node, f"chart has no value {'.'.join(path)}"
            node = node[key]


def _helm_template(helm, s, tmp_path):
    chart = helm_charts(s)["carbon-kube"]
    values = tmp_path / "values.json"
    values.write_text(json.dumps(chart["Values"]))
    result = subprocess.run(
        [
            str(helm), "template", chart["Release"], str(s.stacks["CarbonKubeLab"].config.chart_dir),
            "--namespace", chart["Namespace"], "--kube-version", "1.33.0", "--values", str(values),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("overrides", [{}, CUSTOM, {"enableMonitoring": "false"}], ids=["default", "custom", "no-monitoring"])
def test_chart_renders_with_the_lab_values(helm, synth, tmp_path, overrides):
    """helm (the binary the kubectl Lambda runs) renders the chart with these values,
    against Kubernetes 1.33, and its values.schema.json accepts them."""
    s = synth(**overrides)
    docs = _helm_template(helm, s, tmp_path)
    kinds = [d["kind"] for d in docs]
    assert "DaemonSet" in kinds
    # The key comes from the synced Secret: the chart renders no Secret of its own.
    assert "Secret" not in kinds
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    volumes = daemonset["spec"]["template"]["spec"].get("volumes", [])
    assert any(v.get("secret", {}).get("secretName") == "carbon-kube-provider-keys" for v in volumes), volumes
    # The lab's namespace enforces the "restricted" Pod Security Standard.
    pod = daemonset["spec"]["template"]["spec"]
    assert not any("hostPath" in v for v in volumes), volumes
    assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"))
    for c in pod["containers"]:
        assert not c.get("securityContext", {}).get("privileged")
    assert ("PodMonitor" in kinds) == (overrides.get("enableMonitoring") != "false")
    assert "PrometheusRule" not in kinds  # the lab installs deploy/rules/ itself, once
    if overrides is CUSTOM:
        rendered = yaml.safe_dump(daemonset)
        for expected in ("275.5", "NoSchedule", "DE", "0.25", "2m"):
            assert expected in rendered, f"{expected} not in the rendered DaemonSet"


def test_supporting_charts_are_pinned(default):
    charts = helm_charts(default)
    eso = charts["external-secrets"]
    assert (eso["Chart"], eso["Repository"], eso["Version"]) == (
        "external-secrets", "https://charts.external-secrets.io", "1.0.0",
    )
    kps = charts["kube-prometheus-stack"]
    assert (kps["Chart"], kps["Repository"], kps["Version"]) == (
        "kube-prometheus-stack", "https://prometheus-community.github.io/helm-charts", "79.7.1",
    )


def test_install_order(default):
    charts = helm_charts(default)
    agent_deps = charts["carbon-kube"]["_depends_on"]
    # The agent waits for its namespace, the synced key and the Prometheus operator CRDs.
    assert charts["kube-prometheus-stack"]["_logical_id"] in agent_deps
    assert any(d.startswith("ClustermanifestKeySync") for d in agent_deps)
    assert any(d.startswith("ClustermanifestAgentNamespace") for d in agent_deps)
