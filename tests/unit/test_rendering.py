"""Rendering of the host's first-boot config, and the IAM documents as plain data."""

from __future__ import annotations

import jinja2
import pytest
import yaml

from gitea_stack import iam_documents, rendering
from tests.harness.bundles import variant

SETTINGS = variant("example")


def test_user_data_is_valid_cloud_config_and_deterministic():
    first = rendering.render_user_data(SETTINGS, "vol-0abc")
    assert first == rendering.render_user_data(SETTINGS, "vol-0abc")
    assert first.startswith("#cloud-config\n")
    config = yaml.safe_load(first)
    assert set(config) == {"write_files", "runcmd"}


def test_user_data_carries_the_mount_script_verbatim():
    config = yaml.safe_load(rendering.render_user_data(SETTINGS, "vol-0abc"))
    script = next(f for f in config["write_files"] if f["path"] == "/usr/local/sbin/gitea-stack-mount-data")
    assert script["permissions"] == "0755"
    assert script["content"] == rendering.read_script("mount-data-volume.sh")


def test_user_data_turns_off_socket_activated_ssh_before_restarting_sshd():
    commands = yaml.safe_load(rendering.render_user_data(SETTINGS, "vol-0abc"))["runcmd"]
    assert commands.index(["systemctl", "disable", "--now", "ssh.socket"]) < commands.index(
        ["systemctl", "restart", "ssh.service"])


def test_a_missing_template_variable_fails_loudly_naming_it():
    with pytest.raises(jinja2.UndefinedError, match="data_volume_id"):
        rendering.render_template("cloud-init.yaml.j2", stack="prod", admin_ssh_port=2222, git_ssh_port=22,
                                  data_mount_point="/srv", mount_script="")


def all_statements(document):
    return document["Statement"]


@pytest.mark.parametrize("document", [
    iam_documents.backup_bucket_access("arn:aws:s3:::bucket"),
    iam_documents.read_secrets(["arn:aws:secretsmanager:eu-central-1:1:secret:a"]),
    iam_documents.send_mail_from_domain(["arn:aws:ses:eu-central-1:1:identity/git.example.com"], "git.example.com"),
])
def test_no_document_grants_a_wildcard(document):
    assert all_statements(document)
    for statement in all_statements(document):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert not any(a == "*" or a.endswith(":*") for a in actions)
        assert "*" not in resources
