"""Preflight: `python -m gitea_stack preflight --stack prod` checks, before a first `pulumi up`, what
would make the deploy fail half-way: images that do not exist for the instance's architecture,
Docker packages missing from Docker's apt repository, a missing or private hosted zone, an instance
type too small or not sold in the region, SES unavailable or in the sandbox, no Elastic IP left;
with `restoreFrom`, a bucket without a restic repository (or in another region) or a missing
password secret.

Each check returns `CheckResult` records (OK, WARN or FAIL). Reading registry manifests, apt
Packages files and WWW-Authenticate headers, and judging AWS's answers, are pure functions; only
the `check_*` functions talk to AWS (boto3, which honours AWS_ENDPOINT_URL by itself) or to
registries (their plain HTTP APIs, through urllib).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import ipaddress
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from email.message import Message
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from gitea_stack.checks import (
    AWS_CLIENT_CONFIG,
    FAIL,
    OK,
    SES_PRODUCTION_ACCESS_URL,
    WARN,
    CheckResult,
    aws_error_result,
    error_code,
    format_table_with_verdicts,
    stack_session,
    summarise,
)
from gitea_stack.cli import StackFileProblem, read_stack, stack_region
from gitea_stack.settings import (
    ALLOW_PLACEHOLDERS_VARIABLE,
    RestoreSource,
    Settings,
    SettingsError,
    placeholder_problems,
    qualified,
)
from gitea_stack.sizing import InstanceTypeError, host_architecture, instance_facts
from gitea_stack.versions import DOCKER_PACKAGES

# Docker's apt repository; GITEA_STACK_DOCKER_APT_URL points the check at a mirror (or a stand-in).
DOCKER_APT_URL = "https://download.docker.com/linux/ubuntu"
DOCKER_APT_URL_VARIABLE = "GITEA_STACK_DOCKER_APT_URL"
UBUNTU_CODENAME = "noble"  # the host runs Ubuntu 24.04
# OCI platforms and Debian both call EC2's x86_64 "amd64".
PLATFORM_ARCHITECTURE = {"x86_64": "amd64", "arm64": "arm64"}
ELASTIC_IP_QUOTA_CODE = "L-0263D0A3"  # EC2-VPC Elastic IPs
DEFAULT_ELASTIC_IP_QUOTA = 5
HTTP_TIMEOUT_SECONDS = 20
USER_AGENT = "gitea-stack-preflight"
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

Progress = Callable[[str], None]


# --- HTTP: registries and the apt repository -------------------------------------------------------

class Unreachable(Exception):
    """No HTTP answer at all (DNS, connection, TLS or timeout)."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Message
    body: bytes


def http_get(url: str, headers: Mapping[str, str] | None = None, authorization: str | None = None) -> HttpResponse:
    """GET that returns HTTP errors as responses; raises Unreachable when nothing answers."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    if authorization:
        # Unredirected: registries redirect blob downloads to pre-signed storage URLs, which refuse a
        # second form of authentication and must not see the registry token anyway.
        request.add_unredirected_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return HttpResponse(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HttpResponse(error.code, error.headers, error.read())
    except urllib.error.URLError as error:
        raise Unreachable(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(str(error) or type(error).__name__) from None


# --- image references and the registry API (pure) --------------------------------------------------

@dataclass(frozen=True)
class ImageLocation:
    """Where the registry API serves an image: host[:port], repository path, tag or digest."""
    registry: str
    repository: str
    reference: str

    @property
    def base_url(self) -> str:
        # Like Docker, plain HTTP only for a registry on this machine (a local mirror or a test
        # stand-in); every other registry is asked over HTTPS.
        scheme = "http" if is_loopback_host(self.registry) else "https"
        return f"{scheme}://{self.registry}/v2/{self.repository}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/manifests/{self.reference}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base_url}/blobs/{digest}"


def is_loopback_host(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_image_location(image: str) -> ImageLocation:
    """Resolves an image reference as `docker pull` does (Docker Hub's API host, `library/`)."""
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name[name.rfind("/") + 1:]:
        name, tag = name.rsplit(":", 1)
    first, slash, rest = name.partition("/")
    # The first path component is a registry only if it looks like a host: a dot, a port or localhost.
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "docker.io", name
    if registry in ("docker.io", "index.docker.io"):
        registry = "registry-1.docker.io"
        if "/" not in repository:
            repository = f"library/{repository}"
    if not (digest or tag):
        raise ValueError(f"{image!r} has neither a tag nor a digest")
    # With both, the digest is what gets pulled; the tag is only a label.
    return ImageLocation(registry, repository, digest or tag)


_CHALLENGE_PARAMETER = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """The parameters of `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; None for other
    schemes and for a challenge without an http(s) realm."""
    scheme, _, parameters = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    found = {match[1].lower(): (match[2] if match[2] is not None else match[3])
             for match in _CHALLENGE_PARAMETER.finditer(parameters)}
    # Only a web realm: a registry must not make the check read a file:// or other local URL.
    realm_scheme = urllib.parse.urlsplit(found.get("realm", "")).scheme
    return found if realm_scheme in ("https", "http") else None


def token_url(challenge: Mapping[str, str], repository: str) -> str:
    query = {"service": challenge.get("service", ""), "scope": challenge.get("scope") or f"repository:{repository}:pull"}
    realm = challenge["realm"]
    return realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode({k: v for k, v in query.items() if v})


def token_from_response(document: Any) -> str | None:
    """The token of a token-service answer: `token`, or `access_token` (the OAuth2 spelling)."""
    if not isinstance(document, Mapping):
        return None
    token = document.get("token") or document.get("access_token")
    return token if isinstance(token, str) and token else None


def index_platforms(index: Mapping[str, Any]) -> list[str]:
    """`os/architecture[/variant]` of each image in an OCI index or Docker manifest list.

    Attestation manifests (platform unknown/unknown) are not images and are left out."""
    platforms = []
    for entry in index.get("manifests") or ():
        platform = entry.get("platform") or {}
        os_name, architecture = platform.get("os", ""), platform.get("architecture", "")
        if not os_name or not architecture or "unknown" in (os_name, architecture):
            continue
        platforms.append("/".join(part for part in (os_name, architecture, platform.get("variant", "")) if part))
    return list(dict.fromkeys(platforms))


def is_index(manifest: Mapping[str, Any]) -> bool:
    return "manifests" in manifest


def judge_platforms(check: str, image: str, platforms: list[str], architecture: str, what: str) -> CheckResult:
    wanted = f"linux/{PLATFORM_ARCHITECTURE[architecture]}"
    if any(platform == wanted or platform.startswith(wanted + "/") for platform in platforms):
        return CheckResult(check, OK, f"{image}: {wanted} found ({what})")
    has = ", ".join(platforms) or "no platform"
    return CheckResult(check, FAIL, f"{image}: no {wanted} image, which the {architecture} instance needs; "
                                    f"it has {has}")


def judge_index(check: str, image: str, index: Mapping[str, Any], architecture: str) -> CheckResult:
    platforms = index_platforms(index)
    return judge_platforms(check, image, platforms, architecture, f"index of {len(platforms)} platforms")


def judge_image_config(check: str, image: str, config: Mapping[str, Any], architecture: str) -> CheckResult:
    """A single-platform image, judged by the `os` and `architecture` of its config blob."""
    platform = "/".join(part for part in (config.get("os", "linux"), config.get("architecture", ""),
                                          config.get("variant", "")) if part)
    return judge_platforms(check, image, [platform], architecture, "single-platform image")


# --- Docker's apt repository (pure) ----------------------------------------------------------------

def parse_packages_index(text: str) -> dict[str, list[str]]:
    """Package name -> versions, in file order, from an apt `Packages` file (deb822 stanzas)."""
    versions: dict[str, list[str]] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines of multi-line fields, which this check does not need
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "package" in fields and "version" in fields:
            versions.setdefault(fields["package"], []).append(fields["version"])
    return versions


def judge_packages(available: Mapping[str, list[str]], pins: Mapping[str, str], apt_architecture: str,
                   source: str) -> list[CheckResult]:
    results = []
    for package, version in pins.items():
        check = f"apt {package}"
        listed = available.get(package, [])
        if version in listed:
            results.append(CheckResult(check, OK, f"{package}={version} in {source}"))
        elif listed:
            results.append(CheckResult(check, FAIL, f"{package}={version} is not in {source}; it lists "
                                                    f"{len(listed)} version{'s' if len(listed) != 1 else ''}, the last {listed[-1]}"))
        else:
            results.append(CheckResult(check, FAIL, f"no package {package} for {apt_architecture} in {source}"))
    return results


def docker_apt_url() -> str:
    return os.environ.get(DOCKER_APT_URL_VARIABLE) or DOCKER_APT_URL


# --- AWS answers (pure) ----------------------------------------------------------------------------

def judge_instance_type(instance_type: str, described: Mapping[str, Any]) -> CheckResult:
    """The program's own verdict (gitea_stack.sizing) on AWS's description of the type."""
    memory = int(described.get("MemoryInfo", {}).get("SizeInMiB", 0))
    supported = described.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    try:
        facts = instance_facts(instance_type, memory, supported)
    except InstanceTypeError as problem:
        return CheckResult("instance type", FAIL, f"{qualified('instanceType')}: {problem}")
    return CheckResult("instance type", OK, f"{instance_type}: {facts.memory_mib} MiB, {facts.architecture}")


def judge_offerings(instance_type: str, region: str, zones: list[str]) -> CheckResult:
    if not zones:
        return CheckResult("instance type zones", FAIL, f"{qualified('instanceType')}: {instance_type} is not "
                                                        f"offered in any availability zone of {region}")
    return CheckResult("instance type zones", OK, f"{instance_type} offered in {', '.join(sorted(zones))}")


def judge_hosted_zones(zone_name: str, zones: Iterable[Mapping[str, Any]]) -> CheckResult:
    """`zones` as list_hosted_zones_by_name returns them; only exact name matches count."""
    key = qualified("hostedZone")
    wanted = zone_name.rstrip(".").lower() + "."
    matching = [zone for zone in zones if zone["Name"].lower() == wanted]
    public = [zone for zone in matching if not zone.get("Config", {}).get("PrivateZone", False)]
    if public:
        return CheckResult("hosted zone", OK, f"{wanted} is a public zone ({public[0]['Id'].split('/')[-1]})")
    if matching:
        ids = ", ".join(zone["Id"].split("/")[-1] for zone in matching)
        return CheckResult("hosted zone", FAIL, f"{key}: {wanted} exists only as a private zone ({ids}); expected a "
                                                "public Route 53 zone, since the forge's name and its mail records "
                                                "must resolve on the internet")
    return CheckResult("hosted zone", FAIL, f"{key}: no Route 53 hosted zone {wanted} in this account; expected an "
                                            "existing public zone that holds the forge's domain")


def judge_ses_account(region: str, account: Mapping[str, Any]) -> CheckResult:
    if account.get("SendingEnabled") is False:
        return CheckResult("SES", WARN, f"SES sending is paused for this account in {region}: the forge will send "
                                        "no mail until AWS re-enables it")
    if not account.get("ProductionAccessEnabled", False):
        return CheckResult("SES", WARN, f"the account is in the SES sandbox in {region}: only verified addresses "
                                        "receive mail (alertEmails are verified on the first deploy); request "
                                        f"production access: {SES_PRODUCTION_ACCESS_URL}")
    return CheckResult("SES", OK, f"available in {region}, production access")


def judge_elastic_ips(in_use: int, quota: int, source: str) -> CheckResult:
    if in_use >= quota:
        return CheckResult("Elastic IPs", FAIL, f"no Elastic IP left for the forge: {in_use} of {quota} in use "
                                                f"(quota from {source}); release one or ask for a higher quota")
    return CheckResult("Elastic IPs", OK, f"{quota - in_use} left: {in_use} of {quota} in use (quota from {source})")


# --- the checks --------------------------------------------------------------------------------------

def check_instance_type(ec2: Any, instance_type: str, region: str) -> tuple[list[CheckResult], str | None]:
    """The instance type's memory and zones, and the architecture the host will run (None if unknown)."""
    try:
        described = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "InvalidInstanceType":
            return [CheckResult("instance type", FAIL, f"{qualified('instanceType')}: AWS does not know "
                                                       f"{instance_type} in {region}")], None
        return [aws_error_result("instance type", "ec2:DescribeInstanceTypes", error)], None
    except BotoCoreError as error:
        return [aws_error_result("instance type", "ec2:DescribeInstanceTypes", error)], None
    if not described:
        return [CheckResult("instance type", FAIL, f"{qualified('instanceType')}: AWS does not describe "
                                                   f"{instance_type} in {region}")], None
    facts = described[0]
    results = [judge_instance_type(instance_type, facts)]
    try:
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        zones = [offering["Location"] for page in pages for offering in page["InstanceTypeOfferings"]]
        results.append(judge_offerings(instance_type, region, zones))
    except (BotoCoreError, ClientError) as error:
        results.append(aws_error_result("instance type zones", "ec2:DescribeInstanceTypeOfferings", error))
    return results, host_architecture(facts.get("ProcessorInfo", {}).get("SupportedArchitectures", []))


def check_hosted_zone(route53: Any, zone_name: str) -> CheckResult:
    wanted = zone_name.rstrip(".").lower() + "."
    zones: list[dict[str, Any]] = []
    request = {"DNSName": wanted}
    try:
        # Zones come sorted by name from DNSName on; a public and a private zone can share the name.
        while True:
            answer = route53.list_hosted_zones_by_name(**request)
            zones.extend(answer["HostedZones"])
            if not answer.get("IsTruncated") or answer.get("NextDNSName", "").lower() != wanted:
                break
            request = {"DNSName": answer["NextDNSName"], "HostedZoneId": answer["NextHostedZoneId"]}
    except (BotoCoreError, ClientError) as error:
        return aws_error_result("hosted zone", "route53:ListHostedZonesByName", error)
    return judge_hosted_zones(zone_name, zones)


def check_ses(sesv2: Any, region: str) -> CheckResult:
    try:
        account = sesv2.get_account()
    except EndpointConnectionError as error:
        return CheckResult("SES", FAIL, f"SES is not available in {region}: no endpoint answered ({error}); the "
                                        "forge sends its mail through SES in the stack's region")
    except (BotoCoreError, ClientError) as error:
        return aws_error_result("SES", "sesv2:GetAccount", error)
    except NotImplementedError as error:
        # In-process AWS stand-ins (moto) raise this for APIs they lack: say so rather than guess.
        return CheckResult("SES", WARN, f"could not check: this AWS endpoint does not implement sesv2:GetAccount "
                                        f"({error})")
    return judge_ses_account(region, account)


def elastic_ip_quota(service_quotas: Any, ec2: Any) -> tuple[int, str]:
    """The account's Elastic IP quota in the region, and where the number came from."""
    try:
        quota = service_quotas.get_service_quota(ServiceCode="ec2", QuotaCode=ELASTIC_IP_QUOTA_CODE)
        return int(quota["Quota"]["Value"]), f"Service Quotas {ELASTIC_IP_QUOTA_CODE}"
    except (BotoCoreError, ClientError, KeyError):
        pass
    try:
        attributes = ec2.describe_account_attributes(AttributeNames=["vpc-max-elastic-ips"])["AccountAttributes"]
        for attribute in attributes:
            if attribute["AttributeName"] == "vpc-max-elastic-ips":
                return int(attribute["AttributeValues"][0]["AttributeValue"]), "EC2 account attribute vpc-max-elastic-ips"
    except (BotoCoreError, ClientError, KeyError, IndexError, ValueError):
        pass
    return DEFAULT_ELASTIC_IP_QUOTA, "AWS's default; neither Service Quotas nor the EC2 account attributes answered"


def check_elastic_ips(ec2: Any, service_quotas: Any) -> CheckResult:
    try:
        in_use = len(ec2.describe_addresses()["Addresses"])
    except (BotoCoreError, ClientError) as error:
        return aws_error_result("Elastic IPs", "ec2:DescribeAddresses", error)
    quota, source = elastic_ip_quota(service_quotas, ec2)
    return judge_elastic_ips(in_use, quota, source)


# Where backup.sh keeps its restic repository in a backup bucket (lib.sh's RESTIC_REPOSITORY), and
# the object every restic repository has.
RESTIC_CONFIG_KEY = "restic/config"


def check_restore_bucket(s3: Any, source: RestoreSource, region: str) -> CheckResult:
    """restoreFrom's bucket exists in the region the host will ask, and holds a restic repository."""
    check, key = "restore source bucket", qualified("restoreFrom")
    try:
        answer = s3.head_bucket(Bucket=source.bucket)
        found_in = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region", region)
        if found_in != region:
            return CheckResult(check, FAIL, f"{key}.region: the bucket {source.bucket} is in {found_in}, not {region}; "
                                            f"expected restoreFrom.region {found_in}")
        s3.head_object(Bucket=source.bucket, Key=RESTIC_CONFIG_KEY)
    except ClientError as error:
        if error_code(error) in ("404", "NoSuchBucket", "NotFound", "NoSuchKey"):
            return CheckResult(check, FAIL, f"{key}.bucket: no restic repository in {source.bucket} ({region}): "
                                            f"expected the old stack's backup bucket, which holds {RESTIC_CONFIG_KEY}")
        return aws_error_result(check, "s3:HeadBucket/HeadObject", error)
    except BotoCoreError as error:
        return aws_error_result(check, "s3:HeadBucket/HeadObject", error)
    return CheckResult(check, OK, f"{source.bucket} ({region}) holds a restic repository")


def check_restore_password_secret(secretsmanager: Any, source: RestoreSource) -> CheckResult:
    """restoreFrom.passwordSecret exists (its value is the host's to read, not the operator's)."""
    check = "restore source password"
    try:
        secretsmanager.describe_secret(SecretId=source.password_secret_arn)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return CheckResult(check, FAIL, f"{qualified('restoreFrom')}.passwordSecret: no secret "
                                            f"{source.password_secret_arn}; expected the old stack's restic-password "
                                            "secret (aws secretsmanager list-secrets in its region)")
        return aws_error_result(check, "secretsmanager:DescribeSecret", error)
    except BotoCoreError as error:
        return aws_error_result(check, "secretsmanager:DescribeSecret", error)
    return CheckResult(check, OK, f"{source.password_secret_arn} exists")


class RegistryRefused(Exception):
    """The registry answered, but not with what the check asked for."""


class AnonymousPull:
    """Requests to one repository as an anonymous `docker pull` makes them: on 401, a token from the
    Bearer challenge's realm, then one retry; the token is kept for the repository's next request."""

    def __init__(self, location: ImageLocation):
        self.location = location
        self.authorization: str | None = None

    def get(self, url: str, accept: str) -> HttpResponse:
        response = http_get(url, {"Accept": accept}, self.authorization)
        if response.status != 401 or self.authorization is not None:
            return response
        challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return response
        token_response = http_get(token_url(challenge, self.location.repository), {"Accept": "application/json"})
        if token_response.status != 200:
            raise RegistryRefused(f"its token service answered HTTP {token_response.status}")
        try:
            token = token_from_response(json.loads(token_response.body))
        except ValueError:
            token = None
        if token is None:
            raise RegistryRefused("its token service sent no token")
        self.authorization = f"Bearer {token}"
        return http_get(url, {"Accept": accept}, self.authorization)


def judge_registry_error(check: str, image: str, response: HttpResponse, asked_for: str) -> CheckResult:
    if response.status == 404:
        return CheckResult(check, FAIL, f"{image}: {asked_for} not found (HTTP 404)")
    if response.status in (401, 403):
        return CheckResult(check, FAIL, f"{image}: the registry refuses an anonymous pull (HTTP {response.status}); "
                                        "the repository is private or does not exist, and the host pulls anonymously")
    return CheckResult(check, WARN, f"could not check {image}: the registry answered HTTP {response.status} "
                                    f"for the {asked_for}")


def check_image(service: str, image: str, architecture: str) -> CheckResult:
    check = f"image {service}"
    location = parse_image_location(image)
    pull = AnonymousPull(location)
    try:
        response = pull.get(location.manifest_url, ", ".join(MANIFEST_MEDIA_TYPES))
        if response.status != 200:
            return judge_registry_error(check, image, response, "digest" if "@" in image else "tag")
        manifest = json.loads(response.body)
        if is_index(manifest):
            return judge_index(check, image, manifest, architecture)
        if manifest.get("schemaVersion") == 1:  # legacy manifests name their architecture themselves
            return judge_image_config(check, image, manifest, architecture)
        config = manifest.get("config") or {}
        if not config.get("digest"):
            return CheckResult(check, WARN, f"could not check {image}: the manifest names no config blob")
        config_response = pull.get(location.blob_url(config["digest"]), config.get("mediaType", "application/json"))
        if config_response.status != 200:
            return judge_registry_error(check, image, config_response, "config blob")
        return judge_image_config(check, image, json.loads(config_response.body), architecture)
    except Unreachable as error:
        return CheckResult(check, WARN, f"could not check {image}: registry {location.registry} unreachable ({error})")
    except RegistryRefused as error:
        return CheckResult(check, WARN, f"could not check {image}: registry {location.registry}: {error}")
    except (ValueError, AttributeError) as error:
        return CheckResult(check, WARN, f"could not check {image}: the registry sent something that is not a "
                                        f"manifest or config ({error})")


def check_docker_packages(architecture: str, base_url: str, pins: Mapping[str, str] = DOCKER_PACKAGES) -> list[CheckResult]:
    apt_architecture = PLATFORM_ARCHITECTURE[architecture]
    directory = f"{base_url.rstrip('/')}/dists/{UBUNTU_CODENAME}/stable/binary-{apt_architecture}"
    source = f"Docker's {UBUNTU_CODENAME}/stable {apt_architecture} repository"
    for name in ("Packages.gz", "Packages"):
        url = f"{directory}/{name}"
        try:
            response = http_get(url)
        except Unreachable as error:
            return [CheckResult("apt packages", WARN, f"could not check: {url} unreachable ({error})")]
        if response.status == 404:
            continue
        if response.status != 200:
            return [CheckResult("apt packages", WARN, f"could not check: {url} answered HTTP {response.status}")]
        try:
            body = gzip.decompress(response.body) if name.endswith(".gz") else response.body
        except (OSError, EOFError) as error:
            return [CheckResult("apt packages", WARN, f"could not check: {url} is not gzip ({error})")]
        return judge_packages(parse_packages_index(body.decode("utf-8", "replace")), pins, apt_architecture, source)
    return [CheckResult("apt packages", FAIL, f"{source} has no package index at {directory}/Packages(.gz)")]


def run_checks(settings: Settings, region: str, session: Any, apt_url: str,
               progress: Progress) -> tuple[list[CheckResult], str | None]:
    """Every check, in order; returns the results and the architecture the images were checked for."""
    def client(service: str) -> Any:
        return session.client(service, region_name=region, config=AWS_CLIENT_CONFIG)

    ec2 = client("ec2")
    progress(f"describing instance type {settings.instance_type} in {region}")
    results, architecture = check_instance_type(ec2, settings.instance_type, region)
    progress(f"looking up hosted zone {settings.hosted_zone}")
    results.append(check_hosted_zone(client("route53"), settings.hosted_zone))
    progress(f"asking SES about the account in {region}")
    results.append(check_ses(client("sesv2"), region))
    progress("counting Elastic IPs against the quota")
    results.append(check_elastic_ips(ec2, client("service-quotas")))
    source = settings.restore_from
    if source:
        source_region = source.region_or(region)
        progress(f"looking for the restic repository in {source.bucket} ({source_region})")
        results.append(check_restore_bucket(
            session.client("s3", region_name=source_region, config=AWS_CLIENT_CONFIG), source, source_region))
        if source.password_secret_arn:
            secret_region = source.password_secret_arn.split(":")[3]
            progress(f"looking for the restic password secret in {secret_region}")
            results.append(check_restore_password_secret(
                session.client("secretsmanager", region_name=secret_region, config=AWS_CLIENT_CONFIG), source))

    if architecture is None:
        results.append(CheckResult("images and apt packages", WARN, "not checked: they depend on the instance "
                                                                    f"type's architecture; fix {qualified('instanceType')}"))
        return results, None
    platform = f"linux/{PLATFORM_ARCHITECTURE[architecture]}"
    for number, (service, image) in enumerate(settings.images.items(), start=1):
        progress(f"looking up {image} for {platform} ({number}/{len(settings.images)})")
        results.append(check_image(service, image, architecture))
    progress(f"reading Docker's apt package index for {UBUNTU_CODENAME} {PLATFORM_ARCHITECTURE[architecture]}")
    results.extend(check_docker_packages(architecture, apt_url))
    return results, architecture


# --- output ------------------------------------------------------------------------------------------

def format_table(results: list[CheckResult]) -> str:
    return format_table_with_verdicts(results, "nothing blocks a first `pulumi up`",
                                      "fix the FAIL lines before `pulumi up`")


def json_document(stack: str, region: str, architecture: str | None, results: list[CheckResult]) -> str:
    return json.dumps({"stack": stack, "region": region, "architecture": architecture,
                       "checks": [asdict(result) for result in results], "summary": summarise(results)}, indent=2)


# --- the command -------------------------------------------------------------------------------------

def preflight_command(args: argparse.Namespace) -> int:
    """`preflight`: 0 when nothing blocks the deploy, 1 when a check failed, 2 for bad usage or config."""
    def progress(message: str) -> None:
        print(f"preflight: {message}", file=sys.stderr, flush=True)

    try:
        stack_file, settings = read_stack(args.project_dir, args.stack)
    except StackFileProblem as problem:
        print(f"preflight: {problem}", file=sys.stderr)
        return 2
    placeholders = [] if os.environ.get(ALLOW_PLACEHOLDERS_VARIABLE) == "1" else placeholder_problems(settings)
    if placeholders:
        print(f"preflight: {SettingsError(placeholders)}", file=sys.stderr)
        return 2
    region = stack_region(stack_file)
    if not region:
        print(f"preflight: no region: set aws:region in {stack_file} (pulumi config set aws:region eu-central-1) "
              "or AWS_REGION", file=sys.stderr)
        return 2
    try:
        # The stack's aws:profile, like the AWS provider, so the checks look at the account it deploys to.
        session = stack_session(stack_file, region)
    except BotoCoreError as error:
        print(f"preflight: {error}", file=sys.stderr)
        return 2

    results, architecture = run_checks(settings, region, session, docker_apt_url(), progress)
    print(json_document(args.stack, region, architecture, results) if args.json else format_table(results))
    return 0 if summarise(results)["passed"] else 1
