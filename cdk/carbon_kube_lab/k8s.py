"""Kubernetes objects and Helm values of the lab, as plain data (no CDK in here).

Kept apart from the stack so that the tests can read exactly what goes to the cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, LabConfig

AGENT_NAMESPACE = "carbon-kube"
AGENT_RELEASE = "carbon-kube"
# The Kubernetes Secret that External Secrets writes and the chart mounts.
KEY_K8S_SECRET = "carbon-kube-provider-keys"
KEY_K8S_SECRET_KEY = "token"
# The service account whose IRSA role may read the key secret, and nothing else.
KEY_READER_SA = "carbon-kube-key-reader"
SECRET_STORE = "aws-secrets-manager"

ESO_NAMESPACE = "external-secrets"
ESO_REPOSITORY = "https://charts.external-secrets.io"
ESO_CHART = "external-secrets"
ESO_VERSION = "1.0.0"

MONITORING_NAMESPACE = "monitoring"
MONITORING_RELEASE = "kube-prometheus-stack"
MONITORING_REPOSITORY = "https://prometheus-community.github.io/helm-charts"
MONITORING_CHART = "kube-prometheus-stack"
MONITORING_VERSION = "79.7.1"
GRAFANA_SERVICE = f"{MONITORING_RELEASE}-grafana"

DEMO_NAMESPACE = "carbon-demo"
DEMO_JOB = "spark-like-pi"

TAINT_KEY = "carbon-kube.io/high-intensity"
CLASS_LABEL = "carbon-kube.io/intensity-class"
ZONE_LABEL = "carbon-kube.io/grid-zone"

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}
LAB_LABELS = {"app.kubernetes.io/part-of": "carbon-kube-lab"}


def namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {**LAB_LABELS, **RESTRICTED}},
    }


# --- the agent ------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str = ""


def agent_values(c: LabConfig, image: Image | None = None) -> dict[str, Any]:
    """Values for deploy/helm/carbon-kube. Only keys of its values.yaml (a test checks).

    `image`: the agent image to run; None keeps the chart's default (the release image).
    """
    values: dict[str, Any] = {
        "defaultZone": c.effective_default_zone,
        "threshold": c.threshold,
        "hysteresis": c.hysteresis,
        "taintEffect": c.taint_effect,
        "maxTaintedFraction": c.max_tainted_fraction,
        "pollInterval": c.poll_interval,
        "providers": {
            # The key arrives as a Secret synced by External Secrets: the chart mounts
            # it as a file; its value is never in the chart values or the template.
            "electricityMaps": {
                "existingSecret": KEY_K8S_SECRET,
                "existingSecretKey": KEY_K8S_SECRET_KEY,
            },
        },
        "metrics": {
            "podMonitor": {"enabled": c.enable_monitoring},
            # The lab installs the repository's rule file itself (deploy/rules/), once.
            "prometheusRule": {"enabled": False},
        },
    }
    if image is not None:
        values["image"] = {"repository": image.repository}
        if image.tag:
            values["image"]["tag"] = image.tag
    return values


# --- the API key: Secrets Manager -> External Secrets -> Kubernetes Secret -------------


def external_secrets_values() -> dict[str, Any]:
    """External Secrets Operator confined to the agent's namespace (Role, not ClusterRole).

    The operator itself has no AWS credentials: the SecretStore authenticates with a
    token of the key-reader service account, whose IRSA role can read one secret.
    """
    return {
        "installCRDs": True,
        "scopedNamespace": AGENT_NAMESPACE,
        "scopedRBAC": True,
    }


def key_sync(region: str, secret_name: str) -> list[dict[str, Any]]:
    store = {
        "apiVersion": "external-secrets.io/v1",
        "kind": "SecretStore",
        "metadata": {"name": SECRET_STORE, "namespace": AGENT_NAMESPACE, "labels": LAB_LABELS},
        "spec": {
            "provider": {
                "aws": {
                    "service": "SecretsManager",
                    "region": region,
                    "auth": {"jwt": {"serviceAccountRef": {"name": KEY_READER_SA}}},
                }
            }
        },
    }
    external = {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ExternalSecret",
        "metadata": {"name": KEY_K8S_SECRET, "namespace": AGENT_NAMESPACE, "labels": LAB_LABELS},
        "spec": {
            "refreshInterval": "15m",
            "secretStoreRef": {"kind": "SecretStore", "name": SECRET_STORE},
            "target": {"name": KEY_K8S_SECRET, "creationPolicy": "Owner"},
            "data": [
                {"secretKey": KEY_K8S_SECRET_KEY, "remoteRef": {"key": secret_name}},
            ],
        },
    }
    return [store, external]


# --- monitoring -----------------------------------------------------------------------


def monitoring_values() -> dict[str, Any]:
    return {
        "grafana": {
            # Empty: the Grafana chart generates a random password into its Secret
            # (kube-prometheus-stack's default would be a well-known one).
            "adminPassword": "",
            "sidecar": {
                "dashboards": {"enabled": True, "label": "grafana_dashboard", "labelValue": "1"}
            },
        },
        "prometheus": {
            "prometheusSpec": {
                # Pick up PodMonitors and PrometheusRules from every namespace, not only
                # the ones labelled with this release.
                "podMonitorSelectorNilUsesHelmValues": False,
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "retention": "7d",
            }
        },
    }


# --- the metrics record: Prometheus -> S3, hourly ------------------------------------

EXPORT_SA = "carbon-kube-metrics-exporter"
EXPORT_CRONJOB = "carbon-kube-metrics-export"
PROMETHEUS_URL = f"http://{MONITORING_RELEASE}-prometheus.{MONITORING_NAMESPACE}.svc:9090"
# Every series the agents export; an hour and five minutes per run, so runs overlap.
EXPORT_QUERY = '{__name__=~"carbon_kube_.+"}'
EXPORT_WINDOW_SECONDS = 3900
EXPORT_STEP_SECONDS = 30
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.31.23"
PYTHON_IMAGE = "public.ecr.aws/docker/library/python:3.13-alpine"

# Standard library only: the query container is a stock Python image.
_EXPORT_QUERY_SCRIPT = """
import json, os, time, urllib.parse, urllib.request
end = int(time.time())
params = urllib.parse.urlencode({
    "query": os.environ["QUERY"],
    "start": end - int(os.environ["WINDOW_SECONDS"]),
    "end": end,
    "step": os.environ["STEP_SECONDS"],
})
with urllib.request.urlopen(os.environ["PROMETHEUS_URL"] + "/api/v1/query_range?" + params, timeout=60) as r:
    body = json.load(r)
if body.get("status") != "success":
    raise SystemExit("prometheus: " + json.dumps(body)[:500])
out = os.environ.get("EXPORT_DIR", "/export")
with open(out + "/metrics.json", "w") as f:
    json.dump(body["data"], f)
with open(out + "/key", "w") as f:
    f.write(time.strftime(os.environ["CLUSTER"] + "/%Y/%m/%d/%H%M%SZ.json", time.gmtime(end)))
print(len(body["data"]["result"]), "series")
"""


def metrics_export(cluster_name: str, bucket_name: str) -> list[dict[str, Any]]:
    """An hourly CronJob that copies carbon-kube's Prometheus series into the bucket.

    Hourly, not only at teardown: scaled to zero or destroyed, the cluster can no longer
    export, so the record must already be in S3. `kubectl create job --from=cronjob/...`
    runs it once more by hand before `cdk destroy`. The upload uses the IRSA role of
    EXPORT_SA, which may only put objects into that bucket.
    """
    labels = {**LAB_LABELS, "app.kubernetes.io/name": EXPORT_CRONJOB}
    restricted = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = [{"name": "export", "mountPath": "/export"}, {"name": "tmp", "mountPath": "/tmp"}]
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": EXPORT_CRONJOB, "namespace": MONITORING_NAMESPACE, "labels": labels},
        "spec": {
            "schedule": "5 * * * *",
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 3,
                    "ttlSecondsAfterFinished": 86400,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": EXPORT_SA,
                            "restartPolicy": "OnFailure",
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 65532,
                                "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumes": [
                                {"name": "export", "emptyDir": {}},
                                {"name": "tmp", "emptyDir": {}},
                            ],
                            "initContainers": [
                                {
                                    "name": "query",
                                    "image": PYTHON_IMAGE,
                                    "command": ["python3", "-c", _EXPORT_QUERY_SCRIPT],
                                    "env": [
                                        {"name": "PROMETHEUS_URL", "value": PROMETHEUS_URL},
                                        {"name": "QUERY", "value": EXPORT_QUERY},
                                        {"name": "WINDOW_SECONDS", "value": str(EXPORT_WINDOW_SECONDS)},
                                        {"name": "STEP_SECONDS", "value": str(EXPORT_STEP_SECONDS)},
                                        {"name": "CLUSTER", "value": cluster_name},
                                    ],
                                    "volumeMounts": mounts,
                                    "securityContext": restricted,
                                }
                            ],
                            "containers": [
                                {
                                    "name": "upload",
                                    "image": AWS_CLI_IMAGE,
                                    "command": [
                                        "sh",
                                        "-ec",
                                        'aws s3 cp --only-show-errors /export/metrics.json "s3://$BUCKET/$(cat /export/key)"',
                                    ],
                                    "env": [
                                        {"name": "BUCKET", "value": bucket_name},
                                        # The CLI writes its cache under HOME.
                                        {"name": "HOME", "value": "/tmp"},
                                    ],
                                    "volumeMounts": mounts,
                                    "securityContext": restricted,
                                }
                            ],
                        },
                    },
                }
            },
        },
    }
    return [cron]


@dataclass(frozen=True)
class Loaded:
    """Objects read from the repository, or why there are none."""

    objects: list[dict[str, Any]]
    skipped: str = ""


def dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "dashboard"


def dashboards(directory: Path) -> Loaded:
    """One ConfigMap per grafana/*.json, labelled for the Grafana sidecar."""
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        return Loaded(
            [],
            f"no Grafana dashboards at {directory}/*.json: Grafana is installed without "
            "carbon-kube dashboards (set context dashboardsDir to load them from elsewhere)",
        )
    maps = []
    for f in files:
        try:
            board = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"dashboard {f}: not valid JSON ({e})") from None
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": dns_name(f"carbon-kube-dashboard-{f.stem}"),
                    "namespace": MONITORING_NAMESPACE,
                    "labels": {**LAB_LABELS, "grafana_dashboard": "1"},
                },
                # Compact JSON: the manifest travels inside the CloudFormation template.
                "data": {f.name: json.dumps(board, separators=(",", ":"), sort_keys=True)},
            }
        )
    return Loaded(maps)


def prometheus_rule(rules_file: Path) -> Loaded:
    """The repository's rule file as a PrometheusRule.

    Accepts a Prometheus rule file (`groups:`) or a PrometheusRule object.
    """
    if not rules_file.is_file():
        return Loaded(
            [],
            f"no alert rules at {rules_file}: Prometheus runs without carbon-kube alerts "
            "(set context rulesFile to load them from elsewhere)",
        )
    try:
        doc = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"rules file {rules_file}: not valid YAML ({e})") from None
    if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
        doc = doc.get("spec")
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise ConfigError(
            f"rules file {rules_file}: expected a Prometheus rule file with a top-level "
            "'groups:' list (or a PrometheusRule)"
        )
    if not doc["groups"]:
        return Loaded([], f"rules file {rules_file} has no rule groups: nothing to install")
    return Loaded(
        [
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": {
                    "name": "carbon-kube",
                    "namespace": MONITORING_NAMESPACE,
                    "labels": {**LAB_LABELS, "release": MONITORING_RELEASE},
                },
                "spec": {"groups": doc["groups"]},
            }
        ]
    )


# --- the sample batch job -------------------------------------------------------------

# A map step in the style of SparkPi: each indexed task samples its own slice of points
# and prints its partial estimate. Pure standard library, so a stock Python image does.
_PI_TASK = """\
import os, random
index = int(os.environ["JOB_COMPLETION_INDEX"])
samples = int(os.environ["SAMPLES_PER_TASK"])
rng = random.Random(index)
inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
print(f"task {index} on {os.environ.get('NODE_NAME')}: pi ~ {4.0 * inside / samples:.6f}")
"""


def sample_job() -> list[dict[str, Any]]:
    """A Spark-like batch Job that opts into carbon-aware placement.

    It does not tolerate the carbon taint, so the scheduler keeps its pods off tainted
    (dirty) nodes while there is room elsewhere, and it prefers nodes the agent labels
    green (then amber).
    """
    labels = {**LAB_LABELS, "app.kubernetes.io/name": DEMO_JOB}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": DEMO_JOB, "namespace": DEMO_NAMESPACE, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": 8,
            "parallelism": 4,
            "backoffLimit": 4,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "affinity": {
                        "nodeAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "preference": {
                                        "matchExpressions": [
                                            {"key": CLASS_LABEL, "operator": "In", "values": ["green"]}
                                        ]
                                    },
                                },
                                {
                                    "weight": 30,
                                    "preference": {
                                        "matchExpressions": [
                                            {"key": CLASS_LABEL, "operator": "In", "values": ["amber"]}
                                        ]
                                    },
                                },
                            ]
                        }
                    },
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65534,
                        "runAsGroup": 65534,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "task",
                            "image": "public.ecr.aws/docker/library/python:3.13-alpine",
                            "command": ["python3", "-c", _PI_TASK],
                            "env": [
                                {"name": "SAMPLES_PER_TASK", "value": "20000000"},
                                {
                                    "name": "NODE_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                            ],
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "64Mi"},
                                "limits": {"cpu": "1", "memory": "128Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }
    return [namespace(DEMO_NAMESPACE), job]
