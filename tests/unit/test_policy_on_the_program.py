"""The policy pack over what the program really registers: the example stack passes every rule,
and breaking one setting in the real stack trips the rule that guards it."""

from __future__ import annotations

import json

import pytest
import rules

from tests.harness.pulumi_mocks import StackRun


def as_policy_resources(run: StackRun) -> list[rules.Resource]:
    return [rules.Resource(urn=r.urn, type=r.type, name=r.name, props=r.inputs, dependencies=r.dependencies)
            for r in run.resources if r.custom]


def test_the_example_stack_violates_no_rule(example_run):
    assert rules.evaluate(as_policy_resources(example_run)) == []


def test_a_custom_git_port_passes_when_the_pack_is_told_about_it(run_with):
    resources = as_policy_resources(run_with(gitSshPort=2200))
    assert [v.rule for v in rules.evaluate(resources)] == ["admin-ssh-not-world-open"]
    assert rules.evaluate(resources, {"gitSshPort": 2200}) == []


def replace_props(resources, resource_type, change):
    return [rules.Resource(r.urn, r.type, r.name, change(dict(r.props)), r.dependencies) if r.type == resource_type
            else r for r in resources]


def without(resources, resource_type):
    return [r for r in resources if r.type != resource_type]


BROKEN = {
    "s3-versioning": lambda rs: without(rs, "aws:s3/bucketVersioning:BucketVersioning"),
    "s3-public-access-block": lambda rs: replace_props(
        rs, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", lambda p: {**p, "restrictPublicBuckets": False}),
    "s3-tls-only": lambda rs: without(rs, "aws:s3/bucketPolicy:BucketPolicy"),
    "ebs-encrypted": lambda rs: replace_props(rs, "aws:ebs/volume:Volume", lambda p: {**p, "encrypted": False}),
    "instance-imdsv2": lambda rs: replace_props(
        rs, "aws:ec2/instance:Instance", lambda p: {**p, "metadataOptions": {"httpTokens": "optional"}}),
    "iam-no-wildcard-allow": lambda rs: replace_props(
        rs, "aws:iam/rolePolicy:RolePolicy", lambda p: {**p, "policy": json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})}),
    "stack-tags": lambda rs: replace_props(rs, "aws:ec2/vpc:Vpc", lambda p: {**p, "tags": {"Project": "gitea-stack"}}),
    "s3-access-logging": lambda rs: without(rs, "aws:s3/bucketLogging:BucketLogging"),
    "vpc-flow-logs": lambda rs: without(rs, "aws:ec2/flowLog:FlowLog"),
    "vpc-default-security-group-closed": lambda rs: without(rs, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"),
    "log-group-encrypted-and-expiring": lambda rs: replace_props(
        rs, "aws:cloudwatch/logGroup:LogGroup", lambda p: {k: v for k, v in p.items() if k != "kmsKeyId"}),
    "kms-key-rotation": lambda rs: replace_props(rs, "aws:kms/key:Key", lambda p: {**p, "enableKeyRotation": False}),
    "s3-writes-only-to-own-buckets": lambda rs: replace_props(
        rs, "aws:iam/rolePolicy:RolePolicy", lambda p: {**p, "policy": json.dumps(
            {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::gitea-stack-old-backups-x/*"}]})}),
}


@pytest.mark.parametrize("rule_name", BROKEN)
def test_breaking_the_real_stack_trips_its_rule(example_run, rule_name):
    violations = rules.evaluate(BROKEN[rule_name](as_policy_resources(example_run)))
    assert violations and {v.rule for v in violations} == {rule_name}


def test_admin_ssh_opened_to_the_world_through_settings_is_refused_before_policy(run_with):
    # The settings refuse 0.0.0.0/0 outright; the policy is the second line for hand-written changes.
    with pytest.raises(Exception, match="open admin SSH to everyone"):
        run_with(sshAllowedCidrs=["0.0.0.0/0"])
