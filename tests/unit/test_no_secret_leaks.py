"""No secret value travels in plaintext: the whole program under mocks, scanned for canaries.

The mocks decide every generated secret (each random.RandomPassword result, the provisioning key, the
SMTP user's key and SMTP password): each is a canary. Every input of every registered resource is
scanned, recursively and whether or not it is marked as a Pulumi secret: user data, remote command
strings and stdin, the bundle the copy step sends (base64 of a gzipped tar: unpacked, every file
read), stack-facts.env inside it, triggers, tags, descriptions, names. A canary counts in raw,
hex, base64 or urlsafe-base64 form (see tests/harness/secret_scan.py). A secret may stand in exactly
two places: the Secrets Manager version that stores it, and the SSH connection of the remote steps
(the provisioning key); both must be wrapped as Pulumi secrets there.

The last tests inject a canary into the product (user data, a tag, a bundle file, a command line) and
check that the scan reports it, so the scan is known to be able to fail.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile

import pulumi
import pytest

import gitea_stack.compute
import gitea_stack.program
import gitea_stack.provision
from gitea_stack.settings import Settings
from tests.harness.pulumi_mocks import StackRun, is_secret_wrapper, run_program
from tests.harness.secret_scan import Scan, scan

SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
COMMAND = "command:remote:Command"
# Where a secret value may go, and nowhere else: (resource type, input path as the scan names it) ->
# which secrets (any, or those containing the given text).
ALLOWED_SINKS = {
    (SECRET_VERSION, ".secretString"): "",
    (COMMAND, ".connection.privateKey"): "PRIVATE KEY",
}
# Resource types whose outputs are secrets; the mocks answer each with canaries (FakeAws._secret).
SECRET_MAKING_TYPES = {"random:index/randomPassword:RandomPassword": "result",
                       "tls:index/privateKey:PrivateKey": "privateKeyOpenssh",
                       "aws:iam/accessKey:AccessKey": "secret, sesSmtpPasswordV4"}


def scan_run(run: StackRun) -> dict[str, Scan]:
    """Resource name (or `outputs`) -> what the scan found in it and read of it."""
    scans = {}
    for resource in run.resources:
        scans[resource.name] = scan({"name": resource.name, "urn": resource.urn, "inputs": resource.inputs},
                                    run.mock_secrets)
    public = {name: value for name, value in run.outputs.items() if name not in run.secret_outputs}
    scans["outputs"] = scan(public, run.mock_secrets)
    return scans


def leaks(run: StackRun) -> list[str]:
    """Every finding outside the allowed sinks, as `resource: where (form)`."""
    types = {resource.name: resource.type for resource in run.resources}
    found = []
    for name, result in scan_run(run).items():
        for finding in result.findings:
            sink = (types.get(name), finding.where.removeprefix(".inputs").split(" | ")[0])
            if sink not in ALLOWED_SINKS or ALLOWED_SINKS[sink] not in finding.secret:
                found.append(f"{name}: {finding.where} ({finding.form})")
    return sorted(found)


@pytest.fixture(scope="module")
def scans(example_run) -> dict[str, Scan]:
    return scan_run(example_run)


def test_every_generated_secret_is_a_canary(example_run):
    generators = {r.type for r in example_run.resources if r.type.split(":")[0] in ("random", "tls")}
    generators |= {r.type for r in example_run.resources if r.type == "aws:iam/accessKey:AccessKey"}
    assert generators == set(SECRET_MAKING_TYPES), "a new kind of generated secret needs a canary in FakeAws"
    passwords = example_run.of_type("random:index/randomPassword:RandomPassword")
    # One canary per password, plus the provisioning key, the SMTP password and the SMTP user's key.
    assert len(passwords) >= 7 and len(example_run.mock_secrets) == len(passwords) + 3


def test_no_secret_travels_anywhere_but_to_its_store_and_the_ssh_connection(example_run):
    assert leaks(example_run) == []


def test_each_secret_reaches_its_store_wrapped_as_a_secret(example_run, scans):
    stored = set()
    for version in example_run.of_type(SECRET_VERSION):
        assert is_secret_wrapper(version.raw_inputs["secretString"]), version.name
        stored |= {finding.secret for finding in scans[version.name].findings}
    # Every canary is stored but the provisioning key (only the SSH connection holds it) and the SMTP
    # user's secret access key (SES SMTP needs only the password derived from it; it is used nowhere).
    unused = {s for s in example_run.mock_secrets if "PRIVATE KEY" in s or s == "MOCK-AWS-SECRET-KEY"}
    assert len(unused) == 2 and stored == example_run.mock_secrets - unused


def test_the_scan_opens_the_bundle_and_reads_every_file_and_the_stack_facts(example_run, scans):
    read = scans["provision-copy-bundle"].read
    members = {place.split("| tar:", 1)[1].split(" | ")[0] for place in read if "| tar:" in place}
    copy_stdin = example_run.named("provision-copy-bundle").inputs["stdin"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(copy_stdin)))) as archive:
        expected = {member.name for member in archive.getmembers() if member.isfile()}
    assert {"stack-facts.env", "docker-compose.yml", "scripts/deploy.sh", "nginx/https.conf"} <= expected
    assert members == expected
    # The other remote steps and the user data were read too.
    for name in ("provision-install-docker", "provision-converge", "provision-wait-for-host", "host-instance"):
        assert scans[name].read, name


# --- the scan can fail: a canary put where it must not be is reported ----------------------------

POSTGRES_PASSWORD = "secrets-postgres-password"


def canary(password_resource: str) -> str:
    """The value FakeAws gives the RandomPassword of that name (checked against the run below)."""
    return f"MOCK-SECRET-{password_resource}-Zq7"


def inject_into_user_data_comment(monkeypatch):
    original = gitea_stack.compute.render_user_data
    monkeypatch.setattr(gitea_stack.compute, "render_user_data",
                        lambda settings, volume: original(settings, volume) + f"# {canary(POSTGRES_PASSWORD)}\n")
    return "host-instance", ".inputs.userData"


def inject_base64_into_user_data_marked_secret(monkeypatch):
    original = gitea_stack.compute.render_user_data
    encoded = base64.b64encode(f"password={canary(POSTGRES_PASSWORD)}".encode()).decode()
    monkeypatch.setattr(gitea_stack.compute, "render_user_data",
                        lambda settings, volume: pulumi.Output.secret(original(settings, volume) + f"# {encoded}\n"))
    return "host-instance", ".inputs.userData"


def inject_hex_into_a_tag(monkeypatch):
    original = Settings.tags
    monkeypatch.setattr(Settings, "tags", property(
        lambda self: {**original.fget(self), "Debug": canary(POSTGRES_PASSWORD).encode().hex()}))
    return "network-vpc", ".inputs.tags.Debug"


def inject_urlsafe_base64_into_a_bundle_file(monkeypatch):
    original = gitea_stack.provision.render_bundle
    hidden = base64.urlsafe_b64encode(f"\x00\x01{canary(POSTGRES_PASSWORD)}".encode()).decode()

    def render_with_a_debug_file(settings, memory_mib, *args):
        return {**original(settings, memory_mib, *args), "debug/notes.txt": (f"token: {hidden}\n", 0o644)}

    monkeypatch.setattr(gitea_stack.provision, "render_bundle", render_with_a_debug_file)
    return "provision-copy-bundle", ".inputs.stdin | base64 | gzip | tar:debug/notes.txt"


def inject_into_a_command_line(monkeypatch):
    original = gitea_stack.provision.converge_command
    monkeypatch.setattr(gitea_stack.provision, "converge_command",
                        lambda *args: f"PGPASSWORD={canary(POSTGRES_PASSWORD)} " + original(*args))
    return "provision-converge", ".inputs.create"


def inject_into_a_stack_output(monkeypatch):
    original = gitea_stack.program.build_stack
    monkeypatch.setattr(gitea_stack.program, "build_stack",
                        lambda settings: {**original(settings), "debug": json.dumps({"pw": canary(POSTGRES_PASSWORD)})})
    return "outputs", ".debug"


INJECTIONS = [inject_into_user_data_comment, inject_base64_into_user_data_marked_secret, inject_hex_into_a_tag,
              inject_urlsafe_base64_into_a_bundle_file, inject_into_a_command_line, inject_into_a_stack_output]


@pytest.mark.parametrize("inject", INJECTIONS, ids=lambda f: f.__name__.removeprefix("inject_"))
def test_the_scan_reports_a_canary_put_where_it_must_not_be(example_config, monkeypatch, inject):
    resource, place = inject(monkeypatch)
    run = run_program(example_config)
    assert canary(POSTGRES_PASSWORD) in run.mock_secrets
    found = leaks(run)
    assert found, "the scan found nothing although a canary was injected"
    assert any(line.startswith(f"{resource}: {place}") for line in found), found
