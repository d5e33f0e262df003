"""EBS snapshots of the data volume by Data Lifecycle Manager: what is targeted, kept, and allowed."""

from __future__ import annotations

import json

import pulumi
import pytest

from gitea_stack.snapshots import SNAPSHOT_TAG
from tests.harness.pulumi_mocks import run_program
from tests.unit.test_changes import ADOPT_ALL, KEPT_VOLUME, adopting_mocks, configured

POLICY = "aws:dlm/lifecyclePolicy:LifecyclePolicy"


def test_the_policy_targets_exactly_the_data_volume_daily_and_keeps_the_configured_days(example_run, run_with):
    policy = example_run.one(POLICY).inputs
    details = policy["policyDetails"]
    assert policy["state"] == "ENABLED" and details["resourceTypes"] == ["VOLUME"]
    assert details["targetTags"] == {SNAPSHOT_TAG: "prod"}
    # The tag is on the data volume and on nothing else in the stack.
    tagged = [r.name for r in example_run.resources if (r.inputs.get("tags") or {}).get(SNAPSHOT_TAG) == "prod"]
    assert tagged == ["host-data"]
    [schedule] = details["schedules"]
    assert schedule["createRule"] == {"interval": 24, "intervalUnit": "HOURS", "times": "03:00"}
    assert schedule["retainRule"] == {"interval": 7, "intervalUnit": "DAYS"}
    assert schedule["copyTags"] is True
    kept_longer = run_with(snapshotRetentionDays=30).one(POLICY).inputs["policyDetails"]["schedules"][0]
    assert kept_longer["retainRule"] == {"interval": 30, "intervalUnit": "DAYS"}


def test_the_snapshot_role_has_only_the_dlm_service_policy_and_trusts_dlm_of_this_account(example_run):
    role = example_run.named("snapshots-role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "dlm.amazonaws.com"},
                                   "Action": "sts:AssumeRole",
                                   "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]
    attachments = [r for r in example_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                   if r.inputs["role"] == "snapshots-role-mock"]
    assert [a.inputs["policyArn"] for a in attachments] == [
        "arn:aws:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"]
    assert not [r for r in example_run.of_type("aws:iam/rolePolicy:RolePolicy") if r.inputs["role"] == "snapshots-role-mock"]
    assert example_run.one(POLICY).property_dependencies["executionRoleArn"] == [role.urn]


def test_an_adopted_volume_is_tagged_for_snapshots_without_being_managed(example_config):
    run = run_program(configured(example_config, adopt=ADOPT_ALL), mocks=adopting_mocks())
    tag = run.one("aws:ec2/tag:Tag").inputs
    assert (tag["resourceId"], tag["key"], tag["value"]) == (KEPT_VOLUME, SNAPSHOT_TAG, "prod")
    assert run.one(POLICY).inputs["policyDetails"]["targetTags"] == {SNAPSHOT_TAG: "prod"}


@pytest.mark.parametrize("value", ["0", "366", "a week", "-1"])
def test_a_bad_snapshot_retention_is_refused_naming_the_key(example_config, value):
    with pytest.raises(pulumi.RunError) as caught:
        run_program({**example_config, "gitea-stack:snapshotRetentionDays": value})
    assert "gitea-stack:snapshotRetentionDays: expected a number of days from 1 to 365" in str(caught.value)
    assert caught.value.registered == []
