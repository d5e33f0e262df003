"""A way back to retained data: after `pulumi destroy` and `pulumi up`, the same forge is served.

`pulumi destroy` keeps the data volume, the backup bucket and the secrets (retainDataOnDestroy); a
later `pulumi up` of the stack attaches that volume to a brand-new instance and reuses the secrets by
name. On the host, that up differs from a first one only in what it finds: a data volume that
already holds a forge, and a stack-facts.env naming the same secrets as before. One module testbed:

1. `pulumi up`'s remote steps converge a forge; a user and a private repository are created through
   it (the repository over HTTPS through nginx: a row in PostgreSQL, a directory on the volume).
2. destroy: `Testbed.replace_instance()`: the containers stop and go, the root disk is new (no
   bundle, no secret files, no units), only the data volume and Secrets Manager stay.
3. Contrast: the volume with NEW secrets in new Secrets Manager entries (what a `pulumi up` that
   takes the volume but not the secrets would make) is refused by the converge, which says why and
   changes nothing on the volume. (test_replay's secret-key test refuses a rotation on a running
   forge; this one shows the fingerprint on the data volume refusing on a new instance.)
4. adopt: another new instance; the same remote steps with the same secrets converge, and the same
   forge is served: the repository over HTTPS, both users sign in with their passwords, PostgreSQL
   kept its cluster, the certificate and the administrator are the ones from before.

Mounting a volume that already holds data (never formatting it) on a new instance is cloud-init's
part, tested in tests/host/test_mount_data_volume.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import stat
import tarfile
import time
from pathlib import Path

import pytest

from gitea_stack.rendering import DATA_MOUNT_POINT
from gitea_stack.secrets import GENERATED_SECRETS
from tests.e2e import test_replay
from tests.e2e.test_replay import (
    DOMAIN,
    check_replay,
    containers,
    psql,
    secret_name,
    served_serial,
    stack_config,
)
from tests.harness.pulumi_mocks import FakeAws, run_program
from tests.harness.replay import remote_steps, replay, stored_secrets

USER, USER_PASSWORD, USER_EMAIL = "alice", "AlicesOwnPassword0123456789", "alice@example.com"
REPOSITORY = "kept-through-destroy"
REPOSITORY_PATH = f"{DATA_MOUNT_POINT}/gitea/data/git/repositories/{USER}/{REPOSITORY}.git"
STATE_DIR = f"{DATA_MOUNT_POINT}/state"

# test_replay's module fixtures, instantiated for this module: a testbed of its own, the images, the
# SSH target, and the program run under mocks with its secrets seeded into moto.
testbed, images, target, stack_run = test_replay.testbed, test_replay.images, test_replay.target, test_replay.stack_run

# --- the forge, over HTTPS through nginx ---------------------------------------------------------------

def forge_request(testbed, method: str, path: str, credentials: tuple[str, str] | None = None,
                  payload: dict | None = None) -> tuple[int, dict]:
    """An API request to https://DOMAIN through nginx, the certificate checked against pebble's root."""
    context = ssl.create_default_context(cadata=testbed.pebble_root_pem())
    connection = http.client.HTTPSConnection(DOMAIN, 443, timeout=10, context=context)
    connection.sock = context.wrap_socket(socket.create_connection((testbed.address, 443), timeout=10),
                                          server_hostname=DOMAIN)
    headers = {"Accept": "application/json"}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
    body = None
    if payload is not None:
        body, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def admin_credentials(run) -> tuple[str, str]:
    return "gitea-admin", stored_secrets(run)[secret_name(run, "gitea-admin-password")]


def text(testbed, path: str) -> str | None:
    """A testbed file's content, None when it does not exist."""
    try:
        return testbed.path(path).read_text()
    except FileNotFoundError:
        return None


def what_is_served(testbed, run) -> dict:
    """What the forge answers and holds that an adoption must keep."""
    gitea = containers(testbed)["gitea"][0]
    return {
        "repository": forge_request(testbed, "GET", f"/api/v1/repos/{USER}/{REPOSITORY}", (USER, USER_PASSWORD)),
        "as the administrator": forge_request(testbed, "GET", f"/api/v1/repos/{USER}/{REPOSITORY}",
                                              admin_credentials(run)),
        "anonymously": forge_request(testbed, "GET", f"/api/v1/repos/{USER}/{REPOSITORY}")[0],
        "administrator signs in": forge_request(testbed, "GET", "/api/v1/user", admin_credentials(run)),
        "user signs in": forge_request(testbed, "GET", "/api/v1/user", (USER, USER_PASSWORD)),
        "users": testbed.run(f"docker exec {gitea} gitea admin user list").stdout,
        "repository rows": psql(testbed, "SELECT id, owner_name, name, created_unix FROM repository;"),
        "cluster": psql(testbed, "SELECT system_identifier FROM pg_control_system();"),
        "certificate serial": served_serial(testbed),
        "repository HEAD": text(testbed, f"{REPOSITORY_PATH}/HEAD"),
        "fingerprints": {name: text(testbed, f"{STATE_DIR}/{name}")
                         for name in ("gitea-secret-key.sha256", "gitea-admin-password.sha256")},
    }


@pytest.fixture(scope="module")
def forge(testbed, stack_run, target) -> dict:
    """A converged forge with a user and a private repository; what it serves."""
    check_replay(stack_run, target)
    gitea = containers(testbed)["gitea"][0]
    testbed.run(f"docker exec {gitea} gitea admin user create --username {USER} --email {USER_EMAIL} "
                f"--password {USER_PASSWORD} --must-change-password=false")
    status, created = forge_request(testbed, "POST", "/api/v1/user/repos", (USER, USER_PASSWORD),
                                    {"name": REPOSITORY, "description": "made before destroy", "private": True})
    assert status == 201, created
    return what_is_served(testbed, stack_run)


def test_the_forge_serves_the_user_and_repository_made_through_it(forge):
    status, repository = forge["repository"]
    assert status == 200 and repository["full_name"] == f"{USER}/{REPOSITORY}" and repository["private"] is True
    assert forge["as the administrator"] == forge["repository"]
    assert forge["anonymously"] == 404  # private: the sign-ins below are what shows it
    assert forge["administrator signs in"][0] == 200 and forge["administrator signs in"][1]["login"] == "gitea-admin"
    assert forge["user signs in"][0] == 200 and forge["user signs in"][1]["login"] == USER
    assert forge["repository rows"].split("|")[1:3] == [USER, REPOSITORY]  # Gitea's database
    assert forge["repository HEAD"] == "ref: refs/heads/main\n"            # and the data volume
    assert None not in forge["fingerprints"].values()


# --- destroy -------------------------------------------------------------------------------------------

def data_volume(testbed) -> dict[str, tuple]:
    """Every entry of the data volume: mode, owner and (files) a digest of the content, (links) the target."""
    root = testbed.path(DATA_MOUNT_POINT)
    entries = {}
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = Path(directory, name)
            info = path.lstat()
            content = (hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode)
                       else os.readlink(path) if stat.S_ISLNK(info.st_mode) else None)
            entries[path.relative_to(root).as_posix()] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid,
                                                          content)
    return entries


def assert_a_fresh_instance(testbed):
    """Nothing of the old instance but its data volume: no containers, bundle, secrets, units or logs."""
    assert testbed.docker("ps", "--all", "--quiet").stdout.split() == []
    networks = testbed.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(networks) == ["bridge", "host", "none"]
    for directory in ("/opt/gitea-stack", "/etc/systemd/system", "/run/lock"):
        assert list(testbed.path(directory).iterdir()) == [], directory
    assert [p.name for p in testbed.path("/home/ubuntu").iterdir()] == [".ssh"]  # the upload is gone
    assert not testbed.path("/var/log/gitea-stack").exists()
    assert testbed.systemctl_calls() == []
    assert testbed.ssh("ls -A /opt/gitea-stack /etc/systemd/system").stdout.split() == \
        ["/etc/systemd/system:", "/opt/gitea-stack:"]  # as the host itself sees it


@pytest.fixture(scope="module")
def destroyed(testbed, forge) -> dict[str, tuple]:
    """The forge's instance destroyed, its data volume kept; what the volume holds."""
    testbed.replace_instance()
    return data_volume(testbed)


def test_destroy_leaves_a_fresh_instance_with_the_kept_data_volume(testbed, stack_run, destroyed):
    assert_a_fresh_instance(testbed)
    for kept in ("gitea/data/standin-state.json", "postgres/data/PG_VERSION", "state/gitea-secret-key.sha256",
                 f"letsencrypt/live/{DOMAIN}/fullchain.pem",
                 f"gitea/data/git/repositories/{USER}/{REPOSITORY}.git/HEAD"):
        assert kept in destroyed, kept
    assert "postgres/data/postmaster.pid" not in destroyed  # PostgreSQL was shut down cleanly
    secrets_manager = testbed.boto3_client("secretsmanager")
    for name, value in test_replay.seeded_secrets(stack_run, test_replay.smtp_endpoint(testbed)).items():  # retained
        assert secrets_manager.get_secret_value(SecretId=name)["SecretString"] == value


# --- contrast: the kept volume with new secrets ---------------------------------------------------------

class WithoutAdoptingTheSecrets(FakeAws):
    """A `pulumi up` that makes the secrets anew: pulumi-random draws new values, and Secrets Manager
    gives each secret a new name (its name prefix and a new random suffix)."""

    SUFFIX = "AFTERDESTROY"

    def new_resource(self, args):
        resource_id, outputs = super().new_resource(args)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = self._secret(f"NEW-SECRET-{args.name}-Yb4")
        elif args.typ == "aws:secretsmanager/secret:Secret":
            name = f"{args.inputs['namePrefix']}{self.SUFFIX}"
            outputs.update(name=name, arn=outputs["arn"].rsplit(":", 1)[0] + f":{name}")
        return resource_id, outputs


def uploaded(run, name: str) -> str:
    """A file of the bundle the copy step puts on the host."""
    (copy,) = [step for step in remote_steps(run) if step.name == "provision-copy-bundle"]
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(copy.stdin)), mode="r:gz") as archive:
        return archive.extractfile(name).read().decode()


def test_new_secrets_on_the_kept_volume_are_refused_and_change_nothing(testbed, images, target, stack_run,
                                                                       destroyed):
    fresh = run_program(stack_config(testbed, images), stack="e2e", mocks=WithoutAdoptingTheSecrets())
    new_secrets = {name.removesuffix("MOCK") + WithoutAdoptingTheSecrets.SUFFIX: value
                   for name, value in stored_secrets(fresh).items()}
    facts = uploaded(fresh, "stack-facts.env")
    named = {line.split("=", 1)[1] for line in facts.splitlines() if line.startswith("SECRET_")}
    assert named == set(new_secrets)  # the new instance is told about the new secrets only
    for key in GENERATED_SECRETS:  # new values too (the SMTP credentials are the same user's)
        assert stored_secrets(fresh)[secret_name(fresh, key)] != stored_secrets(stack_run)[secret_name(stack_run, key)]
    secrets_manager = testbed.boto3_client("secretsmanager")
    for name, value in new_secrets.items():
        secrets_manager.create_secret(Name=name, SecretString=value)

    results = replay(fresh, target)
    assert [step.name for step, _ in results] == [step.name for step in remote_steps(fresh)]
    for step, result in results[:-1]:
        assert result.returncode == 0, f"{step.name}: {result.stderr.decode()[-2000:]}"
    step, result = results[-1]
    assert step.name == "provision-converge" and result.returncode != 0
    said = result.stderr.decode()
    key_name = next(name for name in new_secrets if "/gitea-secret-key-" in name)
    assert f"gitea-secret-key in Secrets Manager ({key_name}) is not the key this forge's data was encrypted" \
           " with" in said
    assert "nothing was changed" in said and "AWSPREVIOUS" in said
    assert data_volume(testbed) == destroyed
    assert testbed.docker("ps", "--all", "--quiet").stdout.split() == []  # nothing was started
    assert list(testbed.path("/opt/gitea-stack/secrets").rglob("*")) == []  # no secret was installed


# --- adopt: a new instance, the same secrets -----------------------------------------------------------

@pytest.fixture(scope="module")
def adopted(testbed, stack_run, target, destroyed):
    """Another new instance for the kept volume, converged with the stack's own (retained) secrets."""
    testbed.replace_instance()  # whatever the contrast left on the instance goes with it
    assert_a_fresh_instance(testbed)
    assert data_volume(testbed) == destroyed
    started = time.monotonic()
    results = replay(stack_run, target)
    print(f"\nadopting replay: {time.monotonic() - started:.0f}s")
    return results


@pytest.fixture(scope="module")
def served_again(testbed, stack_run, adopted) -> dict:
    return what_is_served(testbed, stack_run)


def test_the_adopting_up_converges(stack_run, adopted):
    assert [step.name for step, _ in adopted] == [step.name for step in remote_steps(stack_run)]
    for step, result in adopted:
        assert result.returncode == 0, (
            f"{step.name} failed ({result.returncode}):\n{result.stdout.decode()[-3000:]}\n"
            f"{result.stderr.decode()[-3000:]}")


def test_the_same_data_is_served_over_https(forge, served_again):
    for what in ("repository", "as the administrator", "anonymously", "administrator signs in", "user signs in",
                 "repository HEAD"):
        assert served_again[what] == forge[what], what


def test_postgres_kept_its_cluster_and_gitea_its_rows(forge, served_again):
    assert served_again["cluster"] == forge["cluster"]  # initdb would have made a new system identifier
    assert served_again["repository rows"] == forge["repository rows"]


def test_nothing_was_made_anew(forge, adopted, served_again):
    served = served_again
    assert served["users"] == forge["users"]  # same ids: the administrator was not created again
    assert served["fingerprints"] == forge["fingerprints"]
    assert served["certificate serial"] == forge["certificate serial"]  # the certificate on the volume
    said = adopted[-1][1].stderr.decode()
    assert "creating the Gitea administrator" not in said and "requesting the first certificate" not in said
    assert f"converged: https://{DOMAIN}/" in said


def test_the_new_root_disk_was_set_up_again(testbed, stack_run, adopted):
    stored = stored_secrets(stack_run)
    for service, key in (("postgres", "postgres-password"), ("gitea", "gitea-secret-key"),
                         ("host", "gitea-admin-password")):
        assert testbed.path(f"/opt/gitea-stack/secrets/{service}/{key}").read_text() == \
            stored[secret_name(stack_run, key)], key
    assert testbed.path("/etc/systemd/system/docker.service.d/10-gitea-stack.conf").is_file()
    assert ["enable", "--now", "gitea-stack-certbot-renew.timer"] in testbed.systemctl_calls()
