"""Snapshots: a daily EBS snapshot of the data volume by Data Lifecycle Manager, kept
`snapshotRetentionDays` — a second copy, independent of the host, that restores a whole volume in
minutes. Crash-consistent (taken while the forge runs): PostgreSQL recovers from its WAL as after a
power cut, and git's object store tolerates it.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from gitea_stack import iam_documents
from gitea_stack.settings import Settings

# The tag DLM finds the volume by: one volume per stack carries it.
SNAPSHOT_TAG = "GiteaStackSnapshots"
# When the daily snapshot starts (UTC); DLM starts it within the hour after.
SNAPSHOT_TIME_UTC = "03:00"


def snapshot_tags(settings: Settings) -> dict[str, str]:
    return {SNAPSHOT_TAG: settings.stack}


class VolumeSnapshots(pulumi.ComponentResource):
    """The DLM policy, its role, and (for an adopted volume, which this stack does not manage) the tag."""

    def __init__(self, name: str, settings: Settings, volume_id: pulumi.Input[str], account_id: str, partition: str,
                 adopted: bool, opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:snapshots:VolumeSnapshots", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags
        if adopted:
            # The stack's own volume is created with the tag; an adopted one gets it here (and loses
            # it again when this stack is destroyed, leaving the volume as it was).
            aws.ec2.Tag(f"{name}-volume-tag", resource_id=volume_id, key=SNAPSHOT_TAG, value=settings.stack,
                        opts=child)
        role = aws.iam.Role(
            f"{name}-role", path="/gitea-stack/", description=f"gitea-stack {settings.stack} volume snapshots",
            assume_role_policy=json.dumps(iam_documents.dlm_assume_role(account_id)), tags=tags, opts=child)
        attachment = aws.iam.RolePolicyAttachment(
            f"{name}-service-policy", role=role.name, policy_arn=iam_documents.dlm_service_policy_arn(partition),
            opts=child)
        self.policy = aws.dlm.LifecyclePolicy(
            f"{name}-policy",
            description=f"gitea-stack {settings.stack}: daily snapshot of the data volume",
            execution_role_arn=role.arn,
            state="ENABLED",
            policy_details={
                "resource_types": ["VOLUME"],
                "target_tags": snapshot_tags(settings),
                "schedules": [{
                    "name": f"daily, kept {settings.snapshot_retention_days} days",
                    "create_rule": {"interval": 24, "interval_unit": "HOURS", "times": SNAPSHOT_TIME_UTC},
                    "retain_rule": {"interval": settings.snapshot_retention_days, "interval_unit": "DAYS"},
                    "copy_tags": True,
                    "tags_to_add": {"Project": "gitea-stack", "Stack": settings.stack, "ManagedBy": "dlm"},
                }],
            },
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[attachment]))
        self.register_outputs({"policy_id": self.policy.id})
