"""The Spark-like batch Job that opts into carbon-aware placement, and the outputs."""

from __future__ import annotations

from conftest import all_manifests, helm_charts


def _job(s):
    jobs = [(lid, d) for lid, d in all_manifests(s) if d["kind"] == "Job"]
    assert len(jobs) == 1
    return jobs[0]


def test_job_prefers_green_nodes_and_does_not_tolerate_the_carbon_taint(default):
    _, job = _job(default)
    assert job["metadata"]["namespace"] == "carbon-demo"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    tolerations = pod.get("tolerations", [])
    assert not any(t.get("key") == "carbon-kube.io/high-intensity" or t.get("operator") == "Exists" and "key" not in t
                   for t in tolerations)
    prefs = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    best = max(prefs, key=lambda p: p["weight"])
    assert best["weight"] == 100
    assert best["preference"]["matchExpressions"] == [
        {"key": "carbon-kube.io/intensity-class", "operator": "In", "values": ["green"]}
    ]
    # Never a hard requirement: the job still runs when no node is green.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["nodeAffinity"]


def test_job_meets_the_restricted_pod_security_standard(default):
    _, job = _job(default)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["requests"] and c["resources"]["limits"]
    namespaces = [d for _, d in all_manifests(default) if d["kind"] == "Namespace"]
    demo = next(n for n in namespaces if n["metadata"]["name"] == "carbon-demo")
    assert demo["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_job_starts_after_the_agent(default):
    lid, _ = _job(default)
    agent = helm_charts(default)["carbon-kube"]["_logical_id"]
    assert agent in default.json()["Resources"][lid]["DependsOn"]


def test_sample_job_can_be_turned_off(synth):
    s = synth(sampleJob="false")
    assert not [d for _, d in all_manifests(s) if d["kind"] == "Job"]
    assert "SampleJobCommand" not in s.json()["Outputs"]


def test_outputs_kubeconfig_and_grafana_commands(default):
    outputs = default.json()["Outputs"]
    kubeconfig = outputs["KubeconfigCommand"]["Value"]["Fn::Join"][1]
    assert kubeconfig[0] == "aws eks update-kubeconfig --region eu-west-1 --name carbon-kube-lab --role-arn "
    assert kubeconfig[1]["Fn::GetAtt"][0].startswith("LabAdminRole")
    assert outputs["GrafanaCommand"]["Value"] == (
        "kubectl -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80"
    )
    assert "admin-password" in outputs["GrafanaPasswordCommand"]["Value"]
    assert outputs["SetKeyCommand"]["Value"].startswith(
        "aws secretsmanager put-secret-value --region eu-west-1 --secret-id carbon-kube/electricity-maps-token "
    )
    assert outputs["ClusterName"]["Value"] == "carbon-kube-lab"
