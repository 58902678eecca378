"""The cost guard (scale the node groups to zero after N hours) and the metrics record
(hourly Prometheus export into a bucket that outlives the lab), each with IAM scoped to
what it touches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import CDK_DIR, all_manifests, as_list, policy_documents

from carbon_kube_lab import ConfigError, build_app, k8s
from conftest import context


def _resources(s, cfn_type):
    return s.resources(cfn_type)


def _statements(s):
    for owner, doc in policy_documents(s.json()):
        for st in doc["Statement"]:
            yield owner, st


# --- scale to zero -------------------------------------------------------------------


def test_no_scale_to_zero_by_default(default):
    assert _resources(default, "AWS::Events::Rule") == {}
    functions = _resources(default, "AWS::Lambda::Function")
    assert not any(k.startswith("ScaleToZero") for k in functions), list(functions)


@pytest.fixture(scope="module")
def guarded(synth):
    return synth(scaleToZeroAfterHours="8", zones="FR,DE")


def test_scale_to_zero_runs_on_a_schedule_after_n_hours(guarded):
    (rule,) = _resources(guarded, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(8 hours)"
    assert rule["Properties"]["State"] == "ENABLED"
    (target,) = rule["Properties"]["Targets"]
    fn_id = target["Arn"]["Fn::GetAtt"][0]
    fn = guarded.json()["Resources"][fn_id]
    assert fn["Type"] == "AWS::Lambda::Function" and fn_id.startswith("ScaleToZero")
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["CLUSTER_NAME"] == "carbon-kube-lab"
    # Both node groups, by name.
    nodegroups = _resources(guarded, "AWS::EKS::Nodegroup")
    assert len(nodegroups) == 2
    names = json.dumps(env["NODEGROUPS"])
    for ng_id in nodegroups:
        assert ng_id in names, (ng_id, names)
    outputs = guarded.json()["Outputs"]
    assert "ScaleUpCommand" in outputs


def test_scale_to_zero_may_only_touch_the_labs_node_groups(guarded):
    nodegroups = set(_resources(guarded, "AWS::EKS::Nodegroup"))
    eks_statements = [
        (owner, st) for owner, st in _statements(guarded)
        if any(a.startswith("eks:") and "Nodegroup" in a for a in as_list(st["Action"]))
    ]
    assert eks_statements, "no node group permission at all"
    for owner, st in eks_statements:
        assert owner.startswith("ScaleToZero"), owner
        assert sorted(as_list(st["Action"])) == ["eks:DescribeNodegroup", "eks:UpdateNodegroupConfig"]
        resources = as_list(st["Resource"])
        assert {r["Fn::GetAtt"][0] for r in resources} == nodegroups
        assert all(r["Fn::GetAtt"][1] == "Arn" for r in resources)


def _handler_module():
    path = CDK_DIR / "carbon_kube_lab" / "functions" / "scale_to_zero" / "index.py"
    spec = importlib.util.spec_from_file_location("scale_to_zero_index", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecordingEks:
    """Stands in for boto3's EKS client: the two calls the handler makes."""

    def __init__(self, scaling):
        self.scaling = scaling
        self.updates = []

    def describe_nodegroup(self, clusterName, nodegroupName):
        return {"nodegroup": {"scalingConfig": dict(self.scaling[nodegroupName])}}

    def update_nodegroup_config(self, clusterName, nodegroupName, scalingConfig):
        self.updates.append((clusterName, nodegroupName, scalingConfig))
        self.scaling[nodegroupName] = scalingConfig


def test_the_function_scales_to_zero_and_keeps_max_size():
    module = _handler_module()
    eks = _RecordingEks({
        "lab-fr": {"minSize": 2, "desiredSize": 3, "maxSize": 4},
        "lab-de": {"minSize": 0, "desiredSize": 0, "maxSize": 4},
    })
    changes = module.scale_to_zero(eks, "lab", ["lab-fr", "lab-de"])
    assert eks.updates == [("lab", "lab-fr", {"minSize": 0, "desiredSize": 0, "maxSize": 4})]
    assert [c["action"] for c in changes] == ["scaled-to-zero", "already-zero"]
    # Idempotent: the next run finds nothing to do.
    module.scale_to_zero(eks, "lab", ["lab-fr", "lab-de"])
    assert len(eks.updates) == 1


@pytest.mark.parametrize("bad", ["-1", "721", "1.5", "soon"])
def test_bad_scale_to_zero_hours_are_refused(bad):
    with pytest.raises(ConfigError, match="scaleToZeroAfterHours"):
        build_app(context(scaleToZeroAfterHours=bad))


# --- the metrics record ----------------------------------------------------------------


def _export_cron(s):
    found = [(lid, d) for lid, d in all_manifests(s) if d["kind"] == "CronJob"]
    assert len(found) <= 1, found
    return found[0] if found else (None, None)


def test_metrics_bucket_outlives_the_lab_and_is_private(default):
    resources = default.json()["Resources"]
    (bucket_id, bucket), = _resources(default, "AWS::S3::Bucket").items()
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (policy,) = (r for r in resources.values() if r["Type"] == "AWS::S3::BucketPolicy")
    deny = policy["Properties"]["PolicyDocument"]["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert "MetricsBucketName" in default.json()["Outputs"]
    assert "ExportMetricsCommand" in default.json()["Outputs"]


def test_only_the_exporter_may_write_the_bucket_and_only_objects(default):
    (bucket_id,) = _resources(default, "AWS::S3::Bucket")
    touching = [
        (owner, st) for owner, st in _statements(default) if bucket_id in json.dumps(st.get("Resource"))
    ]
    assert len(touching) == 1, touching
    owner, st = touching[0]
    assert st["Effect"] == "Allow"
    assert all(a.startswith("s3:PutObject") or a == "s3:Abort*" for a in as_list(st["Action"])), st
    for resource in as_list(st["Resource"]):
        # bucket ARN + "/*": objects, never the bucket's own settings.
        parts = resource["Fn::Join"][1]
        assert parts[0] == {"Fn::GetAtt": [bucket_id, "Arn"]} and parts[1] == "/*", resource
    # That policy belongs to the IRSA role of the exporter's service account only.
    role_id = next(
        r["Ref"] for r in default.json()["Resources"][owner]["Properties"]["Roles"]
    )
    (trust,) = default.json()["Resources"][role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    # The condition keys need the issuer URL, so CDK computes them in a CfnJson.
    cond_ref = trust["Condition"]["StringEquals"]["Fn::GetAtt"][0]
    cond = json.dumps(default.json()["Resources"][cond_ref]["Properties"]["Value"])
    assert f'sub\\":\\"system:serviceaccount:{k8s.MONITORING_NAMESPACE}:{k8s.EXPORT_SA}\\"' in cond, cond


def test_export_cronjob_reads_prometheus_and_writes_the_bucket(default):
    lid, cron = _export_cron(default)
    assert cron["metadata"]["namespace"] == k8s.MONITORING_NAMESPACE
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == k8s.EXPORT_SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    query = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    assert query["PROMETHEUS_URL"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    assert query["QUERY"] == '{__name__=~"carbon_kube_.+"}'
    upload = pod["containers"][0]
    bucket_env = next(e for e in upload["env"] if e["name"] == "BUCKET")["value"]
    assert bucket_env == "<TOKEN>"  # the bucket's name, resolved at deploy
    raw = default.json()["Resources"][lid]
    (bucket_id,) = _resources(default, "AWS::S3::Bucket")
    assert {"Ref": bucket_id} in raw["Properties"]["Manifest"]["Fn::Join"][1]
    for c in pod["initContainers"] + pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # After the service account (and so after the monitoring namespace).
    assert any(d.startswith("ClusterMetricsExporter") for d in raw.get("DependsOn", [])), raw.get("DependsOn")


@pytest.mark.parametrize("overrides", [{"enableMonitoring": "false"}, {"metricsExport": "false"}])
def test_no_record_without_monitoring_or_when_off(synth, overrides):
    s = synth(**overrides)
    assert _resources(s, "AWS::S3::Bucket") == {}
    assert _export_cron(s) == (None, None)


class _Prometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query_range like Prometheus, and keeps the query it got."""

    seen: list = []

    def do_GET(self):
        url = urlparse(self.path)
        self.seen.append((url.path, parse_qs(url.query)))
        body = {
            "status": "success",
            "data": {"resultType": "matrix", "result": [
                {"metric": {"__name__": "carbon_kube_node_power_watts", "node": "n1"},
                 "values": [[1700000000, "42"]]},
            ]},
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_export_query_script_against_a_prometheus_api(default, tmp_path):
    """The query container's script, run here against a local server that speaks the
    query_range API: it asks for the window and writes the result and the object key."""
    _, cron = _export_cron(default)
    query = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][0]
    server = HTTPServer(("127.0.0.1", 0), _Prometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {e["name"]: e["value"] for e in query["env"]}
        env["PROMETHEUS_URL"] = f"http://127.0.0.1:{server.server_port}"
        env["EXPORT_DIR"] = str(tmp_path)
        script = query["command"][2]
        result = subprocess.run(
            [sys.executable, "-c", script], env={**os.environ, **env},
            capture_output=True, text=True, timeout=60,
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    (path, params), = _Prometheus.seen
    assert path == "/api/v1/query_range"
    assert params["query"] == ['{__name__=~"carbon_kube_.+"}']
    assert int(params["end"][0]) - int(params["start"][0]) == k8s.EXPORT_WINDOW_SECONDS
    exported = json.loads((tmp_path / "metrics.json").read_text())
    assert exported["result"][0]["metric"]["node"] == "n1"
    key = (tmp_path / "key").read_text()
    assert key.startswith("carbon-kube-lab/") and key.endswith("Z.json"), key
