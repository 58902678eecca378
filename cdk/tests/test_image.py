"""The agent image: built from the repository's Dockerfile as an ECR container asset
(for the nodes' architecture) and passed to the chart, unless an image is given."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from conftest import CDK_DIR, helm_charts

REPO_ROOT = CDK_DIR.parent


def _docker_images(s, name="CarbonKubeLab"):
    assets = json.loads((s.outdir / f"{name}.assets.json").read_text())
    return assets.get("dockerImages", {})


def _raw_values(s, name="CarbonKubeLab"):
    """The agent chart's Values as CloudFormation has them (tokens unresolved)."""
    res = next(
        r for r in s.json(name)["Resources"].values()
        if r["Type"] == "Custom::AWSCDK-EKS-HelmChart" and r["Properties"]["Release"] == "carbon-kube"
    )
    return res["Properties"]["Values"]


def test_default_builds_the_agent_image_from_the_dockerfile(default):
    images = _docker_images(default)
    assert len(images) == 1, images
    (asset_hash, image), = images.items()
    source = image["source"]
    assert source["platform"] == "linux/amd64"  # t3.large
    staged = default.outdir / source["directory"]
    # The build context is the repository: its Dockerfile and what cargo needs, and
    # nothing that .dockerignore keeps out (no target/, .git/, the CDK venv or output).
    assert source.get("dockerFile", "Dockerfile") == "Dockerfile"
    assert (staged / "Dockerfile").read_text() == (REPO_ROOT / "Dockerfile").read_text()
    for needed in ("Cargo.toml", "Cargo.lock", "src/main.rs", "deploy/build-static.sh", "deploy/cross-deps.sh"):
        assert (staged / needed).is_file(), needed
    for ignored in ("target", ".git", "cdk/.venv", "cdk/cdk.out", "deploy/helm"):
        assert not (staged / ignored).exists(), ignored

    # Pushed to the bootstrap ECR repository with the asset's hash as its tag ...
    (dest,) = image["destinations"].values()
    assert "container-assets" in dest["repositoryName"]
    assert dest["imageTag"] == asset_hash
    # ... and that is the image the chart runs.
    values = helm_charts(default)["carbon-kube"]["Values"]
    assert values["image"]["tag"] == asset_hash
    raw = json.dumps(_raw_values(default))
    assert ".dkr.ecr." in raw and "container-assets" in raw, raw[:2000]


def test_graviton_nodes_get_an_arm64_image(synth):
    (image,) = _docker_images(synth(instanceType="m7g.large")).values()
    assert image["source"]["platform"] == "linux/arm64"


def test_a_given_image_is_used_instead_of_building(synth):
    s = synth(imageRepository="ghcr.io/carbon-kube/carbon-kube", imageTag="0.1.0")
    assert _docker_images(s) == {}
    values = helm_charts(s)["carbon-kube"]["Values"]
    assert values["image"] == {"repository": "ghcr.io/carbon-kube/carbon-kube", "tag": "0.1.0"}


def test_each_region_builds_into_its_own_registry(synth):
    s = synth(secondaryRegion="eu-north-1")
    for name in ("CarbonKubeLab", "CarbonKubeLabSecondary"):
        (image,) = _docker_images(s, name).values()
        (dest,) = image["destinations"].values()
        assert dest["region"] == s.stacks[name].region


def test_synth_never_runs_docker(tmp_path):
    """The image is built by `cdk deploy`, not by synthesis: with a `docker` that records
    every call and fails, `python app.py` still synthesizes and docker was never run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    fake = bin_dir / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDK_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["CDK_DOCKER"] = str(fake)
    result = subprocess.run(
        [sys.executable, str(CDK_DIR / "app.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), calls.read_text()
    assets = json.loads((tmp_path / "cdk.out" / "CarbonKubeLab.assets.json").read_text())
    assert len(assets["dockerImages"]) == 1
