"""carbon-kube lab: an AWS CDK app that puts the agent on EKS in one command."""

from .app import PRIMARY_STACK, SECONDARY_STACK, build_app, load_cdk_json_context
from .config import ConfigError, LabConfig

__all__ = [
    "PRIMARY_STACK",
    "SECONDARY_STACK",
    "ConfigError",
    "LabConfig",
    "build_app",
    "load_cdk_json_context",
]
