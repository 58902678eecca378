"""Least privilege for every IAM role and policy the stacks create."""

from __future__ import annotations

import json

import pytest

from conftest import as_list, policy_documents

# AWS managed policies the stack may attach, and why.
ALLOWED_MANAGED = {
    "AmazonEKSClusterPolicy",  # the EKS service role of the control plane
    "AmazonEKSWorkerNodePolicy",  # node role
    "AmazonEKS_CNI_Policy",  # node role (VPC CNI)
    "AmazonEC2ContainerRegistryReadOnly",  # node role, kubectl handler (OCI charts)
    "AmazonElasticContainerRegistryPublicReadOnly",  # kubectl handler, where ECR Public exists
    "AWSLambdaBasicExecutionRole",  # custom-resource Lambdas: their own logs
    "AWSLambdaVPCAccessExecutionRole",  # the kubectl handler runs in the VPC
}

VARIANTS = {
    "default": {},
    "secondary": {"secondaryRegion": "eu-north-1"},
    "zones-admin-existing": {
        "zones": "FR,DE",
        "adminPrincipalArn": "arn:aws:iam::123456789012:role/Admin",
        "keySecretExisting": "true",
    },
    "no-monitoring": {"enableMonitoring": "false", "sampleJob": "false"},
    "cost-guard": {"scaleToZeroAfterHours": "8", "zones": "FR,DE"},
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def templates(request, synth):
    s = synth(**VARIANTS[request.param])
    return [s.json(name) for name in s.templates]


def _is_wildcard_action(action: str) -> bool:
    return action == "*" or action.endswith(":*")


def test_no_wildcard_action_on_wildcard_resource(templates):
    for t in templates:
        for owner, doc in policy_documents(t):
            for st in doc["Statement"]:
                if st["Effect"] != "Allow":
                    continue
                actions = as_list(st.get("Action", []))
                resources = as_list(st.get("Resource", []))
                assert not (any(map(_is_wildcard_action, actions)) and "*" in resources), (owner, st)


def test_every_statement_names_its_resources(templates):
    """Stronger than the rule above: no statement applies to Resource "*" at all, and no
    NotAction/NotResource inversions."""
    for t in templates:
        for owner, doc in policy_documents(t):
            for st in doc["Statement"]:
                assert "NotAction" not in st and "NotResource" not in st, (owner, st)
                assert "*" not in as_list(st.get("Resource", [])), (owner, st)
                assert not any(a == "*" for a in as_list(st.get("Action", []))), (owner, st)


def test_only_known_aws_managed_policies(templates):
    for t in templates:
        assert not [k for k, r in t["Resources"].items() if r["Type"] == "AWS::IAM::ManagedPolicy"]
        for logical_id, res in t["Resources"].items():
            if res["Type"] != "AWS::IAM::Role":
                continue
            for arn in res["Properties"].get("ManagedPolicyArns", []):
                # A plain ARN, or Fn::If(condition, ARN, AWS::NoValue) for a conditional one.
                text = json.dumps(arn)
                names = {name for name in ALLOWED_MANAGED if f':iam::aws:policy/{name}"' in text
                         or f':iam::aws:policy/service-role/{name}"' in text}
                assert len(names) == 1, f"{logical_id} attaches an unexpected managed policy: {text}"


def test_no_role_trusts_everyone(templates):
    for t in templates:
        for logical_id, res in t["Resources"].items():
            if res["Type"] != "AWS::IAM::Role":
                continue
            for st in res["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
                principal = st.get("Principal")
                assert principal != "*" and principal != {"AWS": "*"}, logical_id
                if isinstance(principal, dict) and "Federated" in principal:
                    # Web identity must be pinned to a service account.
                    assert st.get("Condition"), logical_id


def test_lab_admin_role_has_no_iam_permissions_only_cluster_access(default):
    t = default.json()
    roles = {k: v for k, v in t["Resources"].items() if k.startswith("LabAdminRole") and v["Type"] == "AWS::IAM::Role"}
    assert len(roles) == 1
    role_id, role = next(iter(roles.items()))
    assert not role["Properties"].get("ManagedPolicyArns") and not role["Properties"].get("Policies")
    assert not any(
        {"Ref": role_id} in r["Properties"].get("Roles", [])
        for r in t["Resources"].values() if r["Type"] == "AWS::IAM::Policy"
    )
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"AWS": {"Fn::Join": ["", ["arn:aws:iam::", {"Ref": "AWS::AccountId"}, ":root"]]}},
        }
    ]
    entries = [r["Properties"] for r in t["Resources"].values() if r["Type"] == "AWS::EKS::AccessEntry"]
    admin = [e for e in entries if e["PrincipalArn"] == {"Fn::GetAtt": [role_id, "Arn"]}]
    assert len(admin) == 1
    assert [p["PolicyArn"] for p in admin[0]["AccessPolicies"]] == [
        {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"]]}
    ]
    assert [p["AccessScope"] for p in admin[0]["AccessPolicies"]] == [{"Type": "cluster"}]


def test_admin_principal_replaces_the_lab_admin_role(synth):
    s = synth(adminPrincipalArn="arn:aws:iam::123456789012:role/Admin")
    t = s.json()
    assert not [k for k in t["Resources"] if k.startswith("LabAdminRole")]
    entries = [r["Properties"] for r in t["Resources"].values() if r["Type"] == "AWS::EKS::AccessEntry"]
    assert any(e["PrincipalArn"] == "arn:aws:iam::123456789012:role/Admin" for e in entries)
    command = t["Outputs"]["KubeconfigCommand"]["Value"]
    assert command == "aws eks update-kubeconfig --region eu-west-1 --name carbon-kube-lab"
