"""What AWS already holds for a stack, asked with data sources before anything is registered.

Lookups use the list-style data sources, which answer "none" instead of failing the program, so a
missing volume or secret becomes a message naming the setting (decided in `changes.py`).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from gitea_stack.changes import VolumeFacts
from gitea_stack.secrets import KeptSecret
from gitea_stack.settings import NAMESPACE, Settings

LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


def describe_volume(volume_id: str) -> VolumeFacts | None:
    if not aws.ebs.get_ebs_volumes(filters=[{"name": "volume-id", "values": [volume_id]}]).ids:
        return None
    volume = aws.ebs.get_volume(filters=[{"name": "volume-id", "values": [volume_id]}])
    return VolumeFacts(volume_id, volume.availability_zone, int(volume.size), bool(volume.encrypted))


def running_data_volume(settings: Settings) -> VolumeFacts | None:
    """The data volume this stack has attached now (retained ones from earlier destroys are detached)."""
    ids = aws.ebs.get_ebs_volumes(
        tags={"Project": NAMESPACE, "Stack": settings.stack, "Name": f"gitea-stack-{settings.stack}-data"},
        filters=[{"name": "status", "values": ["in-use"]}]).ids
    return describe_volume(sorted(ids)[0]) if ids else None


def running_instance_type(settings: Settings) -> tuple[str, list[str]] | None:
    """(instance type, its architectures) of this stack's host, if it has one."""
    ids = aws.ec2.get_instances(
        instance_tags={"Project": NAMESPACE, "Stack": settings.stack, "Name": f"gitea-stack-{settings.stack}"},
        instance_state_names=LIVE_INSTANCE_STATES).ids
    if not ids:
        return None
    instance_type = aws.ec2.get_instance(instance_id=sorted(ids)[0]).instance_type
    return instance_type, list(aws.ec2.get_instance_type(instance_type=instance_type).supported_architectures)


def kept_secret_names(from_stack: str) -> list[str]:
    """Names of the live (not deletion-scheduled) secrets a stack left under its prefix."""
    return list(aws.secretsmanager.get_secrets(
        filters=[{"name": "name", "values": [f"gitea-stack/{from_stack}/"]}]).names or [])


def kept_secret(name: str) -> KeptSecret:
    """A kept secret, read once: its version id (a new value re-runs the converge, as for the stack's
    own secrets) and its value, a secret Output (only the adminPassword output uses one)."""
    arn = aws.secretsmanager.get_secret(name=name).arn
    current = aws.secretsmanager.get_secret_version_output(secret_id=arn)
    return KeptSecret(arn=arn, name=name, version_id=current.version_id,
                      value=pulumi.Output.secret(current.secret_string))


def bucket_region(bucket: str) -> str | None:
    for found in aws.s3.get_buckets(prefix=bucket).buckets or []:
        if found.name == bucket:
            return found.bucket_region
    return None
