"""Wires the components into one stack and exports what an operator needs."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
from pulumi.runtime import config as runtime_config

from gitea_stack.compute import GiteaHost, HostArgs
from gitea_stack.dns import ForgeDns, find_zone_id
from gitea_stack.mail import Mail
from gitea_stack.network import AwsAccount, Network
from gitea_stack.provision import HostConnection, Provisioning, stack_facts
from gitea_stack.secrets import StackSecrets
from gitea_stack.settings import NAMESPACE, Settings, SettingsError, parse_settings, qualified
from gitea_stack.sizing import InstanceFacts, InstanceTypeError, instance_facts
from gitea_stack.storage import BackupBucket


def read_stack_config() -> dict[str, Any]:
    """Every `gitea-stack:*` value of the stack, unknown keys included, so typos can be reported."""
    prefix = f"{NAMESPACE}:"
    values = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}


def load_settings() -> Settings:
    try:
        return parse_settings(read_stack_config(), pulumi.get_stack())
    except SettingsError as error:
        # RunError ends the program with the message alone, before any resource is registered.
        raise pulumi.RunError(str(error)) from None


def choose_availability_zone(settings: Settings, region: str) -> str:
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [settings.instance_type]}])
    zones = sorted(offerings.locations)
    if not zones:
        raise pulumi.RunError(
            f"{qualified('instanceType')}: {settings.instance_type} is not offered in any availability zone of "
            f"{region}; expected an instance type this region sells")
    return zones[0]


def describe_instance_type(settings: Settings) -> InstanceFacts:
    """Memory and architecture of the instance type, from AWS rather than guessed from its name.

    Call it after `choose_availability_zone`: a type AWS does not know has no offerings and is
    reported there, since a failed data-source call cannot be caught in a Pulumi program.
    """
    described = aws.ec2.get_instance_type(instance_type=settings.instance_type)
    try:
        return instance_facts(settings.instance_type, described.memory_size, described.supported_architectures)
    except InstanceTypeError as problem:
        raise pulumi.RunError(f"{qualified('instanceType')}: {problem}") from None


def build_stack(settings: Settings) -> dict[str, Any]:
    """Registers the whole estate and returns the stack outputs."""
    region = aws.get_region().region
    partition = aws.get_partition()
    account = AwsAccount(aws.get_caller_identity().account_id, region, partition.partition, partition.dns_suffix)
    zone_id = find_zone_id(settings.hosted_zone)
    availability_zone = choose_availability_zone(settings, region)
    instance = describe_instance_type(settings)

    network = Network("network", settings, availability_zone=availability_zone, account=account)
    backups = BackupBucket("backups", settings, account_id=account.account_id)
    secrets = StackSecrets("secrets", settings)
    mail = Mail("mail", settings, zone_id=zone_id, region=region)
    all_secrets = {**secrets.stored, "smtp-credentials": mail.smtp_secret}
    host = GiteaHost("host", settings, HostArgs(
        subnet_id=network.subnet.id,
        availability_zone=network.subnet.availability_zone,
        security_group_id=network.security_group.id,
        backup_bucket_arn=backups.bucket.arn,
        secret_arns=pulumi.Output.all(*(stored.secret.arn for stored in all_secrets.values())),
        mail_identity_arns=mail.identity_arns,
        region=region,
        partition=partition.partition,
        instance=instance,
    ))
    dns = ForgeDns("dns", settings, zone_id=zone_id, address=host.public_ip)
    secret_names = pulumi.Output.all(**{key: stored.secret.name for key, stored in all_secrets.items()})
    # A new secret value is a new version: the converge runs again and applies it on the host.
    secret_versions = pulumi.Output.all(*(stored.version.version_id for stored in all_secrets.values()))
    facts = pulumi.Output.all(backups.bucket.bucket, secret_names).apply(
        lambda values: stack_facts(region, values[0], values[1]))
    Provisioning(
        "provision", settings, instance,
        HostConnection(host=host.public_ip, port=settings.admin_ssh_port, private_key=host.private_key),
        host_identity=host.instance.id, facts=facts, secret_versions=secret_versions,
        # certbot needs the A record before it asks for the first certificate.
        opts=pulumi.ResourceOptions(depends_on=[host.data_attachment, dns]))

    return {
        "url": settings.https_url,
        "publicIp": host.public_ip,
        "adminSshCommand": pulumi.Output.concat(
            f"ssh -i gitea-stack-{settings.stack}.key -p {settings.admin_ssh_port} ubuntu@", host.public_ip),
        "gitCloneHttps": settings.https_clone_url("OWNER", "REPOSITORY"),
        "gitCloneSsh": settings.ssh_clone_url("OWNER", "REPOSITORY"),
        "backupBucket": backups.bucket.bucket,
        "accessLogBucket": backups.access_logs.bucket.bucket,
        "flowLogGroup": network.flow_logs.log_group.name,
        "secretNames": secret_names,
        "instanceId": host.instance.id,
        "dataVolumeId": host.data_volume.id,
        "provisioningPrivateKey": pulumi.Output.secret(host.private_key),
    }


def main() -> None:
    settings = load_settings()
    for name, value in build_stack(settings).items():
        pulumi.export(name, value)
