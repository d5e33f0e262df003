"""Day one: what a new operator's first `pulumi up` refuses, clearly and before anything is created —
placeholders, typos in `aws:` keys, a zone that is not there, admin SSH ranges that add up to the
internet, images that would lose data, a machine that cannot reach the host — and what it gives back."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pulumi
import pytest

from gitea_stack import reachability
from gitea_stack.dns import Zone, choose_zone
from gitea_stack.program import aws_provider_keys
from gitea_stack.settings import (
    ALLOW_PLACEHOLDERS_VARIABLE,
    SettingsError,
    parse_settings,
    placeholder_problems,
    unknown_key_problems,
)
from gitea_stack.versions import postgres_major
from tests.harness.bundles import BASE
from tests.harness.pulumi_mocks import FakeAws, run_program

REAL = {**BASE, "domain": "git.acme-corp.io", "acmeEmail": "ops@acme-corp.io", "alertEmails": ["ops@acme-corp.io"],
        "sshAllowedCidrs": ["100.64.10.0/24"]}


def problems_of(raw: dict, stack: str = "prod") -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse_settings(raw, stack)
    return caught.value.problems


def refused(config: dict[str, str], mocks: FakeAws | None = None) -> str:
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config, mocks=mocks)
    assert caught.value.registered == [], "a refused stack must register nothing"
    return str(caught.value)


# --- the example stack cannot be deployed by accident -------------------------------------------------

def test_the_example_stack_file_is_not_a_live_stack():
    import subprocess
    from tests.harness.pulumi_mocks import EXAMPLE_STACK_FILE, PROJECT_DIR
    tracked = subprocess.run(["git", "ls-files", "Pulumi.*.yaml"], cwd=PROJECT_DIR, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked == [], "a stack file shipped in the project directory is a live stack anyone can deploy"
    assert EXAMPLE_STACK_FILE.is_file() and EXAMPLE_STACK_FILE.parent != PROJECT_DIR


def test_placeholder_values_are_refused_outside_tests(example_config, monkeypatch):
    monkeypatch.delenv(ALLOW_PLACEHOLDERS_VARIABLE)
    message = refused(example_config)
    for key in ("domain", "hostedZone", "acmeEmail", "alertEmails", "adminEmail", "sshAllowedCidrs"):
        assert f"gitea-stack:{key}: expected " in message, key
    assert "placeholder 'git.example.com'" in message
    assert "documentation range 203.0.113.0/24" in message


def test_real_values_are_no_placeholders():
    assert placeholder_problems(parse_settings(REAL, "prod")) == []
    assert placeholder_problems(parse_settings({**REAL, "domain": "git.examples.com", "hostedZone": "examples.com"},
                                               "prod")) == []
    fake_net = placeholder_problems(parse_settings({**REAL, "sshAllowedCidrs": ["198.51.100.7/32"]}, "prod"))
    assert fake_net == ["gitea-stack:sshAllowedCidrs: expected the networks you administer from, got the documentation "
                        "range 198.51.100.7/32 (reserved for examples; it reaches no one)"]


# --- aws: keys -------------------------------------------------------------------------------------------

def test_a_typo_in_an_aws_key_is_refused_with_the_nearest_key(example_config):
    message = refused({**example_config, "aws:regoin": "eu-west-1", "aws:profiel": "ops"})
    assert "aws:regoin: unknown key; did you mean aws:region?" in message
    assert "aws:profiel: unknown key; did you mean aws:profile?" in message


def test_aws_keys_come_from_the_installed_provider():
    keys = aws_provider_keys()
    assert {"region", "profile", "assumeRoles", "defaultTags", "allowedAccountIds", "skipMetadataApiCheck"} <= set(keys)
    assert unknown_key_problems("aws", {"region", "defaultTags"}, keys) == []


# --- hostedZone --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zones, expected", [
    ((), "gitea-stack:hostedZone: no public hosted zone named example.com in this account"),
    ((("Z1", "example.com.", True),), "gitea-stack:hostedZone: example.com is a private hosted zone here"),
    ((("Z1", "example.com.", False), ("Z2", "example.com.", False)),
     "gitea-stack:hostedZone: this account has 2 public hosted zones named example.com (Z1, Z2)"),
])
def test_a_missing_private_or_doubled_zone_is_refused_naming_hosted_zone(example_config, zones, expected):
    assert expected in refused(example_config, FakeAws(hosted_zones=zones))


def test_the_public_zone_is_chosen_beside_a_private_one_of_the_same_name():
    zones = [Zone("Zpriv", "example.com.", True), Zone("Zpub", "Example.com.", False), Zone("Zx", "other.org.", False)]
    assert choose_zone(zones, "example.com") == ("Zpub", None)


# --- sshAllowedCidrs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cidrs", [["0.0.0.0/1", "128.0.0.0/1"], ["::/1", "8000::/1"], ["10.0.0.0/7"],
                                   ["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"]])
def test_admin_ranges_that_together_cover_the_internet_are_refused(cidrs):
    [problem] = problems_of({**REAL, "sshAllowedCidrs": cidrs})
    assert problem.startswith("gitea-stack:sshAllowedCidrs: expected CIDR blocks that together are no wider")


def test_narrow_and_neighbouring_admin_ranges_pass():
    settings = parse_settings({**REAL, "sshAllowedCidrs": ["10.0.0.0/8", "100.64.0.0/10", "2001:db8::/32"]}, "prod")
    assert settings.ssh_allowed_cidrs == ("10.0.0.0/8", "100.64.0.0/10", "2001:db8::/32")


# --- images ------------------------------------------------------------------------------------------------

def test_a_gitea_image_that_is_not_rootless_is_refused():
    [problem] = problems_of({**REAL, "images": {"gitea": "docker.gitea.com/gitea:1.27.3"}})
    assert "gitea-stack:images: expected a rootless Gitea image" in problem


@pytest.mark.parametrize("reference, major", [
    ("docker.io/library/postgres:18.6-bookworm", 18), ("postgres:17.6", 17), ("postgres:16", 16),
    ("postgres:18.6-bookworm@sha256:" + "a" * 64, 18), ("postgres@sha256:" + "a" * 64, None),
    ("postgres:bookworm", None)])
def test_the_postgres_major_is_read_from_the_tag(reference, major):
    assert postgres_major(reference) == major


def test_a_postgres_image_without_a_version_tag_is_refused():
    [problem] = problems_of({**REAL, "images": {"postgres": "docker.io/library/postgres@sha256:" + "b" * 64}})
    assert "gitea-stack:images: expected a postgres image whose tag starts with its version" in problem


# --- adopt ---------------------------------------------------------------------------------------------------

def test_adopt_takes_known_keys_and_needs_the_secrets_with_a_volume():
    settings = parse_settings({**REAL, "adopt": {"dataVolumeId": "vol-0123456789abcdef0", "secretsFromStack": "old"}},
                              "prod")
    assert (settings.adopt.data_volume_id, settings.adopt.secrets_from_stack) == ("vol-0123456789abcdef0", "old")
    [alone] = problems_of({**REAL, "adopt": {"dataVolumeId": "vol-0123456789abcdef0"}})
    assert "adopt.secretsFromStack together with adopt.dataVolumeId" in alone
    [typo] = problems_of({**REAL, "adopt": {"dataVolume": "vol-0123456789abcdef0"}})
    assert "'dataVolume' is not one of them" in typo
    [bad] = problems_of({**REAL, "adopt": {"backupBucket": "Not_A_Bucket"}})
    assert "an S3 bucket name for adopt.backupBucket" in bad
    assert not parse_settings(REAL, "prod").adopt


# --- where pulumi up runs ---------------------------------------------------------------------------------------

class _EchoAddress(http.server.BaseHTTPRequestHandler):
    answer = "100.64.10.20\n"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = type(self).answer.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoAddress)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def real_config(example_config: dict[str, str]) -> dict[str, str]:
    return {**example_config, "gitea-stack:sshAllowedCidrs": json.dumps(["100.64.10.0/24"])}


def test_an_operator_outside_ssh_allowed_cidrs_is_stopped_before_anything_is_created(example_config, echo_url,
                                                                                    monkeypatch):
    monkeypatch.setenv(reachability.CHECK_URL_VARIABLE, echo_url)
    monkeypatch.setattr(_EchoAddress, "answer", "192.0.2.44\n")
    message = refused(real_config(example_config))
    assert "gitea-stack:sshAllowedCidrs: this machine's public address 192.0.2.44 is not in 100.64.10.0/24" in message
    assert "Add 192.0.2.44/32" in message


def test_an_operator_inside_ssh_allowed_cidrs_goes_ahead(example_config, echo_url, monkeypatch):
    monkeypatch.setenv(reachability.CHECK_URL_VARIABLE, echo_url)
    assert run_program(real_config(example_config)).outputs["url"] == "https://git.example.com/"


def test_an_address_that_cannot_be_learned_is_a_warning_not_a_failure(example_config, monkeypatch):
    monkeypatch.setenv(reachability.CHECK_URL_VARIABLE, "http://127.0.0.1:9/")  # nothing listens there
    assert run_program(real_config(example_config)).outputs["url"] == "https://git.example.com/"
    address, problem = reachability.public_address("http://127.0.0.1:9/", timeout=2)
    assert address is None and "could not ask http://127.0.0.1:9/" in problem


def test_the_reachability_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(reachability.CHECK_URL_VARIABLE, "off")
    assert reachability.check_url() is None
    monkeypatch.delenv(reachability.CHECK_URL_VARIABLE)
    assert reachability.check_url() == reachability.DEFAULT_CHECK_URL


def test_an_echo_that_is_no_address_is_reported(echo_url, monkeypatch):
    monkeypatch.setattr(_EchoAddress, "answer", "<html>captive portal</html>")
    address, problem = reachability.public_address(echo_url)
    assert address is None and "not an IP address" in problem


def test_preflight_refuses_the_placeholders_too(monkeypatch, capsys):
    from gitea_stack.cli import main
    monkeypatch.delenv(ALLOW_PLACEHOLDERS_VARIABLE)
    assert main(["preflight", "--stack", "example", "--project-dir", "examples"]) == 2
    assert "gitea-stack:domain: expected your own, got the placeholder 'git.example.com'" in capsys.readouterr().err


# --- backupSchedule ------------------------------------------------------------------------------------------

CALENDARS_ACCEPTED = ["hourly", "daily", "*:0/30", "*-*-* 02:00:00", "Mon..Fri 22:30", "Sat *-*-1..7 18:00:00",
                      "*-*-* 03:00:00 UTC"]


@pytest.mark.parametrize("value", CALENDARS_ACCEPTED)
def test_backup_schedules_systemd_reads_are_accepted(value):
    assert parse_settings({**REAL, "backupSchedule": value}, "prod").backup_schedule == value


@pytest.mark.parametrize("value", ["every hour", "25", "daily; reboot", "*:00\nExecStart=/bin/sh", 3])
def test_a_backup_schedule_that_is_no_calendar_expression_is_refused(value):
    [problem] = problems_of({**REAL, "backupSchedule": value})
    assert problem.startswith("gitea-stack:backupSchedule: expected a systemd OnCalendar expression")
