"""kube-prometheus-stack with carbon-kube's dashboards (grafana/*.json) and alert rules
(deploy/rules/carbon-kube.rules.yaml); absent files are skipped with a synth warning."""

from __future__ import annotations

import json

import pytest
import yaml
from aws_cdk.assertions import Annotations, Match

from carbon_kube_lab import ConfigError, build_app
from conftest import FIXTURES, all_manifests, context, helm_charts


def _objects(s, kind):
    return {d["metadata"]["name"]: (lid, d) for lid, d in all_manifests(s) if d["kind"] == kind}


def test_monitoring_chart_values(default):
    kps = helm_charts(default)["kube-prometheus-stack"]
    assert kps["Namespace"] == "monitoring"
    assert kps["CreateNamespace"] is True
    values = kps["Values"]
    # No well-known Grafana password: the chart generates one into its Secret.
    assert values["grafana"]["adminPassword"] == ""
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert sidecar == {"enabled": True, "label": "grafana_dashboard", "labelValue": "1"}
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["ruleSelectorNilUsesHelmValues"] is False


def test_dashboards_become_labelled_configmaps(default):
    maps = _objects(default, "ConfigMap")
    files = sorted((FIXTURES / "dashboards").glob("*.json"))
    assert sorted(maps) == ["carbon-kube-dashboard-carbon-nodes", "carbon-kube-dashboard-carbon-overview"]
    kps_id = helm_charts(default)["kube-prometheus-stack"]["_logical_id"]
    resources = default.json()["Resources"]
    for f in files:
        lid, cm = next(v for v in maps.values() if f.name in v[1]["data"])
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())
        # Created after the monitoring chart (its namespace and the Grafana sidecar).
        assert kps_id in resources[lid]["DependsOn"]


def test_rules_become_a_prometheus_rule(default):
    rules = _objects(default, "PrometheusRule")
    assert list(rules) == ["carbon-kube"]
    _, rule = rules["carbon-kube"]
    assert rule["metadata"]["namespace"] == "monitoring"
    expected = yaml.safe_load((FIXTURES / "rules.yaml").read_text())["groups"]
    assert rule["spec"]["groups"] == expected
    # Prometheus templates travel untouched.
    assert "{{ $labels.zone }}" in json.dumps(rule)


def test_prometheus_rule_file_form_is_accepted(synth):
    s = synth(rulesFile=str(FIXTURES / "prometheusrule.yaml"))
    _, rule = _objects(s, "PrometheusRule")["carbon-kube"]
    assert rule["spec"]["groups"][0]["name"] == "carbon-kube-fixture-cr"


def test_missing_dashboards_and_rules_are_skipped_with_a_warning(synth, tmp_path):
    s = synth(dashboardsDir=str(tmp_path / "no-such-dir"), rulesFile=str(tmp_path / "no-such.rules.yaml"))
    assert not _objects(s, "ConfigMap") and not _objects(s, "PrometheusRule")
    # Monitoring itself is still installed.
    assert "kube-prometheus-stack" in helm_charts(s)
    notes = Annotations.from_stack(s.stacks["CarbonKubeLab"])
    notes.has_warning("/CarbonKubeLab", Match.string_like_regexp("no Grafana dashboards at .*no-such-dir"))
    notes.has_warning("/CarbonKubeLab", Match.string_like_regexp("no alert rules at .*no-such.rules.yaml"))


def test_empty_rule_groups_are_skipped_with_a_warning(synth):
    s = synth(rulesFile=str(FIXTURES / "empty-rules.yaml"))
    assert not _objects(s, "PrometheusRule")
    Annotations.from_stack(s.stacks["CarbonKubeLab"]).has_warning(
        "/CarbonKubeLab", Match.string_like_regexp("has no rule groups")
    )


def test_complete_files_give_no_warning(default):
    Annotations.from_stack(default.stacks["CarbonKubeLab"]).has_no_warning("*", Match.any_value())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dashboardsDir": str(FIXTURES / "bad-dashboards")}, r"broken\.json: not valid JSON"),
        ({"rulesFile": str(FIXTURES / "dashboards" / "carbon-overview.json")}, "top-level 'groups:'"),
    ],
)
def test_broken_files_stop_synthesis(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_app(context(**overrides), outdir=str(tmp_path))


def test_monitoring_can_be_turned_off(synth):
    s = synth(enableMonitoring="false")
    assert "kube-prometheus-stack" not in helm_charts(s)
    assert not _objects(s, "ConfigMap") and not _objects(s, "PrometheusRule")
    assert helm_charts(s)["carbon-kube"]["Values"]["metrics"]["podMonitor"] == {"enabled": False}
    assert "GrafanaCommand" not in s.json()["Outputs"]


def test_the_repositorys_own_dashboards_and_rules(synth):
    """With cdk.json's paths (grafana/, deploy/rules/): what the repository holds today
    is loaded, and whatever is missing is reported."""
    from carbon_kube_lab import load_cdk_json_context

    ctx = load_cdk_json_context()
    s = synth(dashboardsDir=ctx["dashboardsDir"], rulesFile=ctx["rulesFile"])
    cfg = s.stacks["CarbonKubeLab"].config
    boards = sorted(cfg.dashboards_dir.glob("*.json")) if cfg.dashboards_dir.is_dir() else []
    maps = _objects(s, "ConfigMap")
    assert sorted(name for _, cm in maps.values() for name in cm["data"]) == [b.name for b in boards]
    notes = Annotations.from_stack(s.stacks["CarbonKubeLab"])
    if not boards:
        notes.has_warning("/CarbonKubeLab", Match.string_like_regexp("no Grafana dashboards"))
    if cfg.rules_file.is_file():
        groups = (yaml.safe_load(cfg.rules_file.read_text()) or {})
        groups = groups.get("spec", groups).get("groups", [])
        assert bool(_objects(s, "PrometheusRule")) == bool(groups)
    else:
        notes.has_warning("/CarbonKubeLab", Match.string_like_regexp("no alert rules"))
