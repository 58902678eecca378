"""The lab's settings, read from CDK context (cdk.json, `-c key=value`) and checked.

Every value can come from cdk.json (typed JSON) or from the command line (always a
string), so each reader accepts both. A bad value stops synthesis with the context key
and the reason, before any construct is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

# The repository root: cdk/ sits directly below it.
REPO_ROOT = Path(__file__).resolve().parents[2]

# Kubernetes minors the lab can run. The chart needs >= 1.30 (Chart.yaml kubeVersion);
# the kubectl handler carries kubectl 1.33, which supports the API server one minor
# either side, so 1.32-1.34.
SUPPORTED_KUBERNETES_VERSIONS = ("1.32", "1.33", "1.34")
TAINT_EFFECTS = ("PreferNoSchedule", "NoSchedule")
# Same grammar as the chart's values.schema.json (defaultZone) and the agent's zone ids.
ZONE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DURATION_RE = re.compile(r"^(\d+(\.\d+)?|\.\d+)(ms|s|m|h)?$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
# A month: beyond that a "lab" is a cluster, and the guard is no guard.
MAX_SCALE_TO_ZERO_HOURS = 720
ARN_PRINCIPAL_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:(role|user|assumed-role)/.+$")


class ConfigError(ValueError):
    """A context value that the lab cannot use."""


@dataclass(frozen=True)
class LabConfig:
    region: str = "eu-west-1"
    # Explicit availability zones; empty means the first two of the region (Fn::GetAZs).
    availability_zones: tuple[str, ...] = ()
    cluster_name: str = "carbon-kube-lab"
    kubernetes_version: str = "1.33"
    vpc_cidr: str = "10.0.0.0/16"
    nat_gateways: int = 1
    instance_type: str = "t3.large"
    node_min_size: int = 2
    node_desired_size: int = 2
    node_max_size: int = 4
    # Grid zones to simulate: one managed node group per zone, labelled
    # carbon-kube.io/grid-zone. Empty: one node group, zone from the AWS region.
    zones: tuple[str, ...] = ()
    default_zone: str = ""
    threshold: float = 300
    hysteresis: float = 20
    taint_effect: str = "PreferNoSchedule"
    max_tainted_fraction: float = 0.5
    poll_interval: str = "5m"
    # Empty: the agent image is built from the repository's Dockerfile at deploy time
    # (an ECR container asset). Set: that image is used instead (e.g. a release).
    image_repository: str = ""
    image_tag: str = ""
    key_secret_name: str = "carbon-kube/electricity-maps-token"
    # True: the Secrets Manager secret already exists (the stack only reads it).
    key_secret_existing: bool = False
    enable_monitoring: bool = True
    sample_job: bool = True
    secondary_region: str = ""
    secondary_vpc_cidr: str = "10.1.0.0/16"
    admin_principal_arn: str = ""
    # Cost guard: scale every node group to zero this many hours after deploy (and
    # every as many hours after that); 0: never.
    scale_to_zero_after_hours: int = 0
    # With monitoring: an S3 bucket (kept after `cdk destroy`) and an hourly export of
    # carbon-kube's Prometheus series into it.
    metrics_export: bool = True
    chart_dir: Path = REPO_ROOT / "deploy" / "helm" / "carbon-kube"
    dashboards_dir: Path = REPO_ROOT / "grafana"
    rules_file: Path = REPO_ROOT / "deploy" / "rules" / "carbon-kube.rules.yaml"
    # Set for the secondary-region stack: it reads the primary's replicated secret.
    is_secondary: bool = False

    @property
    def effective_default_zone(self) -> str:
        """The chart's defaultZone: the explicit one, else the first simulated zone."""
        return self.default_zone or (self.zones[0] if self.zones else "")

    def for_secondary(self) -> "LabConfig":
        """The same lab in the secondary region, reading the replicated key secret."""
        return replace(
            self,
            region=self.secondary_region,
            availability_zones=(),
            cluster_name=f"{self.cluster_name}-secondary",
            vpc_cidr=self.secondary_vpc_cidr,
            secondary_region="",
            is_secondary=True,
        )


# --- readers: each takes the raw context value (str from -c, typed from cdk.json) ----


def _str(key: str, raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, (dict, list)):
        raise ConfigError(f"context {key}: expected a string, got {type(raw).__name__}")
    return str(raw).strip()


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = _str(key, raw).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"context {key}: {raw!r} is not true or false")


def _number(key: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"context {key}: {raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"context {key}: {raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"context {key}: {raw!r} is not a finite number")
    return int(value) if value.is_integer() else value


def _int(key: str, raw: Any) -> int:
    value = _number(key, raw)
    if not float(value).is_integer():
        raise ConfigError(f"context {key}: {raw!r} is not a whole number")
    return int(value)


def _list(key: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else _str(key, raw).split(",")
    return tuple(s for s in (_str(key, i) for i in items) if s)


def _path(key: str, raw: Any) -> Path:
    path = Path(_str(key, raw)).expanduser()
    # Relative paths are relative to the repository root, wherever synth runs from.
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


# context key -> (dataclass field, reader)
_READERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "region": ("region", _str),
    "availabilityZones": ("availability_zones", _list),
    "clusterName": ("cluster_name", _str),
    "kubernetesVersion": ("kubernetes_version", _str),
    "vpcCidr": ("vpc_cidr", _str),
    "natGateways": ("nat_gateways", _int),
    "instanceType": ("instance_type", _str),
    "nodeMinSize": ("node_min_size", _int),
    "nodeDesiredSize": ("node_desired_size", _int),
    "nodeMaxSize": ("node_max_size", _int),
    "zones": ("zones", _list),
    "defaultZone": ("default_zone", _str),
    "threshold": ("threshold", _number),
    "hysteresis": ("hysteresis", _number),
    "taintEffect": ("taint_effect", _str),
    "maxTaintedFraction": ("max_tainted_fraction", _number),
    "pollInterval": ("poll_interval", _str),
    "imageRepository": ("image_repository", _str),
    "imageTag": ("image_tag", _str),
    "keySecretName": ("key_secret_name", _str),
    "keySecretExisting": ("key_secret_existing", _bool),
    "enableMonitoring": ("enable_monitoring", _bool),
    "sampleJob": ("sample_job", _bool),
    "secondaryRegion": ("secondary_region", _str),
    "secondaryVpcCidr": ("secondary_vpc_cidr", _str),
    "adminPrincipalArn": ("admin_principal_arn", _str),
    "scaleToZeroAfterHours": ("scale_to_zero_after_hours", _int),
    "metricsExport": ("metrics_export", _bool),
    "chartDir": ("chart_dir", _path),
    "dashboardsDir": ("dashboards_dir", _path),
    "rulesFile": ("rules_file", _path),
}

CONTEXT_KEYS = tuple(_READERS)


def from_context(get: Callable[[str], Any]) -> LabConfig:
    """Builds the config from a context getter (e.g. `app.node.try_get_context`)."""
    values: dict[str, Any] = {}
    for key, (attr, reader) in _READERS.items():
        raw = get(key)
        if raw is None:
            continue
        values[attr] = reader(key, raw)
    config = LabConfig(**values)
    validate(config)
    return config


def validate(c: LabConfig) -> None:
    def fail(key: str, why: str) -> None:
        raise ConfigError(f"context {key}: {why}")

    if not REGION_RE.match(c.region):
        fail("region", f"{c.region!r} is not an AWS region name (e.g. eu-west-1)")
    if c.availability_zones:
        if len(c.availability_zones) < 2:
            fail("availabilityZones", "give at least two zones, or none for the region's first two")
        for az in c.availability_zones:
            if not az.startswith(c.region):
                fail("availabilityZones", f"{az!r} is not in region {c.region}")
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]{0,99}$", c.cluster_name):
        fail("clusterName", f"{c.cluster_name!r}: letters, digits and '-', starting with a letter")
    if c.kubernetes_version not in SUPPORTED_KUBERNETES_VERSIONS:
        fail(
            "kubernetesVersion",
            f"{c.kubernetes_version!r} is not one of {', '.join(SUPPORTED_KUBERNETES_VERSIONS)} "
            "(chart needs >= 1.30; the kubectl 1.33 handler supports 1.32-1.34)",
        )
    if not 1 <= c.nat_gateways <= 3:
        # The nodes and the kubectl handler pull images and charts through NAT.
        fail("natGateways", f"{c.nat_gateways} must be between 1 and 3")
    if c.node_min_size < 1:
        fail("nodeMinSize", f"{c.node_min_size} must be at least 1")
    if not c.node_min_size <= c.node_desired_size <= c.node_max_size:
        fail(
            "nodeDesiredSize",
            f"need nodeMinSize <= nodeDesiredSize <= nodeMaxSize, got "
            f"{c.node_min_size} <= {c.node_desired_size} <= {c.node_max_size}",
        )
    for zone in c.zones:
        if not ZONE_RE.match(zone):
            fail("zones", f"{zone!r} is not a grid zone id (e.g. DE, FR, US-CAL-CISO)")
    if len(set(z.upper() for z in c.zones)) != len(c.zones):
        fail("zones", f"zones repeat: {', '.join(c.zones)}")
    if c.default_zone and not ZONE_RE.match(c.default_zone):
        fail("defaultZone", f"{c.default_zone!r} is not a grid zone id (e.g. DE, FR, US-CAL-CISO)")
    if not c.threshold > 0:
        fail("threshold", f"{c.threshold} must be above 0 gCO2/kWh")
    if not 0 <= c.hysteresis < c.threshold:
        fail("hysteresis", f"{c.hysteresis} must be at least 0 and below threshold ({c.threshold})")
    if c.taint_effect not in TAINT_EFFECTS:
        fail("taintEffect", f"{c.taint_effect!r} is not one of {', '.join(TAINT_EFFECTS)}")
    if not 0 <= c.max_tainted_fraction <= 1:
        fail("maxTaintedFraction", f"{c.max_tainted_fraction} must be between 0 and 1")
    m = DURATION_RE.match(c.poll_interval)
    if not m or float(m.group(1)) == 0:
        fail("pollInterval", f"{c.poll_interval!r} is not a non-zero duration (e.g. 5m, 300s)")
    if bool(c.image_tag) and not c.image_repository:
        fail("imageTag", "set imageRepository too")
    if not SECRET_NAME_RE.match(c.key_secret_name):
        fail("keySecretName", f"{c.key_secret_name!r} is not a Secrets Manager secret name")
    if re.search(r"-[A-Za-z0-9]{6}$", c.key_secret_name):
        # Secrets Manager appends '-' and 6 characters to every ARN; a name ending like
        # that makes name-based ARN patterns ambiguous.
        fail("keySecretName", f"{c.key_secret_name!r} must not end in '-' and six characters")
    if c.secondary_region:
        if not REGION_RE.match(c.secondary_region):
            fail("secondaryRegion", f"{c.secondary_region!r} is not an AWS region name")
        if c.secondary_region == c.region:
            fail("secondaryRegion", f"must differ from region ({c.region})")
        if c.secondary_vpc_cidr == c.vpc_cidr:
            fail("secondaryVpcCidr", "must differ from vpcCidr so the two VPCs can be peered")
    if c.admin_principal_arn and not ARN_PRINCIPAL_RE.match(c.admin_principal_arn):
        fail("adminPrincipalArn", f"{c.admin_principal_arn!r} is not an IAM role or user ARN")
    if not 0 <= c.scale_to_zero_after_hours <= MAX_SCALE_TO_ZERO_HOURS:
        fail(
            "scaleToZeroAfterHours",
            f"{c.scale_to_zero_after_hours} must be between 0 (never) and {MAX_SCALE_TO_ZERO_HOURS} hours",
        )
    if not (c.chart_dir / "Chart.yaml").is_file():
        fail("chartDir", f"no Helm chart at {c.chart_dir} (Chart.yaml missing)")
