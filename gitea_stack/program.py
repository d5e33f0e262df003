"""Wires the components into one stack and exports what an operator needs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import pulumi
import pulumi_aws as aws
from pulumi.runtime import config as runtime_config

from gitea_stack import changes, existing, reachability
from gitea_stack.compute import GiteaHost, HostArgs
from gitea_stack.dns import ForgeDns, find_zone_id
from gitea_stack.mail import Mail
from gitea_stack.network import AwsAccount, Network
from gitea_stack.provision import HostConnection, Provisioning, RestoreFromFacts, stack_facts
from gitea_stack.secrets import GENERATED_SECRETS, KeptSecret, StackSecrets
from gitea_stack.settings import (
    ALLOW_PLACEHOLDERS_VARIABLE,
    NAMESPACE,
    Settings,
    SettingsError,
    parse_settings,
    placeholder_problems,
    qualified,
    unknown_key_problems,
)
from gitea_stack.sizing import InstanceFacts, InstanceTypeError, instance_facts
from gitea_stack.snapshots import VolumeSnapshots
from gitea_stack.storage import BackupBucket


def read_config(namespace: str) -> dict[str, Any]:
    """Every `<namespace>:*` value of the stack, unknown keys included, so typos can be reported."""
    prefix = f"{namespace}:"
    values = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}


def aws_provider_keys() -> tuple[str, ...]:
    """The `aws:` settings the installed pulumi-aws provider knows, from its own config module."""
    # pulumi_aws.config loads lazily, then becomes an object whose class declares one property per
    # setting (snake_case); reading one setting loads it.
    import sys

    import pulumi_aws.config
    _ = pulumi_aws.config.region
    loaded = sys.modules["pulumi_aws.config"]
    properties = [name for name, value in vars(type(loaded)).items() if isinstance(value, property)]
    return tuple(sorted(re.sub(r"_([a-z0-9])", lambda match: match.group(1).upper(), name) for name in properties))


def load_settings() -> Settings:
    problems = unknown_key_problems("aws", set(read_config("aws")), aws_provider_keys())
    try:
        settings = parse_settings(read_config(NAMESPACE), pulumi.get_stack())
    except SettingsError as error:
        # RunError ends the program with the message alone, before any resource is registered.
        raise pulumi.RunError(str(SettingsError(problems + error.problems))) from None
    warn_of_a_plaintext_restore_password(settings)
    if os.environ.get(ALLOW_PLACEHOLDERS_VARIABLE) != "1":
        problems += placeholder_problems(settings)
    if problems:
        raise pulumi.RunError(str(SettingsError(problems)))
    return settings


def warn_of_a_plaintext_restore_password(settings: Settings) -> None:
    """restoreFrom.password belongs in the stack file encrypted; the stack stores it as a secret either way."""
    key = qualified("restoreFrom")
    secret = runtime_config.is_config_secret(key) or key in runtime_config.get_config_secret_keys_env()
    if settings.restore_from and settings.restore_from.password and not secret:
        pulumi.log.warn(f"{key}.password is in the stack file in plaintext; set it again with "
                        f"`pulumi config set --secret --path {key}.password` and change it where it was copied")


def check_operator_can_reach_host(settings: Settings) -> None:
    """Fails `pulumi up` (warns in a preview) when this machine is outside `sshAllowedCidrs`."""
    url = reachability.check_url()
    if url is None:
        return
    address, unknown = reachability.public_address(url)
    if address is None:
        pulumi.log.warn(f"not checked whether this machine may reach the host's admin SSH: {unknown}")
        return
    problem = reachability.outside_allowed_problem(address, settings.ssh_allowed_cidrs, settings.admin_ssh_port)
    if problem and pulumi.runtime.is_dry_run():
        pulumi.log.warn(problem)
    elif problem:
        raise pulumi.RunError(problem)


def offered_zones(settings: Settings, region: str) -> list[str]:
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [settings.instance_type]}])
    zones = sorted(offerings.locations)
    if not zones:
        raise pulumi.RunError(
            f"{qualified('instanceType')}: {settings.instance_type} is not offered in any availability zone of "
            f"{region}; expected an instance type this region sells")
    return zones


def refuse(problems: Iterable[str | None]) -> None:
    """Ends the program, before anything is registered, with every problem found (None: no problem)."""
    found = [problem for problem in problems if problem]
    if found:
        raise pulumi.RunError(str(SettingsError(found)))


def check_changes_to_running_stack(settings: Settings, instance: InstanceFacts) -> None:
    """Changes EC2 cannot make to a running forge are refused here, before anything changes."""
    problems = []
    if not settings.adopt.data_volume_id:
        problems.append(changes.volume_shrink_problem(existing.running_data_volume(settings), settings.data_volume_gib))
    running = existing.running_instance_type(settings)
    if running:
        problems.append(changes.architecture_change_problem(
            running[0], running[1], settings.instance_type, instance.architecture))
    refuse(problems)


def adopted_volume_zone(settings: Settings, zones: list[str]) -> str:
    volume_id = settings.adopt.data_volume_id
    volume = existing.describe_volume(volume_id)
    refuse(changes.adopted_volume_problems(volume, volume_id, settings.data_volume_gib, zones))
    return volume.availability_zone


def check_adopted_bucket(settings: Settings, region: str) -> None:
    bucket = settings.adopt.backup_bucket
    if bucket:
        refuse([changes.adopted_bucket_problem(existing.bucket_region(bucket), bucket, region)])


def kept_secrets(settings: Settings) -> dict[str, KeptSecret]:
    from_stack = settings.adopt.secrets_from_stack
    if not from_stack:
        return {}
    names, problems = changes.kept_secret_names(existing.kept_secret_names(from_stack), from_stack, GENERATED_SECRETS)
    refuse(problems)
    kept = {}
    for key, name in names.items():
        kept[key] = existing.kept_secret(name)
    return kept


def backup_bucket(settings: Settings, account: AwsAccount) -> tuple[pulumi.Input[str], pulumi.Input[str],
                                                                     pulumi.Input[str] | None]:
    """(name, ARN, access-log bucket name or None) of the bucket this stack backs up to."""
    adopted = settings.adopt.backup_bucket
    if adopted:
        return adopted, f"arn:{account.partition}:s3:::{adopted}", None
    backups = BackupBucket("backups", settings, account_id=account.account_id)
    return backups.bucket.bucket, backups.bucket.arn, backups.access_logs.bucket.bucket


def restore_from_password_secret(settings: Settings, secrets: StackSecrets) -> tuple[pulumi.Input[str] | None,
                                                                                     pulumi.Input[str] | None]:
    """(ARN the role may read, what the host fetches: ARN or name) of the restore password; Nones: no restore."""
    if not settings.restore_from:
        return None, None
    if secrets.restore_from_password:
        return secrets.restore_from_password.arn, secrets.restore_from_password.name
    return settings.restore_from.password_secret_arn, settings.restore_from.password_secret_arn


def restore_from_facts(settings: Settings, region: str, password_secret: str | None) -> RestoreFromFacts | None:
    if not settings.restore_from or not password_secret:
        return None
    return RestoreFromFacts(bucket=settings.restore_from.bucket, region=settings.restore_from.region_or(region),
                            password_secret=password_secret)


def describe_instance_type(settings: Settings) -> InstanceFacts:
    """Memory and architecture of the instance type, from AWS rather than guessed from its name.

    Call it after `offered_zones`: a type AWS does not know has no offerings and is
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
    zones = offered_zones(settings, region)
    instance = describe_instance_type(settings)
    availability_zone = adopted_volume_zone(settings, zones) if settings.adopt.data_volume_id else zones[0]
    check_changes_to_running_stack(settings, instance)
    kept = kept_secrets(settings)
    check_adopted_bucket(settings, region)
    check_operator_can_reach_host(settings)

    network = Network("network", settings, availability_zone=availability_zone, account=account)
    bucket_name, bucket_arn, access_log_bucket = backup_bucket(settings, account)
    secrets = StackSecrets("secrets", settings, kept=kept)
    mail = Mail("mail", settings, zone_id=zone_id, region=region)
    all_secrets = {**secrets.stored, "smtp-credentials": mail.smtp_secret}
    restore_password_arn, restore_password_fact = restore_from_password_secret(settings, secrets)
    host = GiteaHost("host", settings, HostArgs(
        subnet_id=network.subnet.id,
        availability_zone=network.subnet.availability_zone,
        security_group_id=network.security_group.id,
        backup_bucket_arn=bucket_arn,
        secret_arns=pulumi.Output.all(*(stored.arn for stored in all_secrets.values())),
        mail_identity_arns=mail.identity_arns,
        region=region,
        partition=partition.partition,
        instance=instance,
        adopted_volume_id=settings.adopt.data_volume_id,
        restore_source_bucket_arn=(f"arn:{partition.partition}:s3:::{settings.restore_from.bucket}"
                                   if settings.restore_from else None),
        restore_source_password_arn=restore_password_arn,
    ))
    dns = ForgeDns("dns", settings, zone_id=zone_id, address=host.public_ip)
    snapshots = VolumeSnapshots("snapshots", settings, volume_id=host.data_volume_id, account_id=account.account_id,
                                partition=account.partition, adopted=bool(settings.adopt.data_volume_id))
    secret_names = pulumi.Output.all(**{key: stored.name for key, stored in all_secrets.items()})
    # A new secret value is a new version: the converge runs again and applies it on the host.
    # A corrected restoreFrom.password is a new version too, so a refused restore is tried again.
    versioned = [*all_secrets.values(), *([secrets.restore_from_password] if secrets.restore_from_password else [])]
    secret_versions = pulumi.Output.all(*(stored.version_id for stored in versioned))
    facts = pulumi.Output.all(bucket_name, secret_names, restore_password_fact).apply(
        lambda values: stack_facts(region, values[0], values[1], restore_from_facts(settings, region, values[2])))
    Provisioning(
        "provision", settings, instance,
        HostConnection(host=host.public_ip, port=settings.admin_ssh_port, private_key=host.private_key),
        host_identity=host.instance.id, facts=facts, secret_versions=secret_versions,
        # certbot needs the A record before it asks for the first certificate.
        opts=pulumi.ResourceOptions(depends_on=[host.data_attachment, dns]))

    outputs = {
        "url": settings.https_url,
        # Dashboards; sign in with a forge account (Gitea's administrators are Grafana's).
        "grafanaUrl": f"{settings.https_url}grafana/",
        "adminUsername": settings.admin_username,
        # Shown with `pulumi stack output adminPassword --show-secrets`; change it after the first sign-in.
        "adminPassword": pulumi.Output.secret(secrets.values["gitea-admin-password"]),
        "publicIp": host.public_ip,
        "adminSshCommand": pulumi.Output.concat(
            f"ssh -i gitea-stack-{settings.stack}.key -p {settings.admin_ssh_port} ubuntu@", host.public_ip),
        "gitCloneHttps": settings.https_clone_url("OWNER", "REPOSITORY"),
        "gitCloneSsh": settings.ssh_clone_url("OWNER", "REPOSITORY"),
        "backupBucket": bucket_name,
        "flowLogGroup": network.flow_logs.log_group.name,
        "secretNames": secret_names,
        "instanceId": host.instance.id,
        # `python -m gitea_stack status` reads these: the alarm's name is generated, the region may
        # come from the AWS profile rather than the stack file.
        "recoveryAlarmName": host.recovery_alarm.name,
        "region": region,
        "dataVolumeId": host.data_volume_id,
        "snapshotPolicyId": snapshots.policy.id,
        "provisioningPrivateKey": pulumi.Output.secret(host.private_key),
    }
    if access_log_bucket is not None:  # an adopted bucket keeps the logging its own stack gave it
        outputs["accessLogBucket"] = access_log_bucket
    return outputs


def main() -> None:
    settings = load_settings()
    for name, value in build_stack(settings).items():
        pulumi.export(name, value)
