"""Host: the EC2 instance that runs the forge, its data volume, address, key and least-privilege role.

The root volume is disposable; everything that matters lives on the data volume, which survives
instance replacement and, with `retainDataOnDestroy`, `pulumi destroy`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_tls as tls

from gitea_stack import iam_documents
from gitea_stack.rendering import render_user_data
from gitea_stack.settings import Settings
from gitea_stack.sizing import InstanceFacts
from gitea_stack.snapshots import snapshot_tags
from gitea_stack.versions import CANONICAL_AMI_OWNER, UBUNTU_AMI_NAME_PATTERN

DATA_DEVICE_NAME = "/dev/sdf"
# Ubuntu's image names say amd64 where EC2 says x86_64.
_AMI_NAME_ARCHITECTURE = {"x86_64": "amd64", "arm64": "arm64"}


@dataclass(frozen=True)
class HostArgs:
    subnet_id: pulumi.Input[str]
    availability_zone: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    backup_bucket_arn: pulumi.Input[str]
    secret_arns: pulumi.Input[list[str]]
    mail_identity_arns: pulumi.Input[list[str]]
    region: str
    partition: str
    instance: InstanceFacts
    # A volume a destroyed stack kept (`adopt.dataVolumeId`): attached, never created or deleted here.
    adopted_volume_id: str = ""
    # `restoreFrom`: the old stack's bucket and restic password secret, read only (None: no restore).
    restore_source_bucket_arn: str | None = None
    restore_source_password_arn: pulumi.Input[str] | None = None


def find_ubuntu_ami(architecture: str) -> str:
    """The newest Ubuntu 24.04 LTS image from Canonical for the architecture."""
    ami = aws.ec2.get_ami(
        most_recent=True,
        owners=[CANONICAL_AMI_OWNER],
        filters=[
            {"name": "name", "values": [UBUNTU_AMI_NAME_PATTERN.format(arch=_AMI_NAME_ARCHITECTURE[architecture])]},
            {"name": "architecture", "values": [architecture]},
            {"name": "virtualization-type", "values": ["hvm"]},
            {"name": "root-device-type", "values": ["ebs"]},
        ],
    )
    return ami.id


class GiteaHost(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, args: HostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:compute:GiteaHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags

        # Provisioning key: generated here, so no operator key has to exist before the first deploy.
        self.provisioning_key = tls.PrivateKey(f"{name}-provisioning-key", algorithm="ED25519", opts=child)
        key_pair = aws.ec2.KeyPair(
            f"{name}-provisioning", key_name_prefix=f"gitea-stack-{settings.stack}-",
            public_key=self.provisioning_key.public_key_openssh, tags=tags, opts=child)

        role = aws.iam.Role(
            f"{name}-role", path="/gitea-stack/", assume_role_policy=json.dumps(iam_documents.ec2_assume_role()),
            description=f"gitea-stack {settings.stack} host", tags=tags, opts=child)
        inline_policies = {
            "backup-bucket": pulumi.Output.from_input(args.backup_bucket_arn).apply(iam_documents.backup_bucket_access),
            "read-secrets": pulumi.Output.from_input(args.secret_arns).apply(
                lambda arns: iam_documents.read_secrets(list(arns))),
            "send-mail": pulumi.Output.from_input(args.mail_identity_arns).apply(
                lambda arns: iam_documents.send_mail_from_domain(list(arns), settings.domain)),
        }
        if args.restore_source_bucket_arn:
            inline_policies["restore-from"] = pulumi.Output.from_input(args.restore_source_password_arn).apply(
                lambda secret_arn: iam_documents.read_restore_source(args.restore_source_bucket_arn, secret_arn))
        for policy_name, document in inline_policies.items():
            aws.iam.RolePolicy(f"{name}-{policy_name}", role=role.id, policy=document.apply(json.dumps), opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", path="/gitea-stack/", role=role.name, tags=tags,
                                          opts=child)

        self.data_volume: aws.ebs.Volume | None = None
        if args.adopted_volume_id:
            self.data_volume_id: pulumi.Output[str] = pulumi.Output.from_input(args.adopted_volume_id)
        else:
            # A larger size is applied in place (the converge then grows the filesystem online).
            self.data_volume = aws.ebs.Volume(
                f"{name}-data", availability_zone=args.availability_zone, size=settings.data_volume_gib, type="gp3",
                encrypted=True, final_snapshot=False,
                tags={**tags, **snapshot_tags(settings), "Name": f"gitea-stack-{settings.stack}-data"},
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=settings.retain_data_on_destroy))
            self.data_volume_id = self.data_volume.id

        self.instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=find_ubuntu_ami(args.instance.architecture),
            instance_type=settings.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            key_name=key_pair.key_name,
            iam_instance_profile=profile.name,
            # IMDSv2 only, and a hop limit of 1 so containers (CI jobs above all) cannot borrow the
            # instance role; the host's own scripts reach it directly.
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled",
                              "http_put_response_hop_limit": 1},
            root_block_device={"volume_type": "gp3", "volume_size": settings.root_volume_gib, "encrypted": True,
                               "delete_on_termination": True,
                               "tags": {**tags, "Name": f"gitea-stack-{settings.stack}-root"}},
            user_data=self.data_volume_id.apply(lambda volume_id: render_user_data(settings, volume_id)),
            # cloud-init runs once per instance, so changed user data (the admin SSH port) needs a new
            # instance; the data volume and address move over to it. Nothing else is in the user data.
            user_data_replace_on_change=True,
            tags={**tags, "Name": f"gitea-stack-{settings.stack}"},
            opts=pulumi.ResourceOptions(
                parent=self,
                # A newer AMI must never replace a running forge; rebuild deliberately instead.
                ignore_changes=["ami"],
                # The data volume can be attached to one instance only: the old one goes first.
                delete_before_replace=True,
            ),
        )
        self.data_attachment = aws.ec2.VolumeAttachment(
            f"{name}-data-attachment", device_name=DATA_DEVICE_NAME, volume_id=self.data_volume_id,
            instance_id=self.instance.id, stop_instance_before_detaching=True, opts=child)

        self.elastic_ip = aws.ec2.Eip(
            f"{name}-eip", domain="vpc", instance=self.instance.id,
            tags={**tags, "Name": f"gitea-stack-{settings.stack}"}, opts=child)

        self.recovery_alarm = aws.cloudwatch.MetricAlarm(
            f"{name}-auto-recover",
            alarm_description=f"gitea-stack {settings.stack}: recover the host when its system status check fails",
            namespace="AWS/EC2", metric_name="StatusCheckFailed_System", dimensions={"InstanceId": self.instance.id},
            statistic="Maximum", period=60, evaluation_periods=2, threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            alarm_actions=[f"arn:{args.partition}:automate:{args.region}:ec2:recover"],
            tags=tags, opts=child)

        self.public_ip = self.elastic_ip.public_ip
        self.private_key = self.provisioning_key.private_key_openssh
        self.register_outputs({"instance_id": self.instance.id, "public_ip": self.public_ip,
                               "data_volume_id": self.data_volume_id})
