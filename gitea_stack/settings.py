"""The stack config (namespace `gitea-stack`): one frozen dataclass, validated once on load.

`parse_settings` is pure. It takes the stack's config values as Pulumi hands them to a program
(strings; JSON for lists and objects) or as plain Python values (tests), and returns `Settings` or
raises `SettingsError` listing every problem at once, each naming its key as written in the stack
file and what was expected. Components receive `Settings`; they never read config themselves.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gitea_stack.versions import DEFAULT_IMAGES, image_tag, postgres_major

NAMESPACE = "gitea-stack"

# Names Gitea refuses for accounts (models/user reserved names); an admin called "admin" would
# fail only on the host, long after `pulumi up` started.
RESERVED_GITEA_USERNAMES = frozenset({
    "admin", "api", "assets", "attachments", "avatar", "avatars", "captcha", "commit", "debug",
    "error", "explore", "favicon.ico", "ghost", "gitea-actions", "issues", "login", "manifest.json",
    "metrics", "milestones", "new", "notifications", "org", "pulls", "raw", "repo", "repo-avatars",
    "robots.txt", "search", "serviceworker.js", "ssh_info", "swagger.v1.json", "user", "v2",
})
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
# nginx owns these on the host, so neither SSH port may take them.
HTTP_PORTS = (80, 443)
# Outbound TCP ports the host always has (package mirrors, ACME, AWS APIs, registries, SES SMTP).
BASE_EGRESS_PORTS = (80, 443, 587)
# A security group holds 60 rules per direction by default; leave room for the base ones.
MAX_EXTRA_EGRESS_PORTS = 40
# Retention periods CloudWatch Logs accepts (PutRetentionPolicy); anything else is refused by AWS.
CLOUDWATCH_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                             2557, 2922, 3288, 3653)
# Admin SSH ranges, merged, may be no wider than this: an ISP's or a cloud region's block at most.
# Several ranges that add up to the whole internet are as open as 0.0.0.0/0.
WIDEST_ADMIN_PREFIX = {4: 8, 6: 16}
# The stack name is part of AWS names: `gitea-stack-<stack>-backups-` must stay within the 37
# characters S3 allows a bucket name prefix (63 less the 26 the provider appends), in lowercase.
STACK_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?$")
STACK_NAME_RULE = ("1 to 16 lowercase letters, digits and hyphens, starting and ending with a letter or digit "
                   "(it becomes part of AWS names such as the backup bucket gitea-stack-<stack>-backups-...)")


@dataclass(frozen=True)
class Adoption:
    """What a stack takes over from an earlier one that `pulumi destroy` left behind (`adopt`).

    Adopted resources are used, never managed: this stack attaches the volume and reads the bucket
    and secrets, and its own destroy leaves all three exactly as they are.
    """
    data_volume_id: str = ""
    backup_bucket: str = ""
    secrets_from_stack: str = ""

    def __bool__(self) -> bool:
        return bool(self.data_volume_id or self.backup_bucket or self.secrets_from_stack)


@dataclass(frozen=True)
class RestoreSource:
    """Where a new stack restores its forge from (`restoreFrom`): another stack's restic backups.

    The bucket is only read. The restic password is either a Secrets Manager secret the operator
    names (`password_secret_arn`) or a secret config value (`password`) that this stack stores in a
    secret of its own. `region` is "" when it is the stack's own region.
    """
    bucket: str
    region: str = ""
    password_secret_arn: str = ""
    # Plaintext only in memory: never in a repr, a message or a resource input outside a Pulumi secret.
    password: str = field(default="", repr=False)

    def region_or(self, stack_region: str) -> str:
        return self.region or stack_region


class FieldProblem(ValueError):
    """A bad field of a map-valued key; the problem line names `<key>.<field>` (field "": the key itself)."""

    def __init__(self, field_name: str, message: str):
        self.field_name = field_name
        super().__init__(message)


class SettingsError(ValueError):
    """Bad stack config. `problems` holds one line per problem, each starting with its key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"the stack config has {count}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Settings:
    stack: str
    domain: str
    hosted_zone: str
    acme_email: str
    alert_emails: tuple[str, ...]
    admin_username: str
    admin_email: str
    ssh_allowed_cidrs: tuple[str, ...]
    admin_ssh_port: int
    git_ssh_port: int
    instance_type: str
    root_volume_gib: int
    data_volume_gib: int
    backup_retention_days: int
    retain_data_on_destroy: bool
    secret_recovery_window_days: int
    images: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_IMAGES)))
    acme_server: str = LETS_ENCRYPT_DIRECTORY
    aws_endpoint_url: str = ""
    extra_egress_ports: tuple[int, ...] = ()
    audit_log_retention_days: int = 365
    adopt: Adoption = Adoption()
    snapshot_retention_days: int = 7
    backup_schedule: str = "hourly"
    restore_from: RestoreSource | None = None
    metrics_retention_days: int = 30
    logs_retention_days: int = 30

    @property
    def tags(self) -> dict[str, str]:
        """Tags every taggable resource carries, so the estate can be found and costed by stack."""
        return {"Project": NAMESPACE, "Stack": self.stack, "ManagedBy": "pulumi"}

    @property
    def https_url(self) -> str:
        return f"https://{self.domain}/"

    def https_clone_url(self, owner: str, repository: str) -> str:
        return f"https://{self.domain}/{owner}/{repository}.git"

    def ssh_clone_url(self, owner: str, repository: str) -> str:
        # scp-like syntax cannot carry a port, so a non-standard git port needs the ssh:// form.
        if self.git_ssh_port == 22:
            return f"git@{self.domain}:{owner}/{repository}.git"
        return f"ssh://git@{self.domain}:{self.git_ssh_port}/{owner}/{repository}.git"

    @property
    def mail_from_domain(self) -> str:
        """Custom MAIL FROM subdomain, so SPF aligns with the sending domain for DMARC."""
        return f"mail.{self.domain}"


# --- value parsers: each returns the parsed value or raises ValueError(what was expected) ---

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_INSTANCE_TYPE = re.compile(
    r"^(?P<family>[a-z]+\d+[a-z0-9-]*)\.(?P<size>nano|micro|small|medium|large|\d*xlarge|metal(-\d+xl)?)$"
)
_IMAGE_NAME = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:\d+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


def parse_fqdn(value: Any) -> str:
    expected = "a fully qualified domain name such as git.example.com"
    if not isinstance(value, str):
        raise ValueError(expected)
    name = value.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(expected)
    if labels[-1].isdigit():
        raise ValueError(expected + " (not an IP address)")
    return name


def parse_email(value: Any) -> str:
    expected = "an e-mail address such as ops@example.com"
    if not isinstance(value, str) or value.count("@") != 1:
        raise ValueError(expected)
    local, domain = value.strip().split("@")
    try:
        domain = parse_fqdn(domain)
    except ValueError:
        raise ValueError(expected) from None
    if not _EMAIL_LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(expected)
    return f"{local}@{domain}"


def _from_json(value: Any) -> Any:
    """A list or map as the engine hands it to a program (a JSON string), or as it is; None for bad JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None


def _parse_list(value: Any, what: str) -> list[Any]:
    expected = f"a non-empty list of {what}"
    value = _from_json(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(expected)
    return list(value)


def parse_email_list(value: Any) -> tuple[str, ...]:
    items = _parse_list(value, "e-mail addresses")
    parsed = []
    for item in items:
        try:
            parsed.append(parse_email(item))
        except ValueError:
            raise ValueError(f"a non-empty list of e-mail addresses; {item!r} is not one") from None
    return tuple(dict.fromkeys(parsed))


def parse_cidr_list(value: Any) -> tuple[str, ...]:
    items = _parse_list(value, "IPv4 or IPv6 CIDR blocks such as 203.0.113.0/24")
    parsed = []
    for item in items:
        if not isinstance(item, str) or "/" not in item:
            raise ValueError(f"CIDR blocks with a prefix length; {item!r} has none (a single host is /32 or /128)")
        try:
            network = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError:
            try:
                hint = f" (did you mean {ipaddress.ip_network(item.strip(), strict=False)}?)"
            except ValueError:
                hint = ""
            raise ValueError(f"IPv4 or IPv6 CIDR blocks; {item!r} is not one{hint}") from None
        if network.prefixlen == 0:
            raise ValueError(f"CIDR blocks narrower than the whole internet; {item} would open admin SSH to everyone")
        parsed.append(str(network))
    for version, widest in WIDEST_ADMIN_PREFIX.items():
        together = ipaddress.collapse_addresses(
            ipaddress.ip_network(cidr) for cidr in parsed if ipaddress.ip_network(cidr).version == version)
        too_wide = [str(network) for network in together if network.prefixlen < widest]
        if too_wide:
            raise ValueError(
                f"CIDR blocks that together are no wider than /{widest} each for IPv{version}; these cover "
                f"{', '.join(too_wide)}, which would open admin SSH to a large part of the internet")
    return tuple(dict.fromkeys(parsed))


def _parse_int(value: Any, low: int, high: int, expected: str) -> int:
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(expected)
    return value


def int_parser(low: int, high: int, expected: str | None = None) -> Callable[[Any], int]:
    return lambda value: _parse_int(value, low, high, expected or f"an integer from {low} to {high}")


parse_port = int_parser(1, 65535, "a TCP port from 1 to 65535")


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("true or false")


def parse_recovery_window(value: Any) -> int:
    days = _parse_int(value, 0, 30, "0 (delete at once) or a number of days from 7 to 30")
    if 0 < days < 7:
        raise ValueError("0 (delete at once) or a number of days from 7 to 30")
    return days


def parse_instance_type(value: Any) -> str:
    if not isinstance(value, str) or not _INSTANCE_TYPE.match(value.strip()):
        raise ValueError("an EC2 instance type of the form family.size, such as t3.medium or t4g.large")
    return value.strip()


def parse_username(value: Any) -> str:
    expected = "a Gitea user name: 1-40 letters, digits, '-', '_' or '.', starting with a letter or digit"
    if not isinstance(value, str) or not _USERNAME.match(value) or re.search(r"[-._]{2,}|[-._]$", value):
        raise ValueError(expected)
    if value.lower() in RESERVED_GITEA_USERNAMES:
        raise ValueError(f"a user name Gitea does not reserve for itself ({value!r} is reserved)")
    return value


def parse_image_reference(value: Any) -> str:
    expected = "an image reference with an exact tag or digest, such as docker.io/library/nginx:1.30.1-alpine"
    if not isinstance(value, str):
        raise ValueError(expected)
    name, _, digest = value.partition("@")
    tag = ""
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1:]:
        name, tag = name.rsplit(":", 1)
    if not _IMAGE_NAME.match(name) or (tag and not _IMAGE_TAG.match(tag)) or (digest and not _IMAGE_DIGEST.match(digest)):
        raise ValueError(expected)
    if not tag and not digest:
        raise ValueError(expected + " (an untagged image means latest)")
    if tag == "latest" or tag.startswith("latest-"):
        raise ValueError(expected + " (latest moves under you; pin a release)")
    return value


def _parse_url(value: Any, schemes: tuple[str, ...], expected: str) -> str:
    if not isinstance(value, str):
        raise ValueError(expected)
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise ValueError(expected)
    return value.strip()


def parse_acme_server(value: Any) -> str:
    return _parse_url(value, ("https",), "the https URL of an ACME directory, such as "
                      "https://acme-staging-v02.api.letsencrypt.org/directory")


def parse_endpoint_url(value: Any) -> str:
    return _parse_url(value, ("http", "https"), "an http(s) URL of an AWS API endpoint, without credentials")


def parse_extra_egress_ports(value: Any) -> tuple[int, ...]:
    expected = (f"a list of up to {MAX_EXTRA_EGRESS_PORTS} TCP ports, such as [22, 9418] for pull mirrors "
                "over SSH and git://")
    value = _from_json(value)
    if not isinstance(value, (list, tuple)) or len(value) > MAX_EXTRA_EGRESS_PORTS:
        raise ValueError(expected)
    ports = []
    for item in value:
        port = _parse_int(item, 1, 65535, f"{expected}; {item!r} is not a port from 1 to 65535")
        if port in BASE_EGRESS_PORTS:
            raise ValueError(f"{expected}; {port} is always open (80, 443 and 587 are)")
        if port in ports:
            raise ValueError(f"{expected}; {port} is listed twice")
        ports.append(port)
    return tuple(sorted(ports))


def parse_cloudwatch_retention(value: Any) -> int:
    allowed = ", ".join(str(days) for days in CLOUDWATCH_RETENTION_DAYS)
    expected = f"a number of days CloudWatch Logs accepts: {allowed}"
    days = _parse_int(value, 1, CLOUDWATCH_RETENTION_DAYS[-1], expected)
    if days not in CLOUDWATCH_RETENTION_DAYS:
        lower = max(d for d in CLOUDWATCH_RETENTION_DAYS if d < days)
        higher = min(d for d in CLOUDWATCH_RETENTION_DAYS if d > days)
        raise ValueError(f"{expected} (the nearest are {lower} and {higher})")
    return days


_VOLUME_ID = re.compile(r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_BUCKET_NAME = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ADOPT_KEYS = {"dataVolumeId": "data_volume_id", "backupBucket": "backup_bucket",
              "secretsFromStack": "secrets_from_stack"}


def parse_adoption(value: Any) -> Adoption:
    expected = ("a map with any of dataVolumeId (vol-...), backupBucket (a bucket name) and secretsFromStack "
                "(the stack whose kept secrets to reuse)")
    value = _from_json(value)
    if not isinstance(value, Mapping) or not value:
        raise ValueError(expected)
    unknown = sorted(set(value) - set(ADOPT_KEYS))
    if unknown:
        raise ValueError(f"{expected}; {unknown[0]!r} is not one of them")
    checks = {
        "dataVolumeId": (_VOLUME_ID, "an EBS volume id such as vol-0123456789abcdef0"),
        "backupBucket": (_BUCKET_NAME, "an S3 bucket name"),
        "secretsFromStack": (STACK_NAME, "a stack name (" + STACK_NAME_RULE + ")"),
    }
    fields = {}
    for key, item in value.items():
        pattern, what = checks[key]
        if not isinstance(item, str) or not pattern.match(item.strip()):
            raise ValueError(f"{what} for adopt.{key}, got {_describe(item)}")
        fields[ADOPT_KEYS[key]] = item.strip()
    adoption = Adoption(**fields)
    if adoption.data_volume_id and not adoption.secrets_from_stack:
        raise ValueError("adopt.secretsFromStack together with adopt.dataVolumeId: the forge on that volume was "
                         "encrypted with its stack's gitea-secret-key and only opens with the same secrets")
    return adoption


# Names S3 reserves for itself (access points, Object Lambda, directory buckets, its documentation).
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def is_s3_bucket_name(name: str) -> bool:
    """S3's rules for general purpose bucket names."""
    return (bool(_BUCKET_NAME.match(name)) and ".-" not in name and "-." not in name
            and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name)
            and not name.startswith(_RESERVED_BUCKET_PREFIXES) and not name.endswith(_RESERVED_BUCKET_SUFFIXES))


_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
_SECRET_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:secretsmanager:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2}):\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}$")
RESTORE_FROM_FIELDS = ("bucket", "passwordSecret", "password", "region")


# restoreFrom.password as commands outside the engine (preflight, render) see it: still encrypted.
ENCRYPTED_PASSWORD = "<encrypted in the stack file>"


def _is_encrypted_in_stack_file(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"secure"} and isinstance(value["secure"], str)


def parse_restore_source(value: Any) -> RestoreSource:
    """`restoreFrom`: {bucket, passwordSecret | password, region?}. No message ever shows the password."""
    expected = ("a map {bucket: <the old stack's backup bucket>, passwordSecret: <ARN of its restic-password "
                "secret>, region: <the bucket's region, optional>}, or password (a secret config value) "
                "instead of passwordSecret")
    value = _from_json(value)
    if not isinstance(value, Mapping):
        raise FieldProblem("", f"expected {expected}")
    unknown = sorted(set(value) - set(RESTORE_FROM_FIELDS))
    if unknown:
        raise FieldProblem(unknown[0], f"unknown field; expected one of {', '.join(RESTORE_FROM_FIELDS)}")

    def text(name: str) -> str:
        item = value.get(name)
        return item.strip() if isinstance(item, str) else ""

    bucket = text("bucket")
    if not is_s3_bucket_name(bucket):
        got = "nothing" if "bucket" not in value else _describe(value["bucket"])
        raise FieldProblem("bucket", "expected an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens, "
                                     f"starting and ending with a letter or digit, not an IP address), got {got}")
    if ("passwordSecret" in value) == ("password" in value):
        raise FieldProblem("passwordSecret", "expected exactly one of restoreFrom.passwordSecret (the ARN of the old "
                                             "stack's restic-password secret) and restoreFrom.password (a secret "
                                             "config value)")
    arn = text("passwordSecret")
    arn_match = _SECRET_ARN.match(arn)
    if "passwordSecret" in value and not arn_match:
        raise FieldProblem("passwordSecret", "expected a Secrets Manager secret ARN such as arn:aws:secretsmanager:"
                                             "eu-central-1:123456789012:secret:gitea-stack/old/restic-password-AbCdEf, "
                                             f"got {_describe(value['passwordSecret'])}")
    password = value.get("password")
    if _is_encrypted_in_stack_file(password):
        password = ENCRYPTED_PASSWORD
    if "password" in value and (not isinstance(password, str) or not password):
        raise FieldProblem("password", "expected the old stack's restic password as a non-empty secret config value "
                                       "(pulumi config set --secret --path gitea-stack:restoreFrom.password)")
    region = text("region")
    if "region" in value and not _REGION.match(region):
        raise FieldProblem("region", f"expected an AWS region name such as eu-central-1, got {_describe(value['region'])}")
    return RestoreSource(bucket=bucket, region=region or (arn_match["region"] if arn_match else ""),
                         password_secret_arn=arn, password=password if isinstance(password, str) else "")


_CALENDAR_SHORTHANDS = ("minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually", "yearly")
_CALENDAR_EXPRESSION = re.compile(
    r"^(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)(?:(?:\.\.|,)(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun))*\s+)?"  # weekdays
    r"(?:[0-9*][0-9*./,~-]*\s+)?"  # date: year-month-day
    r"[0-9*][0-9*/,]*:[0-9*][0-9*/,]*(?::[0-9*][0-9*/,.]*)?"  # time: hour:minute[:second]
    r"(?:\s+(?:UTC|[A-Za-z_]+/[A-Za-z_+-]+))?$")


def parse_calendar(value: Any) -> str:
    """A systemd OnCalendar expression (systemd.time(7)); the host's systemd has the last word."""
    expected = ("a systemd OnCalendar expression, such as hourly, daily, *:0/30 (every 30 minutes) or "
                "*-*-* 02:00:00")
    if not isinstance(value, str):
        raise ValueError(expected)
    text = " ".join(value.split())
    if text.lower() in _CALENDAR_SHORTHANDS:
        return text.lower()
    if not _CALENDAR_EXPRESSION.match(text):
        raise ValueError(expected)
    return text


def parse_images(value: Any) -> Mapping[str, str]:
    value = _from_json(value)
    if not isinstance(value, Mapping):
        raise ValueError("a map of service name to image reference, such as {nginx: docker.io/library/nginx:1.30.1-alpine}")
    images = dict(DEFAULT_IMAGES)
    for service, reference in value.items():
        if service not in DEFAULT_IMAGES:
            raise ValueError(f"service names among {', '.join(sorted(DEFAULT_IMAGES))}; {service!r} is not one")
        try:
            images[service] = parse_image_reference(reference)
        except ValueError as problem:
            raise ValueError(f"{problem}, for service {service!r}") from None
    _check_gitea_rootless(images["gitea"])
    _check_postgres_major(images["postgres"])
    return MappingProxyType(images)


def _check_gitea_rootless(reference: str) -> None:
    # The rootless image keeps everything under /var/lib/gitea and /etc/gitea, which the stack puts
    # on the data volume; the root image writes to /data, which would land on the root disk.
    if "rootless" not in image_tag(reference).split("-"):
        raise ValueError(f"a rootless Gitea image (a -rootless tag, such as 1.27.3-rootless) for service "
                         f"'gitea', got {reference!r}; the root image keeps its data where the data volume is not")


def _check_postgres_major(reference: str) -> None:
    # The data directory belongs to one major version; the converge compares the two and refuses a mismatch.
    if postgres_major(reference) is None:
        raise ValueError(f"a postgres image whose tag starts with its version, such as 18.6-bookworm, for service "
                         f"'postgres', got {reference!r}; the major version must be known to protect the data")



# --- the contract: key as written in the stack file -> (Settings field, parser, default) ---

_REQUIRED = object()


@dataclass(frozen=True)
class Key:
    name: str
    field: str
    parse: Callable[[Any], Any]
    default: Any = _REQUIRED


KEYS: tuple[Key, ...] = (
    Key("domain", "domain", parse_fqdn),
    Key("hostedZone", "hosted_zone", parse_fqdn, None),  # None: derived from domain below
    Key("acmeEmail", "acme_email", parse_email),
    Key("alertEmails", "alert_emails", parse_email_list),
    Key("adminUsername", "admin_username", parse_username, "gitea-admin"),
    Key("adminEmail", "admin_email", parse_email, None),  # None: acmeEmail
    Key("sshAllowedCidrs", "ssh_allowed_cidrs", parse_cidr_list),
    Key("adminSshPort", "admin_ssh_port", parse_port, 2222),
    Key("gitSshPort", "git_ssh_port", parse_port, 22),
    Key("instanceType", "instance_type", parse_instance_type, "t3.medium"),
    Key("rootVolumeGiB", "root_volume_gib", int_parser(8, 16384, "a size in GiB from 8 (the Ubuntu image) to 16384"), 20),
    Key("dataVolumeGiB", "data_volume_gib", int_parser(1, 16384, "a size in GiB from 1 to 16384"), 50),
    Key("backupRetentionDays", "backup_retention_days", int_parser(1, 3650, "a number of days from 1 to 3650"), 30),
    Key("retainDataOnDestroy", "retain_data_on_destroy", parse_bool, True),
    Key("secretRecoveryWindowDays", "secret_recovery_window_days", parse_recovery_window, 0),
    Key("images", "images", parse_images, MappingProxyType(dict(DEFAULT_IMAGES))),
    Key("acmeServer", "acme_server", parse_acme_server, LETS_ENCRYPT_DIRECTORY),
    Key("awsEndpointUrl", "aws_endpoint_url", parse_endpoint_url, ""),
    Key("extraEgressPorts", "extra_egress_ports", parse_extra_egress_ports, ()),
    Key("auditLogRetentionDays", "audit_log_retention_days", parse_cloudwatch_retention, 365),
    Key("adopt", "adopt", parse_adoption, Adoption()),
    Key("backupSchedule", "backup_schedule", parse_calendar, "hourly"),
    Key("snapshotRetentionDays", "snapshot_retention_days",
        int_parser(1, 365, "a number of days from 1 to 365 (one snapshot a day is kept that long)"), 7),
    Key("restoreFrom", "restore_from", parse_restore_source, None),  # None: no restore
    Key("metricsRetentionDays", "metrics_retention_days",
        int_parser(1, 3650, "a number of days from 1 to 3650 (Prometheus keeps samples that long)"), 30),
    Key("logsRetentionDays", "logs_retention_days",
        int_parser(1, 3650, "a number of days from 1 to 3650 (Loki keeps logs that long)"), 30),
)
KEY_NAMES = tuple(key.name for key in KEYS)


def qualified(key: str) -> str:
    return f"{NAMESPACE}:{key}"


def _describe(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "...'"


def parse_settings(raw: Mapping[str, Any], stack: str) -> Settings:
    """Builds Settings from the stack's `gitea-stack:*` values (keys without the namespace)."""
    problems: list[str] = []
    if not STACK_NAME.match(stack):
        problems.append(f"stack name: expected {STACK_NAME_RULE}, got {stack!r}")
    problems.extend(unknown_key_problems(NAMESPACE, set(raw), KEY_NAMES))

    values: dict[str, Any] = {}
    for key in KEYS:
        value = raw.get(key.name)
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if key.default is _REQUIRED:
                try:
                    key.parse(None)
                except ValueError as expected:
                    problems.append(f"{qualified(key.name)}: required; expected {expected}")
                values[key.field] = None
            else:
                values[key.field] = key.default
            continue
        try:
            values[key.field] = key.parse(value)
        except FieldProblem as problem:
            name = f"{key.name}.{problem.field_name}" if problem.field_name else key.name
            problems.append(f"{qualified(name)}: {problem}")
            values[key.field] = None
        except ValueError as expected:
            problems.append(f"{qualified(key.name)}: expected {expected}, got {_describe(value)}")
            values[key.field] = None

    problems.extend(_cross_check(values, raw))
    problems.extend(_restore_source_problems(values["restore_from"], values["adopt"], stack))
    if problems:
        raise SettingsError(problems)
    return Settings(stack=stack, **values)


def _cross_check(values: dict[str, Any], raw: Mapping[str, Any]) -> list[str]:
    """Checks between keys; fills the defaults that derive from other keys."""
    problems = []
    domain = values["domain"]
    if values["hosted_zone"] is None and domain:
        labels = domain.split(".")
        values["hosted_zone"] = ".".join(labels[1:]) if len(labels) > 2 else domain
    zone = values["hosted_zone"]
    if domain and zone and domain != zone and not domain.endswith("." + zone):
        problems.append(f"{qualified('hostedZone')}: expected the zone that holds {domain}, got {zone!r}")
    if values["admin_email"] is None:
        values["admin_email"] = values["acme_email"]

    admin_port, git_port = values["admin_ssh_port"], values["git_ssh_port"]
    for key, port in (("adminSshPort", admin_port), ("gitSshPort", git_port)):
        if port in HTTP_PORTS:
            problems.append(f"{qualified(key)}: expected a port other than 80 and 443 (nginx serves those), got {port}")
    if admin_port is not None and admin_port == git_port:
        problems.append(
            f"{qualified('gitSshPort')}: expected a port different from {qualified('adminSshPort')} "
            f"(both are {git_port}); git and the host's sshd cannot share a port"
        )
    return problems


def own_backup_bucket_prefix(stack: str) -> str:
    """The name every backup bucket this stack creates starts with (storage.BackupBucket's bucket_prefix)."""
    return f"gitea-stack-{stack}-backups-"


def _restore_source_problems(source: RestoreSource | None, adoption: Adoption | None, stack: str) -> list[str]:
    if source is None:
        return []
    problems = []
    if adoption and adoption.data_volume_id:
        problems.append(f"{qualified('restoreFrom')}: expected no restore together with "
                        f"{qualified('adopt')}.dataVolumeId: an adopted volume already holds a forge, and a restore "
                        "is only for a new, empty one")
    own_bucket = adoption.backup_bucket if adoption else ""
    if source.bucket == own_bucket:
        problems.append(f"{qualified('restoreFrom.bucket')}: expected another stack's backup bucket, got "
                        f"{source.bucket!r}, which this stack adopts and writes its own backups to")
    elif source.bucket.startswith(own_backup_bucket_prefix(stack)):
        # Buckets of that name are the ones this stack creates and writes; a restore reads a bucket no
        # one writes to meanwhile. A stack restoring an old stack of the same name needs another name.
        problems.append(f"{qualified('restoreFrom.bucket')}: expected another stack's backup bucket, got "
                        f"{source.bucket!r}: {own_backup_bucket_prefix(stack)}... is the name of this stack's own "
                        "backup bucket, which it writes to; restore into a stack with another name")
    return problems


# --- checks beyond the stack's own keys -------------------------------------------------------------

# Names and networks reserved for documentation (RFC 2606, 6761, 5737, 3849). The example stack file
# is written in them; a stack that still holds one was copied and not filled in.
# Tests run the program and commands with the example stack's names; nothing else may.
ALLOW_PLACEHOLDERS_VARIABLE = "GITEA_STACK_ALLOW_PLACEHOLDERS"
PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org", "example", "test", "invalid", "localhost")
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(network) for network in
                               ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def _is_placeholder_domain(name: str) -> bool:
    return any(name == domain or name.endswith("." + domain) for domain in PLACEHOLDER_DOMAINS)


def placeholder_problems(settings: Settings) -> list[str]:
    """Values left over from the example stack file, which no real deploy can use."""
    problems = []
    names = {"domain": [settings.domain], "hostedZone": [settings.hosted_zone],
             "acmeEmail": [settings.acme_email], "alertEmails": list(settings.alert_emails),
             "adminEmail": [settings.admin_email]}
    for key, values in names.items():
        placeholders = [value for value in values if _is_placeholder_domain(value.rpartition("@")[2])]
        if placeholders:
            problems.append(f"{qualified(key)}: expected your own, got the placeholder {placeholders[0]!r} "
                            "(example.com and the like are reserved for documentation)")
    documentation = [cidr for cidr in settings.ssh_allowed_cidrs
                     if any(ipaddress.ip_network(cidr).overlaps(network) for network in DOCUMENTATION_NETWORKS)]
    if documentation:
        problems.append(f"{qualified('sshAllowedCidrs')}: expected the networks you administer from, got the "
                        f"documentation range {documentation[0]} (reserved for examples; it reaches no one)")
    return problems


def unknown_key_problems(namespace: str, keys: list[str] | tuple[str, ...] | set[str],
                         known: tuple[str, ...]) -> list[str]:
    """`namespace:key` settings that `known` lacks, each with the nearest known key when there is one."""
    problems = []
    for unknown in sorted(set(keys) - set(known)):
        close = difflib.get_close_matches(unknown, known, n=1)
        hint = f"did you mean {namespace}:{close[0]}?" if close else f"known keys: {', '.join(known)}"
        problems.append(f"{namespace}:{unknown}: unknown key; {hint}")
    return problems
