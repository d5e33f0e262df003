"""The pulumi_policy wrapping (policy/pulumi_adapter.py), driven with real pulumi_policy argument objects."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_BOOLEAN_VALUE, UNKNOWN_STRING_VALUE, unknown_checking_proxy

import pulumi_adapter
from pulumi_adapter import build_policies, plain
from rules import RULES, UNKNOWN

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
BUCKET = "aws:s3/bucket:Bucket"
TAGS = {"Project": "gitea-stack", "Stack": "dev", "ManagedBy": "pulumi"}


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:dev::gitea-stack::{type_}::{name}"


def options() -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[])


def resource_args(type_: str, name: str, props: dict[str, Any],
                  config: dict[str, Any] | None = None) -> ResourceValidationArgs:
    # As the analyzer does: props wrapped in the proxy that raises on unknown values.
    return ResourceValidationArgs(type_, unknown_checking_proxy(props), urn(type_, name), name, options(),
                                  None, config)


def policy_resource(type_: str, name: str, props: dict[str, Any]) -> PolicyResource:
    return PolicyResource(type_, unknown_checking_proxy(props), urn(type_, name), name, options(), None, None, [], {})


def policy(name: str):
    return next(p for p in build_policies() if p.name == name)


def run(policy_, args) -> list[tuple[str, str | None]]:
    reported: list[tuple[str, str | None]] = []
    policy_.validate(args, lambda message, urn=None: reported.append((message, urn)))
    return reported


def test_one_mandatory_policy_per_rule_with_its_name_and_kind():
    policies = build_policies()
    assert [p.name for p in policies] == [rule.name for rule in RULES]
    for rule, built in zip(RULES, policies):
        assert built.enforcement_level == EnforcementLevel.MANDATORY
        assert built.description == rule.description
        expected = ResourceValidationPolicy if rule.scope == "resource" else StackValidationPolicy
        assert isinstance(built, expected)


def test_admin_ssh_policy_declares_its_config_schema():
    schema = policy("admin-ssh-not-world-open").config_schema
    assert schema.properties["gitSshPort"]["type"] == "integer"


def test_resource_policy_reports_a_violation():
    args = resource_args("aws:ebs/volume:Volume", "data", {"size": 50, "encrypted": False, "tags": TAGS})
    reported = run(policy("ebs-encrypted"), args)
    assert len(reported) == 1
    message, reported_urn = reported[0]
    assert "'data'" in message and "encrypted" in message
    assert reported_urn == urn("aws:ebs/volume:Volume", "data")


def test_resource_policy_ignores_unknown_values_behind_the_proxy():
    args = resource_args("aws:ebs/volume:Volume", "data", {"encrypted": UNKNOWN_BOOLEAN_VALUE, "tags": TAGS})
    assert run(policy("ebs-encrypted"), args) == []
    instance = resource_args("aws:ec2/instance:Instance", "host", {
        "metadataOptions": {"httpTokens": UNKNOWN_STRING_VALUE}, "rootBlockDevice": {"encrypted": True}})
    assert run(policy("instance-imdsv2"), instance) == []


def admin_ssh_args(port: int, config: dict[str, Any] | None) -> ResourceValidationArgs:
    return resource_args("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "in-ssh", {
        "securityGroupId": UNKNOWN_STRING_VALUE, "ipProtocol": "tcp", "fromPort": float(port),
        "toPort": float(port), "cidrIpv4": "0.0.0.0/0", "tags": TAGS}, config)


def test_git_ssh_port_config_flows_through_get_config():
    admin_ssh = policy("admin-ssh-not-world-open")
    assert len(run(admin_ssh, admin_ssh_args(2222, None))) == 1
    assert run(admin_ssh, admin_ssh_args(2222, {"gitSshPort": 2222})) == []
    assert len(run(admin_ssh, admin_ssh_args(22, {"gitSshPort": 2222}))) == 1


def test_stack_policy_links_bucket_configuration_by_dependencies_only():
    # Names are unknown (as in preview): only the dependency lists tie a versioning to its bucket.
    by_dependency = policy_resource(BUCKET, "by-dependency", {"bucketPrefix": "a-", "bucket": UNKNOWN_STRING_VALUE})
    by_property = policy_resource(BUCKET, "by-property", {"bucketPrefix": "b-", "bucket": UNKNOWN_STRING_VALUE})
    unlinked = policy_resource(BUCKET, "unlinked", {"bucketPrefix": "c-", "bucket": UNKNOWN_STRING_VALUE})
    enabled = {"bucket": UNKNOWN_STRING_VALUE, "versioningConfiguration": {"status": "Enabled"}}
    versioning_a = policy_resource(VERSIONING, "by-dependency-versioning", enabled)
    versioning_a.dependencies.append(by_dependency)
    versioning_b = policy_resource(VERSIONING, "by-property-versioning", enabled)
    versioning_b.property_dependencies["bucket"] = [by_property]
    orphan = policy_resource(VERSIONING, "orphan-versioning", enabled)

    args = StackValidationArgs([by_dependency, by_property, unlinked, versioning_a, versioning_b, orphan])
    reported = run(policy("s3-versioning"), args)
    assert [reported_urn for _, reported_urn in reported] == [unlinked.urn]
    assert "bucket 'unlinked' has no BucketVersioning with status Enabled" in reported[0][0]


def test_plain_copies_proxies_and_turns_sentinels_into_unknown():
    proxied = unknown_checking_proxy({
        "rules": [{"status": UNKNOWN_STRING_VALUE, "days": 7.0}], "flag": UNKNOWN_BOOLEAN_VALUE, "name": "x"})
    assert plain(proxied) == {"rules": [{"status": UNKNOWN, "days": 7.0}], "flag": UNKNOWN, "name": "x"}
    assert type(plain(proxied)["rules"]) is list


def test_main_constructs_the_policy_pack_and_nothing_else_does():
    def calls_policy_pack(path: Path) -> bool:
        tree = ast.parse(path.read_text())
        return any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "PolicyPack"
                   for node in ast.walk(tree))

    assert calls_policy_pack(POLICY_DIR / "__main__.py")
    assert not calls_policy_pack(POLICY_DIR / "pulumi_adapter.py")
    assert not calls_policy_pack(POLICY_DIR / "rules.py")
    assert "PolicyPack" not in vars(pulumi_adapter)


def test_rules_imports_only_the_standard_library():
    tree = ast.parse((POLICY_DIR / "rules.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "rules.py must not import project modules"
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize("name", ["requirements.txt", "PulumiPolicy.yaml"])
def test_policy_pack_files_exist(name):
    assert (POLICY_DIR / name).is_file()


def test_policy_pack_project_runs_python_in_a_pip_virtualenv():
    project = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}}
    assert project["description"]


def test_the_git_ssh_port_comes_from_the_stacks_own_config(tmp_path, monkeypatch):
    import pulumi_adapter
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  gitea-stack:gitSshPort: 2200\n  aws:region: eu-west-1\n")
    monkeypatch.setattr(pulumi_adapter, "PROJECT_DIR", tmp_path)
    pulumi_adapter.stack_settings.cache_clear()
    try:
        assert pulumi_adapter.stack_settings("dev", tmp_path) == {"gitSshPort": 2200}
        assert pulumi_adapter.stack_settings("other", tmp_path) == {}
        # Through the policy, with no policy config: the stack file's port is the allowed one.
        admin_ssh = policy("admin-ssh-not-world-open")
        assert pulumi_adapter.rule_config(None, "dev")["gitSshPort"] == 2200
        assert run(admin_ssh, admin_ssh_args(2200, None)) == []
        [(message, _)] = run(admin_ssh, admin_ssh_args(22, None))
        assert "the git SSH port 2200 (gitea-stack:gitSshPort)" in message
        assert "gitea-stack:sshAllowedCidrs" in message
        # Policy config, when set, wins over the stack file.
        assert pulumi_adapter.rule_config({"gitSshPort": 22}, "dev")["gitSshPort"] == 22
    finally:
        pulumi_adapter.stack_settings.cache_clear()


def test_the_adopted_bucket_comes_from_the_stacks_own_config(tmp_path):
    import pulumi_adapter
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n  gitea-stack:adopt:\n    backupBucket: gitea-stack-old-backups-1\n")
    pulumi_adapter.stack_settings.cache_clear()
    try:
        assert pulumi_adapter.stack_settings("dev", tmp_path) == {"adopt": {"backupBucket": "gitea-stack-old-backups-1"}}
    finally:
        pulumi_adapter.stack_settings.cache_clear()
