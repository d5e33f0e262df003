"""preflight: the pure readers (image references, manifests, WWW-Authenticate, Packages files), each
check against its stand-in (moto in-process for AWS, loopback servers for the registry and Docker's
apt repository), and the command end to end. Nothing here reaches the internet."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.stub import Stubber

from gitea_stack import preflight
from gitea_stack.cli import main
from gitea_stack.preflight import (
    FAIL,
    OK,
    SES_PRODUCTION_ACCESS_URL,
    WARN,
    aws_error_result,
    check_docker_packages,
    check_elastic_ips,
    check_hosted_zone,
    check_image,
    check_instance_type,
    check_ses,
    elastic_ip_quota,
    index_platforms,
    judge_elastic_ips,
    judge_hosted_zones,
    judge_image_config,
    judge_index,
    judge_packages,
    judge_ses_account,
    parse_bearer_challenge,
    parse_image_location,
    parse_packages_index,
    token_from_response,
    token_url,
)
from gitea_stack.settings import parse_image_reference, parse_settings
from gitea_stack.versions import DEFAULT_IMAGES, DOCKER_PACKAGES
from tests.unit.conftest import AWS_REGION
from tests.harness.registries import (
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    StandInAptRepository,
    StandInRegistry,
    packages_file,
)

REGION = AWS_REGION  # the aws fixture's (conftest)
DIGEST = "sha256:" + "ab" * 32


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_registry(registry: StandInRegistry, image: str) -> str:
    """`image` moved to the stand-in registry, keeping its repository path, tag and digest."""
    location = parse_image_location(image)
    return registry.reference(location.repository, location.reference)


# --- image references --------------------------------------------------------------------------------

@pytest.mark.parametrize("image, registry, repository, reference", [
    ("docker.io/library/nginx:1.30.1-alpine", "registry-1.docker.io", "library/nginx", "1.30.1-alpine"),
    ("docker.io/nginx:1.30.1-alpine", "registry-1.docker.io", "library/nginx", "1.30.1-alpine"),
    ("nginx:1.28.1", "registry-1.docker.io", "library/nginx", "1.28.1"),
    ("crazymax/diun:4.33.0", "registry-1.docker.io", "crazymax/diun", "4.33.0"),
    ("index.docker.io/certbot/certbot:v5.8.0", "registry-1.docker.io", "certbot/certbot", "v5.8.0"),
    ("docker.gitea.com/gitea:1.27.3-rootless", "docker.gitea.com", "gitea", "1.27.3-rootless"),
    ("ghcr.io/owner/team/app:1.0@" + DIGEST, "ghcr.io", "owner/team/app", DIGEST),
    ("127.0.0.1:5000/library/nginx:1.30.1-alpine", "127.0.0.1:5000", "library/nginx", "1.30.1-alpine"),
    ("localhost:5000/app@" + DIGEST, "localhost:5000", "app", DIGEST),
])
def test_image_references_resolve_as_docker_pull_does(image, registry, repository, reference):
    location = parse_image_location(image)
    assert (location.registry, location.repository, location.reference) == (registry, repository, reference)


@pytest.mark.parametrize("image, url", [
    ("127.0.0.1:5000/library/nginx:1.30.1-alpine", "http://127.0.0.1:5000/v2/library/nginx/manifests/1.30.1-alpine"),
    ("localhost:5000/app:1", "http://localhost:5000/v2/app/manifests/1"),
    ("docker.io/library/nginx:1.30.1-alpine", "https://registry-1.docker.io/v2/library/nginx/manifests/1.30.1-alpine"),
    ("localhost.example.com/app:1", "https://localhost.example.com/v2/app/manifests/1"),
    ("127.0.0.1.nip.io:5000/app:1", "https://127.0.0.1.nip.io:5000/v2/app/manifests/1"),
])
def test_only_loopback_registries_are_asked_over_plain_http(image, url):
    assert parse_image_location(image).manifest_url == url


def test_every_default_image_is_looked_up_over_https():
    for image in DEFAULT_IMAGES.values():
        assert parse_image_location(image).manifest_url.startswith("https://"), image


def test_settings_accept_an_image_on_a_loopback_registry():
    reference = "127.0.0.1:5000/library/nginx:1.30.1-alpine"
    assert parse_image_reference(reference) == reference
    settings = parse_settings({"domain": "git.example.com", "acmeEmail": "ops@example.com",
                               "alertEmails": ["ops@example.com"], "sshAllowedCidrs": ["203.0.113.0/24"],
                               "images": {"nginx": reference}}, "prod")
    assert settings.images["nginx"] == reference


# --- WWW-Authenticate and tokens -------------------------------------------------------------------------

def test_docker_hub_bearer_challenge_is_read():
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/nginx:pull"')
    assert parse_bearer_challenge(header) == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                              "scope": "repository:library/nginx:pull"}


def test_challenge_values_may_hold_commas_or_be_unquoted():
    challenge = parse_bearer_challenge('bearer realm=https://ghcr.io/token, scope="repository:a/b:pull,push"')
    assert challenge == {"realm": "https://ghcr.io/token", "scope": "repository:a/b:pull,push"}


@pytest.mark.parametrize("header", ['Basic realm="registry"', 'Bearer service="registry.docker.io"', "",
                                    'Bearer realm="file:///root/.docker/config.json"'])
def test_challenges_without_a_bearer_realm_are_refused(header):
    assert parse_bearer_challenge(header) is None


def test_token_url_carries_service_and_the_pull_scope():
    url = token_url({"realm": "https://auth.docker.io/token", "service": "registry.docker.io"}, "library/nginx")
    assert url == "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fnginx%3Apull"
    assert token_url({"realm": "https://r.example/token?x=1", "scope": "repository:a:pull"}, "b") == \
        "https://r.example/token?x=1&scope=repository%3Aa%3Apull"


@pytest.mark.parametrize("document, token", [
    ({"token": "t1", "expires_in": 300}, "t1"), ({"access_token": "t2"}, "t2"),
    ({"token": "", "access_token": "t3"}, "t3"), ({"details": "no"}, None), (["t4"], None), ({"token": 5}, None),
])
def test_token_answers_use_token_or_access_token(document, token):
    assert token_from_response(document) == token


# --- manifests -----------------------------------------------------------------------------------------

INDEX = {"schemaVersion": 2, "manifests": [
    {"digest": "sha256:1", "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:2", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:3", "platform": {"os": "unknown", "architecture": "unknown"}},
    {"digest": "sha256:4", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
]}


def test_index_platforms_leave_out_attestations():
    assert index_platforms(INDEX) == ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]


@pytest.mark.parametrize("architecture", ["x86_64", "arm64"])
def test_an_index_with_both_architectures_passes(architecture):
    assert judge_index("image x", "x:1", INDEX, architecture).status == OK


def test_an_index_without_the_architecture_fails_naming_what_it_has():
    amd64_only = {"manifests": [INDEX["manifests"][0], INDEX["manifests"][2]]}
    result = judge_index("image x", "x:1", amd64_only, "arm64")
    assert result.status == FAIL
    assert "no linux/arm64 image" in result.detail and "it has linux/amd64" in result.detail
    assert "unknown" not in result.detail


def test_a_windows_image_is_not_a_linux_one():
    windows = {"manifests": [{"platform": {"os": "windows", "architecture": "amd64"}}]}
    assert judge_index("image x", "x:1", windows, "x86_64").status == FAIL


def test_a_single_platform_config_is_judged_by_its_architecture():
    config = {"architecture": "amd64", "os": "linux"}
    assert judge_image_config("image x", "x:1", config, "x86_64").status == OK
    result = judge_image_config("image x", "x:1", config, "arm64")
    assert result.status == FAIL and "linux/amd64" in result.detail


# --- apt Packages files --------------------------------------------------------------------------------

def test_packages_index_lists_every_version_and_ignores_continuation_lines():
    text = packages_file({"docker-ce": ["5:29.8.0-1~ubuntu.24.04~noble", "5:29.8.1-1~ubuntu.24.04~noble"],
                          "containerd.io": ["2.3.6-1~ubuntu.24.04~noble"]}, "amd64")
    assert parse_packages_index(text) == {
        "docker-ce": ["5:29.8.0-1~ubuntu.24.04~noble", "5:29.8.1-1~ubuntu.24.04~noble"],
        "containerd.io": ["2.3.6-1~ubuntu.24.04~noble"]}


def test_packages_index_tolerates_crlf_and_stanzas_without_a_version():
    text = "Package: a\r\nVersion: 1\r\n\r\nPackage: b\r\n\r\nPackage: c\r\nVersion: 2"
    assert parse_packages_index(text) == {"a": ["1"], "c": ["2"]}


def test_judged_packages_name_a_missing_version_and_a_missing_package():
    available = {"docker-ce": ["5:29.7.0-1", "5:29.8.0-1"], "containerd.io": ["2.3.6-1"]}
    pins = {"docker-ce": "5:29.8.1-1", "containerd.io": "2.3.6-1", "docker-compose-plugin": "5.6.0-1"}
    results = {r.check: r for r in judge_packages(available, pins, "arm64", "the repository")}
    assert results["apt containerd.io"].status == OK
    assert results["apt docker-ce"].status == FAIL
    assert "5:29.8.1-1 is not in" in results["apt docker-ce"].detail and "5:29.8.0-1" in results["apt docker-ce"].detail
    assert results["apt docker-compose-plugin"].status == FAIL
    assert "no package docker-compose-plugin for arm64" in results["apt docker-compose-plugin"].detail


# --- pure judgements of AWS answers -----------------------------------------------------------------------

def test_only_an_exact_public_zone_passes():
    zones = [{"Id": "/hostedzone/Z1", "Name": "example.com.", "Config": {"PrivateZone": True}},
             {"Id": "/hostedzone/Z2", "Name": "sub.example.com.", "Config": {"PrivateZone": False}}]
    assert judge_hosted_zones("example.com", zones).status == FAIL
    zones.append({"Id": "/hostedzone/Z3", "Name": "Example.com.", "Config": {"PrivateZone": False}})
    result = judge_hosted_zones("example.com", zones)
    assert result.status == OK and "Z3" in result.detail


def test_elastic_ips_need_one_left():
    assert judge_elastic_ips(4, 5, "x").status == OK
    assert judge_elastic_ips(5, 5, "x").status == FAIL
    assert judge_elastic_ips(7, 5, "x").status == FAIL


def test_ses_production_access_passes_and_the_sandbox_warns():
    assert judge_ses_account(REGION, {"ProductionAccessEnabled": True, "SendingEnabled": True}).status == OK
    sandbox = judge_ses_account(REGION, {"ProductionAccessEnabled": False, "SendingEnabled": True})
    assert sandbox.status == WARN
    assert "only verified addresses receive mail" in sandbox.detail and SES_PRODUCTION_ACCESS_URL in sandbox.detail
    assert judge_ses_account(REGION, {"ProductionAccessEnabled": True, "SendingEnabled": False}).status == WARN


def test_rejected_credentials_fail_and_other_aws_errors_are_unknown():
    assert aws_error_result("x", "ec2:Y", NoCredentialsError()).status == FAIL
    invalid = ClientError({"Error": {"Code": "InvalidClientTokenId", "Message": "bad"}}, "GetAccount")
    assert aws_error_result("x", "sesv2:GetAccount", invalid).status == FAIL
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetServiceQuota")
    result = aws_error_result("x", "servicequotas:GetServiceQuota", denied)
    assert result.status == WARN and result.detail.startswith("could not check")


# --- AWS checks against moto -----------------------------------------------------------------------------

def private_zone(session, name: str) -> None:
    vpc = session.client("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    session.client("route53").create_hosted_zone(Name=name, CallerReference=f"private-{name}",
                                                 HostedZoneConfig={"PrivateZone": True},
                                                 VPC={"VPCRegion": REGION, "VPCId": vpc})


def test_public_zone_passes(aws):
    aws.client("route53").create_hosted_zone(Name="example.com", CallerReference="public")
    result = check_hosted_zone(aws.client("route53"), "example.com")
    assert result.status == OK and "example.com." in result.detail


def test_missing_zone_fails_naming_the_key(aws):
    aws.client("route53").create_hosted_zone(Name="example.org", CallerReference="other")
    result = check_hosted_zone(aws.client("route53"), "example.com")
    assert result.status == FAIL
    assert result.detail.startswith("gitea-stack:hostedZone:") and "no Route 53 hosted zone" in result.detail


def test_private_only_zone_fails_naming_the_key(aws):
    private_zone(aws, "example.com")
    result = check_hosted_zone(aws.client("route53"), "example.com")
    assert result.status == FAIL
    assert result.detail.startswith("gitea-stack:hostedZone:") and "only as a private zone" in result.detail


def test_public_zone_next_to_a_private_one_passes(aws):
    private_zone(aws, "example.com")
    aws.client("route53").create_hosted_zone(Name="example.com", CallerReference="public")
    assert check_hosted_zone(aws.client("route53"), "example.com").status == OK


@pytest.mark.parametrize("instance_type, memory, architecture", [
    ("t3.medium", 4096, "x86_64"), ("t4g.large", 8192, "arm64"), ("t3.small", 2048, "x86_64"),
])
def test_instance_types_report_memory_and_architecture(aws, instance_type, memory, architecture):
    results, found = check_instance_type(aws.client("ec2"), instance_type, REGION)
    assert found == architecture
    assert [r.status for r in results] == [OK, OK]
    assert f"{memory} MiB, {architecture}" in results[0].detail
    assert f"{REGION}a" in results[1].detail


def test_an_instance_type_under_2_gib_fails_naming_the_key(aws):
    results, found = check_instance_type(aws.client("ec2"), "t3.micro", REGION)
    assert results[0].status == FAIL
    assert results[0].detail.startswith("gitea-stack:instanceType:") and "1024 MiB" in results[0].detail
    assert found == "x86_64"  # the images are still checked for the type's architecture


def test_an_unknown_instance_type_fails_without_an_architecture(aws):
    results, found = check_instance_type(aws.client("ec2"), "m9z.large", REGION)
    assert [r.status for r in results] == [FAIL] and found is None
    assert "gitea-stack:instanceType" in results[0].detail


def test_an_instance_type_not_sold_in_the_region_fails(aws):
    def offered(region: str) -> set[str]:
        pages = aws.client("ec2", region_name=region).get_paginator("describe_instance_type_offerings").paginate(
            LocationType="region")
        return {offering["InstanceType"] for page in pages for offering in page["InstanceTypeOfferings"]}
    unsold = sorted(offered("us-east-1") - offered(REGION))
    assert unsold, f"moto sells in {REGION} every instance type it sells in us-east-1; pick another region"
    results, _ = check_instance_type(aws.client("ec2"), unsold[0], REGION)
    zones = results[-1]
    assert zones.check == "instance type zones" and zones.status == FAIL
    assert "gitea-stack:instanceType" in zones.detail and "not offered" in zones.detail


def test_elastic_ips_up_to_the_limit_fail(aws):
    ec2 = aws.client("ec2")
    for _ in range(4):
        ec2.allocate_address(Domain="vpc")
    result = check_elastic_ips(ec2, aws.client("service-quotas"))
    # moto's Service Quotas knows no ec2 quotas, so the account attribute answers.
    assert result.status == OK
    assert "1 left: 4 of 5 in use" in result.detail and "vpc-max-elastic-ips" in result.detail
    ec2.allocate_address(Domain="vpc")
    result = check_elastic_ips(ec2, aws.client("service-quotas"))
    assert result.status == FAIL and "5 of 5 in use" in result.detail


def test_elastic_ip_quota_prefers_service_quotas(aws):
    service_quotas = aws.client("service-quotas")
    with Stubber(service_quotas) as stub:
        stub.add_response("get_service_quota", {"Quota": {"QuotaCode": "L-0263D0A3", "Value": 10.0}},
                          {"ServiceCode": "ec2", "QuotaCode": "L-0263D0A3"})
        assert elastic_ip_quota(service_quotas, aws.client("ec2")) == (10, "Service Quotas L-0263D0A3")


def test_elastic_ip_quota_falls_back_to_the_default(aws):
    service_quotas, ec2 = aws.client("service-quotas"), aws.client("ec2")
    with Stubber(service_quotas) as quotas_stub, Stubber(ec2) as ec2_stub:
        quotas_stub.add_client_error("get_service_quota", "AccessDeniedException")
        ec2_stub.add_client_error("describe_account_attributes", "UnauthorizedOperation")
        quota, source = elastic_ip_quota(service_quotas, ec2)
    assert quota == 5 and source.startswith("AWS's default")


def test_ses_get_account_that_moto_lacks_is_reported_as_unchecked(aws):
    result = check_ses(aws.client("sesv2"), REGION)
    assert result.status == WARN
    assert "does not implement sesv2:GetAccount" in result.detail


def test_ses_sandbox_warns_with_the_production_access_link(aws):
    sesv2 = aws.client("sesv2")
    with Stubber(sesv2) as stub:
        stub.add_response("get_account", {"ProductionAccessEnabled": False, "SendingEnabled": True,
                                          "DedicatedIpAutoWarmupEnabled": False, "EnforcementStatus": "HEALTHY"})
        result = check_ses(sesv2, REGION)
    assert result.status == WARN and SES_PRODUCTION_ACCESS_URL in result.detail


def test_ses_without_an_endpoint_fails(aws_credentials):
    sesv2 = boto3.client("sesv2", region_name="ap-nowhere-1", endpoint_url=f"http://127.0.0.1:{closed_port()}",
                         config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    result = check_ses(sesv2, "ap-nowhere-1")
    assert result.status == FAIL and "SES is not available in ap-nowhere-1" in result.detail


# --- images against the stand-in registry ------------------------------------------------------------------

@pytest.fixture
def registry():
    with StandInRegistry() as running:
        running.add_index("library/nginx", "1.30.1-alpine", ["linux/amd64", "linux/arm64/v8"])
        running.add_index("gitea", "1.27.3-rootless", ["linux/amd64"], media_type=DOCKER_MANIFEST_LIST)
        running.add_image("crazymax/diun", "4.33.0", "amd64")
        running.add_image("library/postgres", "18.6-bookworm", "arm64", media_type=OCI_MANIFEST)
        running.add_index("certbot/certbot", "v5.7.0", ["linux/amd64", "linux/arm64"])
        yield running


@pytest.mark.parametrize("architecture", ["x86_64", "arm64"])
def test_an_index_with_both_architectures_is_found_through_the_token_dance(registry, architecture):
    image = registry.reference("library/nginx", "1.30.1-alpine")
    result = check_image("nginx", image, architecture)
    assert result.status == OK, result.detail
    assert result.check == "image nginx" and "index of 2 platforms" in result.detail
    assert registry.token_requests() == [{"service": StandInRegistry.SERVICE, "scope": "repository:library/nginx:pull"}]
    manifest_requests = [r for r in registry.requests if "/manifests/" in r.path]
    assert len(manifest_requests) == 2 and "authorization" not in manifest_requests[0].headers
    for media_type in preflight.MANIFEST_MEDIA_TYPES:
        assert media_type in manifest_requests[-1].headers["accept"]


def test_a_manifest_list_without_arm64_fails_naming_what_it_has(registry):
    image = registry.reference("gitea", "1.27.3-rootless")
    assert check_image("gitea", image, "x86_64").status == OK
    result = check_image("gitea", image, "arm64")
    assert result.status == FAIL
    assert "no linux/arm64 image" in result.detail and "it has linux/amd64" in result.detail


def test_a_single_platform_image_is_judged_by_its_config_blob(registry):
    image = registry.reference("crazymax/diun", "4.33.0")
    ok = check_image("diun", image, "x86_64")
    assert ok.status == OK and "single-platform" in ok.detail
    wrong = check_image("diun", image, "arm64")
    assert wrong.status == FAIL and "linux/amd64" in wrong.detail
    # The blob came from the redirect target, which refuses a request carrying the registry token.
    assert any(r.path.startswith("/storage/") and "authorization" not in r.headers for r in registry.requests)


def test_an_oci_single_platform_image(registry):
    image = registry.reference("library/postgres", "18.6-bookworm")
    assert check_image("postgres", image, "arm64").status == OK
    assert check_image("postgres", image, "x86_64").status == FAIL


def test_a_missing_tag_fails(registry):
    result = check_image("certbot", registry.reference("certbot/certbot", "v5.8.0"), "x86_64")
    assert result.status == FAIL and "tag not found (HTTP 404)" in result.detail


def test_an_image_pinned_by_digest(registry):
    digest = registry.add_index("library/nginx", "1.30.2-alpine", ["linux/amd64", "linux/arm64"])
    assert check_image("nginx", registry.reference("library/nginx", digest), "arm64").status == OK
    missing = check_image("nginx", registry.reference("library/nginx", DIGEST), "arm64")
    assert missing.status == FAIL and "digest not found" in missing.detail


def test_a_token_service_answering_access_token():
    with StandInRegistry(token_field="access_token") as registry:
        registry.add_index("library/nginx", "1.30.1-alpine", ["linux/amd64"])
        assert check_image("nginx", registry.reference("library/nginx", "1.30.1-alpine"), "x86_64").status == OK


def test_a_repository_refused_to_anonymous_pulls_fails():
    with StandInRegistry(private=["team/secret"]) as registry:
        registry.add_image("team/secret", "1.0", "amd64")
        result = check_image("gitea", registry.reference("team/secret", "1.0"), "x86_64")
    assert result.status == FAIL and "refuses an anonymous pull" in result.detail


def test_an_unreachable_registry_is_a_warning_not_a_pass():
    result = check_image("nginx", f"127.0.0.1:{closed_port()}/library/nginx:1.30.1-alpine", "x86_64")
    assert result.status == WARN
    assert result.detail.startswith("could not check") and "unreachable" in result.detail


# --- Docker's apt packages against the stand-in repository ---------------------------------------------------

ABSENT_PACKAGE = next(iter(DOCKER_PACKAGES))


def repository_versions(absent: str | None = ABSENT_PACKAGE) -> dict[str, list[str]]:
    """Every pinned version, plus an older one; `absent` has only an other version."""
    versions = {package: ["0.1-stand-in", version] for package, version in DOCKER_PACKAGES.items()}
    if absent:
        versions[absent] = ["0.1-stand-in", "0.2-stand-in"]
    return versions


@pytest.fixture
def apt_repository():
    with StandInAptRepository() as running:
        yield running


def test_pinned_packages_found_and_one_missing_in_packages_gz(apt_repository):
    apt_repository.add_packages("amd64", repository_versions())
    results = {r.check: r for r in check_docker_packages("x86_64", apt_repository.url)}
    assert set(results) == {f"apt {package}" for package in DOCKER_PACKAGES}
    for package in DOCKER_PACKAGES:
        expected = FAIL if package == ABSENT_PACKAGE else OK
        assert results[f"apt {package}"].status == expected, results[f"apt {package}"]
    absent = results[f"apt {ABSENT_PACKAGE}"].detail
    assert DOCKER_PACKAGES[ABSENT_PACKAGE] in absent and "the last 0.2-stand-in" in absent
    assert [r.path for r in apt_repository.requests] == ["/linux/ubuntu/dists/noble/stable/binary-amd64/Packages.gz"]


def test_an_uncompressed_packages_file_is_read_when_there_is_no_gz(apt_repository):
    apt_repository.add_packages("arm64", repository_versions(absent=None), compressed=False)
    results = check_docker_packages("arm64", apt_repository.url)
    assert [r.status for r in results] == [OK] * len(DOCKER_PACKAGES)
    assert [r.path.rsplit("/", 1)[-1] for r in apt_repository.requests] == ["Packages.gz", "Packages"]


def test_a_repository_without_the_architecture_fails(apt_repository):
    apt_repository.add_packages("amd64", repository_versions(absent=None))
    results = check_docker_packages("arm64", apt_repository.url)
    assert [r.status for r in results] == [FAIL] and "binary-arm64" in results[0].detail


def test_an_unreachable_apt_repository_is_a_warning():
    results = check_docker_packages("x86_64", f"http://127.0.0.1:{closed_port()}/linux/ubuntu")
    assert [r.status for r in results] == [WARN] and "unreachable" in results[0].detail


def test_the_docker_apt_url_follows_the_environment(monkeypatch):
    monkeypatch.delenv(preflight.DOCKER_APT_URL_VARIABLE, raising=False)
    assert preflight.docker_apt_url() == "https://download.docker.com/linux/ubuntu"
    monkeypatch.setenv(preflight.DOCKER_APT_URL_VARIABLE, "http://127.0.0.1:1/mirror")
    assert preflight.docker_apt_url() == "http://127.0.0.1:1/mirror"


# --- the command end to end ------------------------------------------------------------------------------

STACK_CONFIG = {
    "aws:region": REGION,
    "gitea-stack:domain": "git.example.com",
    "gitea-stack:hostedZone": "example.com",
    "gitea-stack:acmeEmail": "ops@example.com",
    "gitea-stack:alertEmails": ["ops@example.com"],
    "gitea-stack:sshAllowedCidrs": ["203.0.113.0/24"],
    "gitea-stack:instanceType": "t4g.large",
}


@dataclass
class StackProject:
    directory: Path
    images: dict[str, str]

    def write(self, **changes) -> None:
        """Pulumi.prod.yaml: STACK_CONFIG with the stand-in images and `changes` (None removes a key)."""
        config = {**STACK_CONFIG, "gitea-stack:images": self.images, **changes}
        config = {key: value for key, value in config.items() if value is not None}
        (self.directory / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": config}))


@pytest.fixture
def project(aws, registry, apt_repository, monkeypatch, tmp_path):
    """A project directory whose stack `prod` uses the stand-ins: every default image moved to the
    stand-in registry (each served for amd64 and arm64), Docker's packages in the stand-in apt
    repository, and a public zone in moto."""
    images = {service: on_registry(registry, image) for service, image in DEFAULT_IMAGES.items()}
    for image in images.values():
        location = parse_image_location(image)
        registry.add_index(location.repository, location.reference, ["linux/amd64", "linux/arm64"])
    apt_repository.add_packages("arm64", repository_versions(absent=None))
    monkeypatch.setenv(preflight.DOCKER_APT_URL_VARIABLE, apt_repository.url)
    aws.client("route53").create_hosted_zone(Name="example.com", CallerReference="public")

    project = StackProject(tmp_path, images)
    project.write()
    return project


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(["preflight", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_command_prints_a_table_and_passes_with_warnings(project, capsys):
    status, out, err = run(capsys, "--stack", "prod", "--project-dir", str(project.directory))
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    rows = {line[:line.index("  ")]: line for line in lines[1:] if line.strip() and "  " in line}
    for check in ["instance type", "instance type zones", "hosted zone", "SES", "Elastic IPs",
                  *(f"image {service}" for service in DEFAULT_IMAGES), *(f"apt {package}" for package in DOCKER_PACKAGES)]:
        assert check in rows, f"no row for {check}:\n{out}"
    assert " OK " in rows["image nginx"] and "linux/arm64" in rows["image nginx"]
    assert " WARN " in rows["SES"]
    assert lines[-1].endswith("nothing blocks a first `pulumi up`") and " 0 FAIL" in lines[-1]
    assert "preflight: describing instance type t4g.large" in err
    assert err.count(" for linux/arm64 (") == len(DEFAULT_IMAGES)


def test_command_json_document(project, capsys):
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    document = json.loads(out)
    assert status == 0
    assert (document["stack"], document["region"], document["architecture"]) == ("prod", REGION, "arm64")
    statuses = {check["check"]: check["status"] for check in document["checks"]}
    assert all(set(check) == {"check", "status", "detail"} for check in document["checks"])
    assert statuses["SES"] == WARN and statuses["hosted zone"] == OK
    assert {f"image {service}" for service in DEFAULT_IMAGES} <= set(statuses)
    assert document["summary"] == {"ok": len(statuses) - 1, "warn": 1, "fail": 0, "passed": True}


def test_command_fails_when_a_check_fails(project, capsys):
    project.write(**{"gitea-stack:hostedZone": None, "gitea-stack:domain": "git.example.org"})
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    document = json.loads(out)
    assert status == 1
    failed = [check for check in document["checks"] if check["status"] == FAIL]
    assert [check["check"] for check in failed] == ["hosted zone"]
    assert "gitea-stack:hostedZone" in failed[0]["detail"] and document["summary"]["passed"] is False
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory))
    assert status == 1 and "fix the FAIL lines" in out.splitlines()[-1]


def test_command_takes_the_region_from_the_environment(project, capsys, monkeypatch):
    project.write(**{"aws:region": None})
    monkeypatch.setenv("AWS_REGION", REGION)
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    assert status == 0 and json.loads(out)["region"] == REGION


def test_command_without_a_region_is_bad_usage(project, capsys):
    project.write(**{"aws:region": None})
    status, out, err = run(capsys, "--stack", "prod", "--project-dir", str(project.directory))
    assert status == 2 and out == "" and "aws:region" in err


def test_command_with_an_unknown_aws_profile_is_bad_usage(project, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    project.write(**{"aws:profile": "forge-deployer"})
    status, out, err = run(capsys, "--stack", "prod", "--project-dir", str(project.directory))
    assert status == 2 and out == "" and "forge-deployer" in err


def test_command_without_a_stack_file_is_bad_usage(tmp_path, capsys):
    status, out, err = run(capsys, "--stack", "staging", "--project-dir", str(tmp_path))
    assert status == 2 and out == "" and "Pulumi.staging.yaml" in err


def test_command_with_bad_config_prints_every_problem(project, capsys):
    project.write(**{"gitea-stack:adminSshPort": 22, "gitea-stack:instanceType": "huge"})
    status, out, err = run(capsys, "--stack", "prod", "--project-dir", str(project.directory))
    assert status == 2 and out == ""
    assert "the stack config has 2 problems" in err
    assert "gitea-stack:instanceType" in err and "gitea-stack:gitSshPort" in err


def test_command_with_a_stack_file_that_is_not_yaml_is_bad_usage(tmp_path, capsys):
    (tmp_path / "Pulumi.prod.yaml").write_text("config:\n  aws:region: [eu-central-1\n")
    status, out, err = run(capsys, "--stack", "prod", "--project-dir", str(tmp_path))
    assert status == 2 and out == "" and "not valid YAML" in err


def test_command_with_an_instance_type_aws_does_not_know_skips_images(project, registry, capsys):
    project.write(**{"gitea-stack:instanceType": "m9z.large"})
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    document = json.loads(out)
    statuses = {check["check"]: check["status"] for check in document["checks"]}
    assert status == 1 and document["architecture"] is None
    assert statuses["instance type"] == FAIL and statuses["images and apt packages"] == WARN
    assert not any(name.startswith("image ") for name in statuses) and registry.requests == []


def test_command_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["preflight", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--stack" in out and "--json" in out and "exit codes" in out and "GITEA_STACK_DOCKER_APT_URL" in out


# --- restoreFrom: the old stack's bucket and password secret -----------------------------------------

def restore_source(**fields):
    from gitea_stack.settings import parse_restore_source
    return parse_restore_source({"bucket": "gitea-stack-old-backups-1", **fields})


def old_bucket(session, region: str, with_repository: bool = True) -> None:
    s3 = session.client("s3", region_name=region)
    s3.create_bucket(Bucket="gitea-stack-old-backups-1", CreateBucketConfiguration={"LocationConstraint": region})
    if with_repository:
        s3.put_object(Bucket="gitea-stack-old-backups-1", Key="restic/config", Body=b"restic")


def test_an_old_bucket_with_a_restic_repository_passes(aws):
    old_bucket(aws, "eu-west-1")
    source = restore_source(password="p", region="eu-west-1")
    result = preflight.check_restore_bucket(aws.client("s3", region_name="eu-west-1"), source, "eu-west-1")
    assert result.status == OK, result


@pytest.mark.parametrize("with_bucket", [True, False])
def test_an_old_bucket_without_a_restic_repository_fails_naming_the_field(aws, with_bucket):
    if with_bucket:
        old_bucket(aws, "eu-west-1", with_repository=False)
    source = restore_source(password="p", region="eu-west-1")
    result = preflight.check_restore_bucket(aws.client("s3", region_name="eu-west-1"), source, "eu-west-1")
    assert result.status == FAIL and result.detail.startswith("gitea-stack:restoreFrom.bucket: no restic repository")


def test_an_old_bucket_in_another_region_than_configured_fails_naming_the_region(aws):
    old_bucket(aws, "eu-west-1")
    source = restore_source(password="p")  # the stack's region is assumed
    result = preflight.check_restore_bucket(aws.client("s3", region_name=REGION), source, REGION)
    assert result.status == FAIL and result.detail.startswith("gitea-stack:restoreFrom.region:")
    assert "is in eu-west-1" in result.detail


def test_the_password_secret_is_looked_up_in_its_region(aws):
    arn = aws.client("secretsmanager", region_name="eu-west-1").create_secret(
        Name="gitea-stack/old/restic-password-AbCdEf", SecretString="old")["ARN"]
    found = preflight.check_restore_password_secret(aws.client("secretsmanager", region_name="eu-west-1"),
                                                    restore_source(passwordSecret=arn))
    assert found.status == OK
    missing = arn.replace("AbCdEf", "Gone00")
    result = preflight.check_restore_password_secret(aws.client("secretsmanager", region_name="eu-west-1"),
                                                     restore_source(passwordSecret=missing))
    assert result.status == FAIL and result.detail.startswith("gitea-stack:restoreFrom.passwordSecret: no secret")


def test_command_checks_the_restore_source_with_the_password_still_encrypted(project, aws, capsys):
    # The stack file holds restoreFrom.password as Pulumi wrote it: ciphertext, which preflight never reads.
    project.write(**{"gitea-stack:restoreFrom": {"bucket": "gitea-stack-old-backups-1", "region": "eu-west-1",
                                                 "password": {"secure": "v1:AAAABBBBCCCC"}}})
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    statuses = {check["check"]: check for check in json.loads(out)["checks"]}
    assert status == 1 and statuses["restore source bucket"]["status"] == FAIL
    assert "restore source password" not in statuses  # given as a value: no secret to look for
    old_bucket(aws, "eu-west-1")
    status, out, _ = run(capsys, "--stack", "prod", "--project-dir", str(project.directory), "--json")
    statuses = {check["check"]: check for check in json.loads(out)["checks"]}
    assert status == 0 and statuses["restore source bucket"]["status"] == OK
