"""The policy rules (policy/rules.py) on plain data: a compliant stack, then one violation per case."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from rules import RULES, UNKNOWN, Resource, evaluate

PROJECT = "gitea-stack"
STACK = "dev"
TAGS = {"Project": PROJECT, "Stack": STACK, "ManagedBy": "pulumi"}
WORLD_V4 = "0.0.0.0/0"
WORLD_V6 = "::/0"


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::{PROJECT}::{type_}::{name}"


def res(type_: str, name: str, props: dict[str, Any], depends_on: tuple[Resource, ...] = ()) -> Resource:
    return Resource(urn=urn(type_, name), type=type_, name=name, props=props,
                    dependencies=frozenset(r.urn for r in depends_on))


def iam_doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def tls_only_policy(bucket_arn: str) -> str:
    return iam_doc({
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })


def bucket_with_config(name: str, bucket_name: str | None) -> list[Resource]:
    """A bucket and its six configuration resources.

    bucket_name None: the name is unknown (bucketPrefix, as during preview) and the configuration
    resources are linked by dependency only. Otherwise they are linked by name only.
    """
    if bucket_name is None:
        bucket = res("aws:s3/bucket:Bucket", name, {"bucketPrefix": f"{name}-", "forceDestroy": False, "tags": TAGS})
        link, deps, arn = UNKNOWN, (bucket,), "arn:aws:s3:::gitea-stack-dev-backups-1234"
    else:
        bucket = res("aws:s3/bucket:Bucket", name, {"bucket": bucket_name, "forceDestroy": False, "tags": TAGS})
        link, deps, arn = bucket_name, (), f"arn:aws:s3:::{bucket_name}"
    return [
        bucket,
        res("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", f"{name}-public-access-block", {
            "bucket": link, "blockPublicAcls": True, "blockPublicPolicy": True,
            "ignorePublicAcls": True, "restrictPublicBuckets": True}, deps),
        res("aws:s3/bucketOwnershipControls:BucketOwnershipControls", f"{name}-ownership", {
            "bucket": link, "rule": {"objectOwnership": "BucketOwnerEnforced"}}, deps),
        res("aws:s3/bucketVersioning:BucketVersioning", f"{name}-versioning", {
            "bucket": link, "versioningConfiguration": {"status": "Enabled"}}, deps),
        res("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            f"{name}-encryption", {"bucket": link, "rules": [
                {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}, "bucketKeyEnabled": True}]},
            deps),
        res("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", f"{name}-lifecycle", {
            "bucket": link, "rules": [
                {"id": "expire-noncurrent-versions", "status": "Enabled", "filter": {},
                 "noncurrentVersionExpiration": {"noncurrentDays": 30}},
                {"id": "abort-incomplete-multipart-uploads", "status": "Enabled", "filter": {},
                 "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7}},
            ]}, deps),
        res("aws:s3/bucketPolicy:BucketPolicy", f"{name}-tls-only", {
            "bucket": link, "policy": tls_only_policy(arn)}, deps),
    ]


def ingress(name: str, port: int, cidr: str, to_port: int | None = None) -> Resource:
    family = "cidrIpv6" if ":" in cidr else "cidrIpv4"
    return res("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", name, {
        "securityGroupId": UNKNOWN, "ipProtocol": "tcp", "fromPort": port,
        "toPort": port if to_port is None else to_port, family: cidr, "description": name, "tags": TAGS})


LOG_GROUP_ARN = "arn:aws:logs:eu-west-1:123456789012:log-group:/gitea-stack/dev/vpc-flow-logs"


def compliant_stack() -> list[Resource]:
    backups = bucket_with_config("backups", None)
    logs = bucket_with_config("logs", "gitea-stack-dev-logs")
    vpc = res("aws:ec2/vpc:Vpc", "vpc", {"cidrBlock": "10.42.0.0/16", "tags": TAGS})
    return [
        *backups,
        *bucket_with_config("artifacts", "gitea-stack-dev-artifacts"),
        *logs,
        # Linked by dependency (the backups bucket's name is unknown) and by name.
        res("aws:s3/bucketLogging:BucketLogging", "backups-logging", {
            "bucket": UNKNOWN, "targetBucket": "gitea-stack-dev-logs", "targetPrefix": "backups/"},
            (backups[0], logs[0])),
        res("aws:s3/bucketLogging:BucketLogging", "artifacts-logging", {
            "bucket": "gitea-stack-dev-artifacts", "targetBucket": "gitea-stack-dev-logs"}),
        vpc,
        res("aws:ec2/flowLog:FlowLog", "flow-log", {
            "vpcId": UNKNOWN, "trafficType": "ALL", "logDestinationType": "cloud-watch-logs",
            "logDestination": LOG_GROUP_ARN, "tags": TAGS}, (vpc,)),
        res("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", "default-sg", {
            "vpcId": UNKNOWN, "ingress": [], "egress": [], "tags": TAGS}, (vpc,)),
        res("aws:cloudwatch/logGroup:LogGroup", "flow-logs", {
            "name": "/gitea-stack/dev/vpc-flow-logs", "retentionInDays": 365,
            "kmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/k", "tags": TAGS}),
        res("aws:kms/key:Key", "flow-logs-key", {"enableKeyRotation": True, "tags": TAGS}),
        res("aws:ec2/route:Route", "default-route", {"destinationCidrBlock": WORLD_V4}),  # not taggable
        res("aws:ebs/volume:Volume", "data", {
            "availabilityZone": "eu-west-1a", "size": 50, "type": "gp3", "encrypted": True, "tags": TAGS}),
        res("aws:ec2/instance:Instance", "host", {
            "ami": "ami-0123456789abcdef0", "instanceType": "t3.medium",
            "metadataOptions": {"httpTokens": "required", "httpEndpoint": "enabled", "httpPutResponseHopLimit": 2},
            "rootBlockDevice": {"encrypted": True, "volumeType": "gp3", "volumeSize": 20},
            "ebsBlockDevices": [{"deviceName": "/dev/sdf", "encrypted": True}],
            "tags": TAGS}),
        res("aws:ec2/securityGroup:SecurityGroup", "host-sg", {
            "description": "host", "tags": TAGS,
            "ingress": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": [WORLD_V4],
                         "ipv6CidrBlocks": [WORLD_V6]},
                        {"protocol": "icmp", "fromPort": 3, "toPort": 4, "cidrBlocks": [WORLD_V4]}]}),
        ingress("in-http", 80, WORLD_V4),
        ingress("in-https", 443, WORLD_V4),
        ingress("in-git-ssh", 22, WORLD_V4),
        ingress("in-admin-ssh", 2222, "203.0.113.0/24"),
        ingress("in-admin-ssh-v6", 2222, "2001:db8::/32"),
        res("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", "out-https", {
            "ipProtocol": "tcp", "fromPort": 443, "toPort": 443, "cidrIpv4": WORLD_V4, "tags": TAGS}),
        res("aws:ec2/securityGroupRule:SecurityGroupRule", "out-all", {
            "type": "egress", "protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": [WORLD_V4]}),
        res("aws:iam/role:Role", "host-role", {
            "assumeRolePolicy": iam_doc({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                         "Action": "sts:AssumeRole"}),
            "tags": TAGS}),
        res("aws:iam/instanceProfile:InstanceProfile", "host-profile", {"role": "host-role", "tags": TAGS}),
        res("aws:iam/rolePolicy:RolePolicy", "host-backups", {"role": "host-role", "policy": iam_doc(
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::gitea-stack-dev-artifacts"},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": "arn:aws:s3:::gitea-stack-dev-artifacts/*"},
            {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}}},
        )}),
        res("aws:iam/policy:Policy", "metrics", {"policy": {
            "Version": "2012-10-17",
            "Statement": {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*"}}}),
        res("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "host-ssm", {
            "role": "host-role", "policyArn": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}),
        res("aws:iam/user:User", "smtp", {"tags": TAGS}),
        res("aws:iam/userPolicy:UserPolicy", "smtp-send", {"user": "smtp", "policy": iam_doc(
            {"Effect": "Allow", "Action": "ses:SendRawEmail",
             "Resource": "arn:aws:ses:eu-west-1:123456789012:identity/example.com"})}),
        res("aws:secretsmanager/secret:Secret", "admin-password", {
            "namePrefix": "gitea-admin-", "recoveryWindowInDays": 0, "tags": TAGS}),
        res("aws:secretsmanager/secret:Secret", "smtp-password", {"namePrefix": "gitea-smtp-", "tags": TAGS}),
    ]


# --- mutations of the compliant stack -------------------------------------------------------------

Mutation = Callable[[list[Resource]], list[Resource]]


def find(stack: list[Resource], name: str) -> Resource:
    return next(r for r in stack if r.name == name)


def drop(name: str) -> Mutation:
    def mutate(stack: list[Resource]) -> list[Resource]:
        find(stack, name)  # fail loudly on a typo
        return [r for r in stack if r.name != name]
    return mutate


def change(name: str, **props: Any) -> Mutation:
    """Set (or, with None, remove) top-level props of one resource."""
    def mutate(stack: list[Resource]) -> list[Resource]:
        target = find(stack, name)
        new_props = {k: v for k, v in {**target.props, **props}.items() if v is not None}
        return [dataclasses.replace(r, props=new_props) if r is target else r for r in stack]
    return mutate


def add(resource: Resource) -> Mutation:
    return lambda stack: [*stack, resource]


def urn_of(name: str) -> str:
    return next(r.urn for r in compliant_stack() if r.name == name)


# (rule, mutation, name of the resource the violation must be reported on)
CASES: list[tuple[str, Mutation, str]] = [
    ("s3-public-access-block", drop("backups-public-access-block"), "backups"),
    ("s3-public-access-block", change("artifacts-public-access-block", blockPublicPolicy=False), "artifacts"),
    ("s3-public-access-block", change("artifacts-public-access-block", restrictPublicBuckets=None), "artifacts"),
    ("s3-default-encryption", drop("backups-encryption"), "backups"),
    ("s3-default-encryption", change("artifacts-encryption", rules=[{"bucketKeyEnabled": True}]), "artifacts"),
    ("s3-versioning", drop("backups-versioning"), "backups"),
    ("s3-versioning", change("artifacts-versioning", versioningConfiguration={"status": "Suspended"}), "artifacts"),
    ("s3-tls-only", drop("backups-tls-only"), "backups"),
    ("s3-tls-only", change("artifacts-tls-only", policy=tls_only_policy("arn:aws:s3:::gitea-stack-dev-artifacts")
                           .replace('"false"', '"true"')), "artifacts"),
    ("s3-tls-only", change("artifacts-tls-only", policy=tls_only_policy("arn:aws:s3:::someone-else")), "artifacts"),
    ("s3-owner-enforced", drop("backups-ownership"), "backups"),
    ("s3-owner-enforced", change("artifacts-ownership", rule={"objectOwnership": "ObjectWriter"}), "artifacts"),
    ("s3-lifecycle", drop("backups-lifecycle"), "backups"),
    ("s3-lifecycle", change("artifacts-lifecycle", rules=[
        {"id": "expire", "status": "Enabled", "noncurrentVersionExpiration": {"noncurrentDays": 30}}]), "artifacts"),
    ("s3-lifecycle", change("artifacts-lifecycle", rules=[
        {"id": "expire", "status": "Disabled", "noncurrentVersionExpiration": {"noncurrentDays": 30}},
        {"id": "abort", "status": "Enabled", "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7}}]),
     "artifacts"),
    ("ebs-encrypted", change("data", encrypted=False), "data"),
    ("ebs-encrypted", change("data", encrypted=None), "data"),
    ("instance-root-volume-encrypted", change("host", rootBlockDevice={"encrypted": False}), "host"),
    ("instance-root-volume-encrypted", change("host", rootBlockDevice=None), "host"),
    ("instance-root-volume-encrypted", change("host", ebsBlockDevices=[{"deviceName": "/dev/sdf"}]), "host"),
    ("instance-imdsv2", change("host", metadataOptions={"httpTokens": "optional"}), "host"),
    ("instance-imdsv2", change("host", metadataOptions=None), "host"),
    ("admin-ssh-not-world-open", change("in-admin-ssh", cidrIpv4=WORLD_V4), "in-admin-ssh"),
    ("admin-ssh-not-world-open", change("in-admin-ssh-v6", cidrIpv6=WORLD_V6), "in-admin-ssh-v6"),
    ("admin-ssh-not-world-open", change("in-https", fromPort=1, toPort=65535), "in-https"),
    ("admin-ssh-not-world-open", change("in-http", fromPort=80, toPort=443), "in-http"),
    ("admin-ssh-not-world-open", change("in-https", ipProtocol="-1", fromPort=None, toPort=None), "in-https"),
    ("admin-ssh-not-world-open", add(res("aws:ec2/securityGroupRule:SecurityGroupRule", "legacy-ssh", {
        "type": "ingress", "protocol": "tcp", "fromPort": 2222, "toPort": 2222, "ipv6CidrBlocks": [WORLD_V6]})),
     "legacy-ssh"),
    ("admin-ssh-not-world-open", change("host-sg", ingress=[
        {"protocol": "all", "fromPort": 0, "toPort": 0, "cidrBlocks": [WORLD_V4]}]), "host-sg"),
    ("admin-ssh-ranges-not-world-together", change("in-admin-ssh", cidrIpv4="10.0.0.0/7"), "in-admin-ssh"),
    ("admin-ssh-ranges-not-world-together", lambda stack: add(ingress("in-admin-ssh-low", 2222, "0.0.0.0/1"))(
        add(ingress("in-admin-ssh-high", 2222, "128.0.0.0/1"))(stack)), "in-admin-ssh-high"),
    ("admin-ssh-ranges-not-world-together", lambda stack: add(ingress("in-admin-ssh-v6-low", 2222, "::/1"))(
        add(ingress("in-admin-ssh-v6-high", 2222, "8000::/1"))(stack)), "in-admin-ssh-v6-high"),
    ("iam-no-wildcard-allow", change("host-backups", policy=iam_doc(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"})), "host-backups"),
    ("iam-no-wildcard-allow", change("smtp-send", policy=iam_doc(
        {"Effect": "Allow", "Action": ["ses:SendRawEmail", "*"], "Resource": ["*"]})), "smtp-send"),
    ("iam-no-wildcard-allow", change("metrics", policy={
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}),
     "metrics"),
    ("iam-no-wildcard-allow", change("host-role", inlinePolicies=[
        {"name": "all", "policy": iam_doc({"Effect": "Allow", "Action": "ec2:*", "Resource": "*"})}]), "host-role"),
    ("iam-no-broad-managed-policies", change("host-ssm", policyArn="arn:aws:iam::aws:policy/AmazonS3FullAccess"),
     "host-ssm"),
    ("iam-no-broad-managed-policies", change("host-role", managedPolicyArns=[
        "arn:aws:iam::aws:policy/AdministratorAccess"]), "host-role"),
    ("iam-no-broad-managed-policies", add(res("aws:iam/policyAttachment:PolicyAttachment", "power", {
        "policyArn": "arn:aws:iam::aws:policy/PowerUserAccess", "roles": ["host-role"]})), "power"),
    ("secret-recovery-window", change("admin-password", recoveryWindowInDays=3), "admin-password"),
    ("secret-recovery-window", change("smtp-password", recoveryWindowInDays=31), "smtp-password"),
    ("stack-tags", change("data", tags={"Project": PROJECT, "ManagedBy": "pulumi"}), "data"),
    ("stack-tags", change("vpc", tags={**TAGS, "Project": "other"}), "vpc"),
    ("stack-tags", change("in-admin-ssh", tags=None), "in-admin-ssh"),
    ("s3-access-logging", drop("artifacts-logging"), "artifacts"),
    ("s3-access-logging", drop("backups-logging"), "backups"),
    ("s3-access-logging", change("artifacts-logging", targetBucket="gitea-stack-dev-artifacts"), "artifacts"),
    ("vpc-flow-logs", drop("flow-log"), "vpc"),
    ("vpc-flow-logs", change("flow-log", trafficType="REJECT"), "vpc"),
    ("vpc-default-security-group-closed", drop("default-sg"), "vpc"),
    ("vpc-default-security-group-closed", change("default-sg", ingress=[
        {"protocol": "-1", "fromPort": 0, "toPort": 0, "self": True}]), "vpc"),
    ("vpc-default-security-group-closed", change("default-sg", egress=[
        {"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["10.0.0.0/8"]}]), "vpc"),
    ("log-group-encrypted-and-expiring", change("flow-logs", kmsKeyId=None), "flow-logs"),
    ("log-group-encrypted-and-expiring", change("flow-logs", retentionInDays=None), "flow-logs"),
    ("log-group-encrypted-and-expiring", change("flow-logs", retentionInDays=0), "flow-logs"),
    ("kms-key-rotation", change("flow-logs-key", enableKeyRotation=False), "flow-logs-key"),
    ("kms-key-rotation", change("flow-logs-key", enableKeyRotation=None), "flow-logs-key"),
    ("s3-writes-only-to-own-buckets", add(res("aws:iam/rolePolicy:RolePolicy", "host-restore-from", {
        "role": "host-role", "policy": iam_doc(
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:DeleteObject"],
             "Resource": "arn:aws:s3:::gitea-stack-old-backups-0123/*"})})), "host-restore-from"),
    ("s3-writes-only-to-own-buckets", change("host-backups", policy=iam_doc(
        {"Effect": "Allow", "Action": "s3:Put*", "Resource": "arn:aws:s3:::someone-elses-bucket"})), "host-backups"),
    ("s3-writes-only-to-own-buckets", change("smtp-send", policy=iam_doc(
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"})), "smtp-send"),
]


def test_compliant_stack_has_no_violation():
    assert evaluate(compliant_stack()) == []


@pytest.mark.parametrize(("rule", "mutate", "resource_name"), CASES,
                         ids=[f"{rule}-{index}" for index, (rule, _, _) in enumerate(CASES)])
def test_violation_reports_exactly_that_rule_on_that_resource(rule, mutate, resource_name):
    stack = mutate(compliant_stack())
    violations = evaluate(stack)
    assert {v.rule for v in violations} == {rule}, violations
    assert {v.urn for v in violations} == {find(stack, resource_name).urn}
    assert all(resource_name in v.message for v in violations)


def test_every_rule_has_a_violating_case():
    assert {rule for rule, _, _ in CASES} == {rule.name for rule in RULES}


def test_rule_names_are_unique_kebab_case_and_described():
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)
    assert all(rule.description and rule.scope in ("resource", "stack") for rule in RULES)


def test_message_names_the_bucket_and_what_was_expected():
    [violation] = evaluate(drop("backups-versioning")(compliant_stack()))
    assert violation.message == "bucket 'backups' has no BucketVersioning with status Enabled"


def test_bucket_linked_by_neither_dependency_nor_name_lacks_its_configuration():
    # The versioning resource names another bucket and does not depend on "artifacts".
    stack = change("artifacts-versioning", bucket="another-bucket")(compliant_stack())
    assert [(v.rule, v.urn) for v in evaluate(stack)] == [("s3-versioning", urn_of("artifacts"))]


UNKNOWN_CASES: list[Mutation] = [
    change("backups-public-access-block", blockPublicPolicy=UNKNOWN),
    change("backups-encryption", rules=UNKNOWN),
    change("backups-encryption", rules=[{"applyServerSideEncryptionByDefault": UNKNOWN}]),
    change("backups-versioning", versioningConfiguration=UNKNOWN),
    change("backups-versioning", versioningConfiguration={"status": UNKNOWN}),
    change("backups-tls-only", policy=UNKNOWN),
    change("backups-ownership", rule={"objectOwnership": UNKNOWN}),
    change("backups-lifecycle", rules=UNKNOWN),
    change("backups-lifecycle", rules=[
        {"id": "expire", "status": "Enabled", "noncurrentVersionExpiration": {"noncurrentDays": UNKNOWN}},
        {"id": "abort", "status": UNKNOWN, "abortIncompleteMultipartUpload": {"daysAfterInitiation": 7}}]),
    change("data", encrypted=UNKNOWN),
    change("host", rootBlockDevice=UNKNOWN, ebsBlockDevices=UNKNOWN, metadataOptions=UNKNOWN),
    change("host", rootBlockDevice={"encrypted": UNKNOWN}, metadataOptions={"httpTokens": UNKNOWN}),
    change("in-admin-ssh", cidrIpv4=UNKNOWN),
    change("in-https", fromPort=UNKNOWN, toPort=UNKNOWN),
    change("in-https", ipProtocol=UNKNOWN, fromPort=1, toPort=65535),
    change("host-sg", ingress=UNKNOWN),
    change("host-sg", ingress=[{"protocol": "tcp", "fromPort": 2222, "toPort": 2222, "cidrBlocks": UNKNOWN}]),
    add(res("aws:ec2/securityGroupRule:SecurityGroupRule", "maybe", {
        "type": UNKNOWN, "protocol": "tcp", "fromPort": 2222, "toPort": 2222, "cidrBlocks": [UNKNOWN]})),
    change("host-backups", policy=UNKNOWN),
    change("metrics", policy={"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": UNKNOWN}]}),
    change("host-ssm", policyArn=UNKNOWN),
    change("host-role", managedPolicyArns=[UNKNOWN], inlinePolicies=UNKNOWN),
    change("admin-password", recoveryWindowInDays=UNKNOWN),
    change("data", tags=UNKNOWN),
    change("vpc", tags={"Project": PROJECT, "Stack": UNKNOWN}),
    change("artifacts-logging", targetBucket=UNKNOWN),
    change("flow-log", trafficType=UNKNOWN),
    change("default-sg", ingress=UNKNOWN),
    change("flow-logs", kmsKeyId=UNKNOWN, retentionInDays=UNKNOWN),
    change("flow-logs-key", enableKeyRotation=UNKNOWN),
]


@pytest.mark.parametrize("mutate", UNKNOWN_CASES)
def test_unknown_values_produce_no_violation(mutate):
    assert evaluate(mutate(compliant_stack())) == []


def test_git_ssh_port_config_changes_what_may_be_world_open():
    # Git over SSH on 2222 and admin SSH on 22, restricted.
    stack = change("in-git-ssh", fromPort=2222, toPort=2222)(compliant_stack())
    stack = change("in-admin-ssh", fromPort=22, toPort=22)(stack)
    stack = change("in-admin-ssh-v6", fromPort=22, toPort=22)(stack)

    by_default = evaluate(stack)
    assert [(v.rule, v.urn) for v in by_default] == [("admin-ssh-not-world-open", urn_of("in-git-ssh"))]
    assert evaluate(stack, {"gitSshPort": 2222}) == []

    world_open_22 = change("in-admin-ssh", cidrIpv4=WORLD_V4)(stack)
    assert [v.urn for v in evaluate(world_open_22, {"gitSshPort": 2222})] == [urn_of("in-admin-ssh")]


def test_ports_as_protobuf_floats_are_understood():
    stack = change("in-https", fromPort=443.0, toPort=443.0)(compliant_stack())
    assert evaluate(stack) == []
    stack = change("in-admin-ssh", fromPort=2222.0, toPort=2222.0, cidrIpv4=WORLD_V4)(stack)
    assert [v.rule for v in evaluate(stack)] == ["admin-ssh-not-world-open"]


def test_stack_and_project_come_from_the_urn_even_for_children_of_components():
    child = Resource(
        urn="urn:pulumi:prod::gitea-stack::gitea-stack:storage:BackupBucket$aws:s3/bucket:Bucket::backups",
        type="aws:s3/bucket:Bucket", name="backups", props={})
    assert (child.stack, child.project) == ("prod", "gitea-stack")


def test_tags_must_match_the_resources_own_stack():
    prod_vpc = Resource(urn="urn:pulumi:prod::gitea-stack::aws:ec2/vpc:Vpc::vpc", type="aws:ec2/vpc:Vpc",
                        name="vpc", props={"tags": TAGS})
    [violation] = [v for v in evaluate([prod_vpc]) if v.rule == "stack-tags"]
    assert "Stack='prod'" in violation.message


# Read only, as restoreFrom grants it: the old stack's bucket and password, nothing that writes.
READ_ONLY_RESTORE_SOURCE = res("aws:iam/rolePolicy:RolePolicy", "host-restore-from", {
    "role": "host-role", "policy": iam_doc(
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::gitea-stack-old-backups-0123"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::gitea-stack-old-backups-0123/*"},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gitea-stack/old/restic-password-AbCdEf"})})


def test_reading_another_stacks_bucket_is_no_violation():
    assert evaluate(add(READ_ONLY_RESTORE_SOURCE)(compliant_stack())) == []


def test_writing_to_a_new_bucket_of_the_stack_is_no_violation_before_its_name_is_known():
    # The backups bucket has only its prefix during a preview: a name with that prefix is the stack's own.
    stack = change("host-backups", policy=iam_doc(
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"], "Resource": "arn:aws:s3:::backups-1234/*"}))(
        compliant_stack())
    assert evaluate(stack) == []


def test_writing_to_the_adopted_backup_bucket_is_no_violation():
    stack = change("host-backups", policy=iam_doc(
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::gitea-stack-old-backups-0123/*"}))(
        compliant_stack())
    assert {v.rule for v in evaluate(stack)} == {"s3-writes-only-to-own-buckets"}
    assert evaluate(stack, {"adopt": {"backupBucket": "gitea-stack-old-backups-0123"}}) == []
    assert evaluate(stack, {"adopt": '{"backupBucket": "gitea-stack-old-backups-0123"}'}) == []


@pytest.mark.parametrize("action, writes", [
    ("s3:PutObject", True), ("s3:DeleteObjectVersion", True), ("s3:*", True), ("*", True), ("s3:P*", True),
    ("s3:*Object", True), ("S3:putobject", True), ("s3:GetObject", False), ("s3:ListBucket", False),
    ("s3:Get*", False), ("secretsmanager:PutSecretValue", False), ("logs:PutLogEvents", False)])
def test_which_actions_write_to_s3(action, writes):
    from rules import _may_write_s3
    assert _may_write_s3(action) is writes
