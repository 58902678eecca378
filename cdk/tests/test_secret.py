"""The API key: Secrets Manager -> External Secrets (IRSA, one secret) -> Kubernetes Secret."""

from __future__ import annotations

import json

from conftest import all_manifests, as_list, helm_charts, manifest_docs, policy_documents

READ_ACTIONS = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}


def _walk(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, path + (i,))


def _key_reader_role(s, name="CarbonKubeLab"):
    roles = {k: v for k, v in s.resources("AWS::IAM::Role", name).items() if k.startswith("ClusterKeyReaderRole")}
    assert len(roles) == 1, roles
    return next(iter(roles.items()))


def test_secret_is_generated_never_given(default):
    secrets = default.resources("AWS::SecretsManager::Secret")
    assert len(secrets) == 1
    props = next(iter(secrets.values()))["Properties"]
    assert props["Name"] == "carbon-kube/electricity-maps-token"
    assert "GenerateSecretString" in props
    assert "SecretString" not in props


def test_no_secret_value_anywhere_in_the_template(default):
    template = default.json()
    text = json.dumps(template)
    # No dynamic reference either: CloudFormation would resolve it into the custom
    # resource's properties (and the kubectl Lambda's event).
    assert "{{resolve:secretsmanager" not in text
    assert "resolve:ssm-secure" not in text
    for path, _ in _walk(template):
        assert not (path and path[-1] in ("SecretString", "SecretStringValue")), path
    # Kubernetes: no Secret objects, no inline token in any chart's values.
    for logical_id, doc in all_manifests(default):
        assert doc["kind"] != "Secret", logical_id
    for release, chart in helm_charts(default).items():
        em = chart["Values"].get("providers", {}).get("electricityMaps", {})
        assert not em.get("token"), release
        wt = chart["Values"].get("providers", {}).get("watttime", {})
        assert not wt.get("password"), release


def test_irsa_role_trusts_only_the_key_reader_service_account(default):
    logical_id, role = _key_reader_role(default)
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert len(trust) == 1
    assert trust[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust[0]["Principal"] == {"Federated": {"Ref": next(iter(default.resources("AWS::IAM::OIDCProvider")))}}
    # The condition keys need the issuer URL, so CDK computes them in a CfnJson.
    cond_ref = trust[0]["Condition"]["StringEquals"]["Fn::GetAtt"][0]
    cond = json.dumps(default.json()["Resources"][cond_ref]["Properties"]["Value"])
    assert 'sub\\":\\"system:serviceaccount:carbon-kube:carbon-kube-key-reader\\"' in cond
    assert 'aud\\":\\"sts.amazonaws.com\\"' in cond


def test_irsa_role_can_read_that_one_secret_and_nothing_else(default):
    role_id, role = _key_reader_role(default)
    secret_id = next(iter(default.resources("AWS::SecretsManager::Secret")))
    assert not role["Properties"].get("ManagedPolicyArns")
    statements = [
        st for owner, doc in policy_documents(default.json())
        for st in doc["Statement"]
        if owner == role_id or _policy_attached_to(default, owner, role_id)
    ]
    assert statements, "the key reader has no permissions"
    for st in statements:
        assert st["Effect"] == "Allow"
        assert set(as_list(st["Action"])) <= READ_ACTIONS, st
        assert as_list(st["Resource"]) == [{"Ref": secret_id}], st


def _policy_attached_to(s, policy_id, role_id):
    res = s.json()["Resources"][policy_id]
    return res["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in res["Properties"].get("Roles", [])


def test_no_other_principal_gets_secretsmanager_rights(default):
    role_id, _ = _key_reader_role(default)
    for owner, doc in policy_documents(default.json()):
        if owner == role_id or _policy_attached_to(default, owner, role_id):
            continue
        for st in doc["Statement"]:
            assert not any(a.startswith("secretsmanager:") or a == "*" for a in as_list(st["Action"])), (owner, st)


def test_external_secret_wiring(default):
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in all_manifests(default)}
    sa = docs[("ServiceAccount", "carbon-kube-key-reader")]
    assert sa["metadata"]["namespace"] == "carbon-kube"
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    store = docs[("SecretStore", "aws-secrets-manager")]
    assert store["apiVersion"] == "external-secrets.io/v1"
    assert store["metadata"]["namespace"] == "carbon-kube"
    aws = store["spec"]["provider"]["aws"]
    assert aws == {
        "service": "SecretsManager",
        "region": "eu-west-1",
        "auth": {"jwt": {"serviceAccountRef": {"name": "carbon-kube-key-reader"}}},
    }
    ext = docs[("ExternalSecret", "carbon-kube-provider-keys")]
    assert ext["spec"]["target"]["name"] == "carbon-kube-provider-keys"
    assert ext["spec"]["data"] == [
        {"secretKey": "token", "remoteRef": {"key": "carbon-kube/electricity-maps-token"}}
    ]
    # The agent mounts exactly the Secret that External Secrets writes.
    em = helm_charts(default)["carbon-kube"]["Values"]["providers"]["electricityMaps"]
    assert em["existingSecret"] == ext["spec"]["target"]["name"]
    assert em["existingSecretKey"] == ext["spec"]["data"][0]["secretKey"]


def test_external_secrets_operator_is_confined_to_the_agent_namespace(default):
    values = helm_charts(default)["external-secrets"]["Values"]
    assert values["scopedNamespace"] == "carbon-kube"
    assert values["scopedRBAC"] is True
    # The operator has no AWS identity of its own: nothing annotates its service account.
    assert "serviceAccount" not in values


def test_existing_secret_is_read_by_name_not_created(synth):
    s = synth(keySecretExisting="true", keySecretName="team/em-token")
    assert not s.resources("AWS::SecretsManager::Secret")
    role_id, _ = _key_reader_role(s)
    resources = [
        st["Resource"] for owner, doc in policy_documents(s.json()) for st in doc["Statement"]
        if _policy_attached_to(s, owner, role_id)
    ]
    assert resources == [
        {"Fn::Join": ["", ["arn:aws:secretsmanager:eu-west-1:", {"Ref": "AWS::AccountId"}, ":secret:team/em-token-??????"]]}
    ]
    ext = [d for _, d in all_manifests(s) if d["kind"] == "ExternalSecret"][0]
    assert ext["spec"]["data"][0]["remoteRef"]["key"] == "team/em-token"
    assert "SetKeyCommand" in s.json()["Outputs"]


def test_key_sync_waits_for_operator_and_service_account(default):
    res = default.resources("Custom::AWSCDK-EKS-KubernetesResource")
    key_sync = next(v for k, v in res.items() if k.startswith("ClustermanifestKeySync"))
    kinds = [d["kind"] for d in manifest_docs(key_sync)]
    assert kinds == ["SecretStore", "ExternalSecret"]
    deps = key_sync["DependsOn"]
    assert helm_charts(default)["external-secrets"]["_logical_id"] in deps
    assert any(d.startswith("ClusterKeyReadermanifest") for d in deps)
    assert any(d.startswith("ClusterKeyReaderRoleDefaultPolicy") for d in deps)
