"""Provisioning under mocks: the remote steps, their order, and triggers that re-run only what changed."""

from __future__ import annotations

import pytest

import gitea_stack.bundle
from gitea_stack.versions import DOCKER_PACKAGES
from tests.harness.pulumi_mocks import ELASTIC_IP, is_secret_wrapper

COMMAND = "command:remote:Command"
STEPS = ("provision-wait-for-host", "provision-install-docker", "provision-copy-bundle", "provision-converge")


def steps(run):
    return {name: run.named(name) for name in STEPS}


def test_steps_connect_to_the_elastic_ip_on_the_admin_port_with_the_generated_key(example_run):
    key = example_run.one("tls:index/privateKey:PrivateKey")
    for step in steps(example_run).values():
        connection = step.inputs["connection"]
        assert (connection["host"], connection["port"], connection["user"]) == (ELASTIC_IP, 2222, "ubuntu")
        raw = step.raw_inputs["connection"]
        assert is_secret_wrapper(raw) or is_secret_wrapper(raw["privateKey"])
        assert key.urn in step.dependencies


def test_steps_run_in_order(example_run):
    found = steps(example_run)
    urn = {name: step.urn for name, step in found.items()}
    assert urn["provision-wait-for-host"] in found["provision-install-docker"].dependencies
    assert urn["provision-wait-for-host"] in found["provision-copy-bundle"].dependencies
    assert {urn["provision-install-docker"], urn["provision-copy-bundle"]} <= found["provision-converge"].dependencies
    provisioning = example_run.one("gitea-stack:provision:Provisioning")
    assert example_run.named("dns-a").urn in provisioning.dependencies or \
        example_run.one("gitea-stack:dns:ForgeDns").urn in provisioning.dependencies


def test_install_pins_every_docker_package_and_sends_the_script_on_stdin(example_run):
    install = example_run.named("provision-install-docker")
    assert DOCKER_PACKAGES
    for package, version in DOCKER_PACKAGES.items():
        assert f"{package}={version}" in install.inputs["create"]
    assert install.inputs["stdin"].startswith("#!/usr/bin/env bash")


def test_the_copy_carries_the_bundle_with_its_modes_and_the_stack_facts(example_run):
    import base64
    import io
    import tarfile
    copy = example_run.named("provision-copy-bundle")
    assert copy.inputs["create"].endswith("tar --extract --gzip --no-same-owner --directory "
                                          "/home/ubuntu/gitea-stack-upload")
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(copy.inputs["stdin"]))) as archive:
        members = {member.name: member for member in archive.getmembers()}
        facts = archive.extractfile("stack-facts.env").read().decode()
    assert {"docker-compose.yml", "nginx/https.conf", "scripts/deploy.sh", "stack-facts.env"} <= set(members)
    assert members["scripts/deploy.sh"].mode == 0o755 and members["docker-compose.yml"].mode == 0o644
    assert "BACKUP_BUCKET=gitea-stack-prod-backups-mock\n" in facts
    assert "SECRET_RESTIC_PASSWORD=gitea-stack/prod/restic-password-MOCK\n" in facts
    assert "AWS_REGION=eu-central-1\n" in facts


def test_converge_runs_deploy_and_its_output_is_secret(example_run):
    converge = example_run.named("provision-converge")
    assert converge.inputs["create"].endswith("sudo /opt/gitea-stack/scripts/deploy.sh")
    assert "stdin" not in converge.inputs  # nothing but the command, which holds no secret
    assert {"stdout", "stderr"} <= set(converge.additional_secret_outputs)
    assert not example_run.of_type("command:remote:CopyToRemote")


def test_the_uploaded_bundle_is_checked_before_it_replaces_the_one_in_use(example_run):
    command = example_run.named("provision-converge").inputs["create"]
    check = command.index("sudo /home/ubuntu/gitea-stack-upload/scripts/deploy.sh --check && ")
    copy = command.index("sudo cp -R --preserve=mode /home/ubuntu/gitea-stack-upload/. /opt/gitea-stack/")
    assert check < copy < command.index("sudo /opt/gitea-stack/scripts/deploy.sh")
    # Each step runs only if the one before succeeded: a refused check copies nothing.
    assert command.count(" && ") == 3 and ";" not in command.removeprefix("set -euo pipefail;")


def triggers(run):
    return {name: step.inputs["triggers"] for name, step in steps(run).items()}


def test_triggers_are_identical_across_runs(example_run, run_with):
    assert triggers(example_run) == triggers(run_with())


def test_a_new_secret_value_reruns_only_the_converge(example_config, example_run):
    from tests.harness.pulumi_mocks import FakeAws, run_program
    rotated = run_program(example_config, mocks=FakeAws(secret_version="v2"))
    before, after = triggers(example_run), triggers(rotated)
    assert {name for name in STEPS if before[name] != after[name]} == {"provision-converge"}
    # Only version ids go into the trigger: no secret value is in it, in plain text or hashed.
    converge = rotated.named("provision-converge")
    assert rotated.mock_secrets
    assert not any(value in str(converge.inputs["triggers"]) for value in rotated.mock_secrets)


def test_an_nginx_only_change_reruns_only_the_copy_and_the_converge(example_run, run_with, monkeypatch):
    original = gitea_stack.bundle.render_template

    def render_with_nginx_change(template, **context):
        content = original(template, **context)
        return content + "# changed\n" if template.startswith("nginx/") else content

    monkeypatch.setattr(gitea_stack.bundle, "render_template", render_with_nginx_change)
    before, after = triggers(example_run), triggers(run_with())
    changed = {name for name in STEPS if before[name] != after[name]}
    assert changed == {"provision-copy-bundle", "provision-converge"}


@pytest.mark.parametrize("changes, expected", [
    ({"instanceType": "t3.large"}, {"provision-copy-bundle", "provision-converge"}),  # memory limits
    ({"alertEmails": ["ops@example.com"]}, {"provision-copy-bundle", "provision-converge"}),
    # A grown data volume: the converge grows the filesystem (the size is in settings.env).
    ({"dataVolumeGiB": 80}, {"provision-copy-bundle", "provision-converge"}),
])
def test_setting_changes_rerun_what_depends_on_them(example_run, run_with, changes, expected):
    before, after = triggers(example_run), triggers(run_with(**changes))
    assert {name for name in STEPS if before[name] != after[name]} == expected


def test_the_replay_harness_orders_steps_by_their_dependencies(example_run):
    from tests.harness.replay import remote_steps, stored_secrets
    order = [step.name for step in remote_steps(example_run)]
    assert order[0] == "provision-wait-for-host" and order[-1] == "provision-converge"
    assert set(order) == set(STEPS)
    secrets = stored_secrets(example_run)
    assert len(secrets) == 10 and all(name.startswith("gitea-stack/prod/") for name in secrets)
    assert secrets["gitea-stack/prod/postgres-password-MOCK"] == "MOCK-SECRET-secrets-postgres-password-Zq7"
