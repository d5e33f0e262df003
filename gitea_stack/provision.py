"""Provisioning: the remote steps that turn the instance into a running forge, over SSH.

wait for the host -> install Docker (pinned) -> copy the bundle -> converge (deploy.sh --check on the
uploaded bundle, then it replaces the one in use and deploy.sh runs).
The bundle travels as a gzipped tar on the copy command's stdin: modes survive, and the step is a
plain command whose input is exactly what lands on the host.
Each step's triggers are content hashes of exactly what it depends on, so a no-op `pulumi up`
re-runs nothing, a change confined to the bundle re-runs only the copy and the converge, and a new
secret value (a new Secrets Manager version) re-runs only the converge.
Secrets never travel here: the host reads them from Secrets Manager with its instance role.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from gitea_stack.bundle import PRODUCTION, Bundle, bundle_digest, bundle_tarball, render_bundle
from gitea_stack.rendering import DATA_MOUNT_POINT, read_script
from gitea_stack.settings import Settings
from gitea_stack.sizing import InstanceFacts
from gitea_stack.versions import DOCKER_PACKAGES

SSH_USER = "ubuntu"
UPLOAD_DIR = "/home/ubuntu/gitea-stack-upload"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RestoreFromFacts:
    """What the host needs to restore an old stack's backups (`restoreFrom`)."""
    bucket: str
    region: str
    password_secret: str  # the secret's ARN (read in the ARN's region) or, in the stack's region, its name


def stack_facts(region: str, bucket_name: str, secret_names: dict[str, str],
                restore_from: RestoreFromFacts | None = None) -> str:
    """stack-facts.env: what the cloud half created that the host must know. Names only, no values."""
    lines = ["# gitea-stack: written by `pulumi up` from the stack's resources.",
             f"AWS_REGION={region}", f"BACKUP_BUCKET={bucket_name}"]
    if restore_from:
        lines += [f"RESTORE_FROM_BUCKET={restore_from.bucket}", f"RESTORE_FROM_REGION={restore_from.region}"]
        secret_names = {**secret_names, "restore-from-password": restore_from.password_secret}
    lines += [f"SECRET_{key.upper().replace('-', '_')}={name}" for key, name in sorted(secret_names.items())]
    return "\n".join(lines) + "\n"


def wait_command() -> str:
    # cloud-init moves sshd and mounts the data volume; nothing may land before both are done.
    return (f"cloud-init status --wait >/dev/null; mountpoint -q {DATA_MOUNT_POINT} "
            f"|| {{ echo 'the data volume is not mounted at {DATA_MOUNT_POINT}' >&2; exit 1; }}")


def install_command() -> str:
    pins = " ".join(f"{package}={version}" for package, version in DOCKER_PACKAGES.items())
    return f"sudo bash -s -- {pins}"


def copy_command() -> str:
    return (f"rm -rf {UPLOAD_DIR} && mkdir -p {UPLOAD_DIR} "
            f"&& base64 --decode | tar --extract --gzip --no-same-owner --directory {UPLOAD_DIR}")


def converge_command(bundle_dir: str = PRODUCTION.bundle_dir, upload_dir: str = UPLOAD_DIR) -> str:
    # The uploaded bundle is checked where it landed first (`deploy.sh --check`: the PostgreSQL major,
    # the secret key): a refused bundle never replaces the one in use, so nothing at all changes.
    return (f"set -euo pipefail; sudo {upload_dir}/scripts/deploy.sh --check "
            f"&& sudo install -d -m 0755 {bundle_dir} "
            f"&& sudo cp -R --preserve=mode {upload_dir}/. {bundle_dir}/ "
            f"&& sudo {bundle_dir}/scripts/deploy.sh")


def upload_payload(bundle: Bundle, facts: str) -> str:
    """What the copy step feeds to its command: the bundle plus stack-facts.env, tarred, base64."""
    return base64.b64encode(bundle_tarball({**bundle, "stack-facts.env": (facts, 0o644)})).decode() + "\n"


@dataclass(frozen=True)
class HostConnection:
    host: pulumi.Input[str]
    port: int
    private_key: pulumi.Input[str]

    def args(self) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(host=self.host, port=self.port, user=SSH_USER, private_key=self.private_key,
                                     dial_error_limit=60, per_dial_timeout=10)


class Provisioning(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, instance: InstanceFacts, connection: HostConnection,
                 host_identity: pulumi.Input[str], facts: pulumi.Input[str],
                 secret_versions: pulumi.Input[list[str]], opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:provision:Provisioning", name, None, opts)
        ssh = connection.args()
        bundle: Bundle = render_bundle(settings, instance.memory_mib)
        install_script = read_script("install-host.sh")

        # A new instance (replacement) starts the chain again; nothing else does.
        self.wait = remote.Command(
            f"{name}-wait-for-host", connection=ssh, create=wait_command(), triggers=[host_identity],
            opts=pulumi.ResourceOptions(parent=self))
        self.install = remote.Command(
            f"{name}-install-docker", connection=ssh, create=install_command(), stdin=install_script,
            triggers=[host_identity, sha256(install_script + install_command())],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.wait]))
        facts_output = pulumi.Output.from_input(facts)
        content_triggers = [host_identity, bundle_digest(bundle), facts_output.apply(sha256)]
        self.copy = remote.Command(
            f"{name}-copy-bundle", connection=ssh, create=copy_command(),
            stdin=facts_output.apply(lambda text: upload_payload(bundle, text)),
            triggers=content_triggers, opts=pulumi.ResourceOptions(parent=self, depends_on=[self.wait]))
        # The converge also re-runs for a new secret value (its version id, never the value itself).
        versions_digest = pulumi.Output.from_input(secret_versions).apply(lambda ids: sha256("\n".join(ids)))
        self.converge = remote.Command(
            f"{name}-converge", connection=ssh, create=converge_command(),
            triggers=[*content_triggers, versions_digest],
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self.install, self.copy],
                # deploy.sh logs names and states only, but its output is treated as sensitive anyway.
                additional_secret_outputs=["stdout", "stderr"]))

        self.register_outputs({"converge_stdout": self.converge.stdout})
