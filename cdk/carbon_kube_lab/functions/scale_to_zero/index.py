"""Cost guard of the lab: scales the cluster's managed node groups to zero nodes.

Run by an EventBridge schedule N hours after deploy (and every N hours after). Its
role may describe and update only the lab's node groups. Scaling back up is one
`aws eks update-nodegroup-config` (the stack's ScaleUpCommand output).
"""

from __future__ import annotations

import json
import os
from typing import Any


def scale_to_zero(eks: Any, cluster: str, nodegroups: list[str]) -> list[dict[str, Any]]:
    """Sets min and desired size of each node group to 0; max stays (it must be >= 1)."""
    changes = []
    for name in nodegroups:
        scaling = eks.describe_nodegroup(clusterName=cluster, nodegroupName=name)["nodegroup"]["scalingConfig"]
        if scaling.get("minSize") == 0 and scaling.get("desiredSize") == 0:
            changes.append({"nodegroup": name, "action": "already-zero"})
            continue
        eks.update_nodegroup_config(
            clusterName=cluster,
            nodegroupName=name,
            scalingConfig={"minSize": 0, "desiredSize": 0, "maxSize": scaling["maxSize"]},
        )
        changes.append({"nodegroup": name, "action": "scaled-to-zero", "was": scaling})
    return changes


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    import boto3  # in the Lambda runtime

    cluster = os.environ["CLUSTER_NAME"]
    nodegroups = [n for n in os.environ["NODEGROUPS"].split(",") if n]
    changes = scale_to_zero(boto3.client("eks"), cluster, nodegroups)
    print(json.dumps({"cluster": cluster, "changes": changes}))
    return {"cluster": cluster, "changes": changes}
