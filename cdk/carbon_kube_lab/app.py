"""Builds the CDK app from context: the primary stack and, optionally, a secondary one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import aws_cdk as cdk

from . import config as lab_config
from .stack import CarbonKubeLabStack

CDK_DIR = Path(__file__).resolve().parents[1]
PRIMARY_STACK = "CarbonKubeLab"
SECONDARY_STACK = "CarbonKubeLabSecondary"


def load_cdk_json_context(path: Path = CDK_DIR / "cdk.json") -> dict[str, Any]:
    """The `context` of cdk.json: the lab's defaults and the CDK feature flags."""
    return dict(json.loads(path.read_text(encoding="utf-8")).get("context", {}))


def build_app(
    context: Mapping[str, Any] | None = None, outdir: str | None = None
) -> tuple[cdk.App, list[CarbonKubeLabStack]]:
    """The app with its stacks. `context` are defaults; the CDK CLI's context wins."""
    app = cdk.App(context=dict(context or {}), outdir=outdir)
    cfg = lab_config.from_context(app.node.try_get_context)

    # The account stays unresolved (the one `cdk deploy` uses), so synthesis never looks
    # anything up in AWS: without explicit availabilityZones the VPC takes the region's
    # first two AZs through Fn::GetAZs.
    primary = CarbonKubeLabStack(
        app,
        PRIMARY_STACK,
        config=cfg,
        env=cdk.Environment(region=cfg.region),
        description=f"carbon-kube lab: EKS {cfg.kubernetes_version} with the carbon-aware node agent ({cfg.region})",
    )
    stacks = [primary]
    if cfg.secondary_region:
        secondary = CarbonKubeLabStack(
            app,
            SECONDARY_STACK,
            config=cfg.for_secondary(),
            env=cdk.Environment(region=cfg.secondary_region),
            description=(
                f"carbon-kube lab, secondary region {cfg.secondary_region} "
                f"(primary {cfg.region})"
            ),
        )
        # The primary creates the key secret and its replica in this region.
        secondary.add_stack_dependency(primary)
        stacks.append(secondary)
    for stack in stacks:
        cdk.Tags.of(stack).add("project", "carbon-kube-lab")
    return app, stacks
