"""Secrets: generated with pulumi-random, kept in Secrets Manager, read on the host by the instance role.

Values stay secret Outputs end to end: encrypted in Pulumi state, never in a command string, user
data or a copied file. Secrets a restore needs (database, restic and Gitea keys) outlive a destroy
when `retainDataOnDestroy` is set, because the retained backups are useless without them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from gitea_stack.settings import Settings

# Secret key -> length. Letters and digits only: no quoting pitfalls in env files, URLs or shells,
# and 40+ such characters carry more than 230 bits.
GENERATED_SECRETS: dict[str, int] = {
    "postgres-password": 40,
    "gitea-admin-password": 40,
    "gitea-secret-key": 64,
    "gitea-internal-token": 64,
    "runner-registration-token": 40,
    "metrics-token": 40,
    "restic-password": 64,
}
# Secrets of the observability plane: nothing stored depends on them (deploy.sh applies them to
# Grafana's administrator and the database's monitoring role at every converge), so an adopting
# stack makes new ones, and a destroy removes them.
PLANE_SECRETS: dict[str, int] = {
    "grafana-admin-password": 40,
    "postgres-exporter-password": 40,
}
# The old stack's restic password, when `restoreFrom.password` gives it as a config value.
RESTORE_FROM_PASSWORD = "restore-from-password"


def secret_name_prefix(settings: Settings, key: str) -> str:
    # A prefix, not a fixed name: AWS keeps a deleted secret's name for its recovery window, and a
    # retained secret must not block the next `pulumi up` of the same stack.
    return f"gitea-stack/{settings.stack}/{key}-"


@dataclass(frozen=True)
class StoredSecret:
    """A secret in Secrets Manager, by what the stack needs of it: a new value is a new version id."""
    arn: pulumi.Input[str]
    name: pulumi.Input[str]
    version_id: pulumi.Input[str]


@dataclass(frozen=True)
class KeptSecret:
    """A secret a destroyed stack left behind, which this stack reads and never changes."""
    arn: str
    name: str
    version_id: pulumi.Input[str]
    value: pulumi.Output[str]


def store_secret(resource_name: str, key: str, value: pulumi.Input[str], settings: Settings,
                 parent: pulumi.Resource, retain: bool) -> StoredSecret:
    """A Secrets Manager secret holding `value`; with `retain`, destroy leaves it in AWS."""
    opts = pulumi.ResourceOptions(parent=parent, retain_on_delete=retain)
    secret = aws.secretsmanager.Secret(
        resource_name, name_prefix=secret_name_prefix(settings, key),
        description=f"gitea-stack {settings.stack}: {key}",
        recovery_window_in_days=settings.secret_recovery_window_days,
        tags=settings.tags, opts=opts)
    version = aws.secretsmanager.SecretVersion(
        f"{resource_name}-value", secret_id=secret.id,
        secret_string=pulumi.Output.secret(value), opts=opts)
    return StoredSecret(secret.arn, secret.name, version.version_id)


class StackSecrets(pulumi.ComponentResource):
    """The generated secrets of one stack. `values[key]` are secret Outputs, `stored[key]` the AWS secrets.

    With `kept` (adoption) the stack generates nothing: it uses the secrets a destroyed stack left,
    so the data encrypted with them opens, and its own destroy leaves them alone.
    `restore_from_password` is the secret holding `restoreFrom.password`, when that is given; it is
    not among `stored`, since only a restore reads it (and the role reads it by a grant of its own).
    """

    def __init__(self, name: str, settings: Settings, kept: dict[str, KeptSecret] | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:secrets:StackSecrets", name, None, opts)
        self.values: dict[str, pulumi.Output[str]] = {}
        self.stored: dict[str, StoredSecret] = {}
        self.restore_from_password: StoredSecret | None = None
        if settings.restore_from and settings.restore_from.password:
            # Not retained: the old stack still holds the password, and the config holds it too.
            self.restore_from_password = store_secret(
                f"{name}-{RESTORE_FROM_PASSWORD}-secret", RESTORE_FROM_PASSWORD,
                pulumi.Output.secret(settings.restore_from.password), settings, parent=self, retain=False)
        if kept:
            for key, secret in kept.items():
                self.values[key] = secret.value
                self.stored[key] = StoredSecret(secret.arn, secret.name, secret.version_id)
        else:
            for key, length in GENERATED_SECRETS.items():
                self.generate(name, key, length, settings, retain=settings.retain_data_on_destroy)
        for key, length in PLANE_SECRETS.items():
            self.generate(name, key, length, settings, retain=False)
        self.register_outputs({"secret_names": {key: s.name for key, s in self.stored.items()}})

    def generate(self, name: str, key: str, length: int, settings: Settings, retain: bool) -> None:
        generated = random.RandomPassword(
            f"{name}-{key}", length=length, special=False, min_lower=1, min_upper=1, min_numeric=1,
            opts=pulumi.ResourceOptions(parent=self))
        self.values[key] = pulumi.Output.secret(generated.result)
        self.stored[key] = store_secret(f"{name}-{key}-secret", key, self.values[key], settings, parent=self,
                                        retain=retain)
