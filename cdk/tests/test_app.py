"""`python app.py` synthesizes offline, like `cdk synth`, and fails clearly on bad context."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CDK_DIR, render_tokens


def _run(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDK_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(CDK_DIR / "app.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_app_synthesizes_offline_into_cdk_out(tmp_path):
    result = _run(["-c", "threshold=280", "-c", "secondaryRegion=eu-north-1"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "synthesized CarbonKubeLab, CarbonKubeLabSecondary into" in result.stderr
    out = tmp_path / "cdk.out"
    manifest = json.loads((out / "manifest.json").read_text())
    stacks = {k: v for k, v in manifest["artifacts"].items() if v["type"] == "aws:cloudformation:stack"}
    assert set(stacks) == {"CarbonKubeLab", "CarbonKubeLabSecondary"}
    # No AWS look-ups were needed: nothing is left for the CLI to fetch.
    assert not manifest.get("missing")
    template = json.loads((out / "CarbonKubeLab.template.json").read_text())
    agent = next(r for k, r in template["Resources"].items() if k.startswith("ClusterchartAgent"))
    assert json.loads(render_tokens(agent["Properties"]["Values"]))["threshold"] == 280


def test_app_under_the_cdk_cli_protocol(tmp_path):
    """The CLI passes context in CDK_CONTEXT_JSON and the output dir in CDK_OUTDIR."""
    ctx = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    ctx["taintEffect"] = "NoSchedule"
    out = tmp_path / "cli.out"
    result = _run([], tmp_path, {"CDK_OUTDIR": str(out), "CDK_CONTEXT_JSON": json.dumps(ctx)})
    assert result.returncode == 0, result.stderr
    template = json.loads((out / "CarbonKubeLab.template.json").read_text())
    agent = next(r for k, r in template["Resources"].items() if k.startswith("ClusterchartAgent"))
    assert json.loads(render_tokens(agent["Properties"]["Values"]))["taintEffect"] == "NoSchedule"


def test_bad_context_exits_non_zero_with_the_reason(tmp_path):
    result = _run(["-c", "taintEffect=NoExecute"], tmp_path)
    assert result.returncode == 1
    assert "context taintEffect: 'NoExecute' is not one of PreferNoSchedule, NoSchedule" in result.stderr
    assert not (tmp_path / "cdk.out" / "manifest.json").exists()


def test_requirements_are_pinned():
    lines = [
        line.strip() for line in (CDK_DIR / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines and all("==" in line for line in lines), lines
