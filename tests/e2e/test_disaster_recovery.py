"""Disaster recovery into a new stack, end to end on the testbed.

Stack A is deployed by replaying `pulumi up`'s remote steps; real repositories are pushed to it with
the git client over HTTPS through nginx (the Gitea stand-in serves git's smart HTTP with `git
http-backend`), database rows are added, and the backup runs exactly as its systemd unit runs it.
Then A's host is gone: a new instance with a new, empty data volume. Stack B, another stack whose
config says `restoreFrom: {bucket: <A's bucket>, passwordSecret: <A's restic password ARN>}`, is
converged on it. Every repository is cloned back from B and compared (refs and trees), the rows are
compared, A's administrator signs in to B, and the time from B's first step to a healthy forge
(the RTO of this path) is written to bench/results/dr-rto.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import test_replay
from tests.e2e.test_replay import (DOMAIN, check_replay, containers, create_backup_bucket, https_get,
                                   stack_config)
from tests.harness.pulumi_mocks import run_program
from tests.harness.replay import remote_steps, replay, stored_secrets

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "dr-rto.json"
REPOSITORIES = ("website", "infrastructure", "handbook")
ROWS = 5_000


# test_replay's module fixtures, instantiated for this module: a testbed of its own, the images and
# the SSH target.
testbed, images, target = test_replay.testbed, test_replay.images, test_replay.target


def facts(testbed) -> dict[str, str]:
    text = testbed.path("/opt/gitea-stack/stack-facts.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


# The mocks derive secret values from resource names, the same in every stack; stack B's get this
# suffix, so that its admin password and secret key really differ from A's.
STACK_B_SUFFIX = "-of-stack-b"


def stack_secrets(run, suffix: str = "") -> dict[str, str]:
    """What Secrets Manager holds for the stack: the program's values (JSON ones as they are) + suffix."""
    return {name: value if value.startswith("{") else value + suffix for name, value in stored_secrets(run).items()}


def deploy(testbed, run, suffix: str = "") -> None:
    secrets_manager = testbed.boto3_client("secretsmanager")
    for name, value in stack_secrets(run, suffix).items():
        secrets_manager.create_secret(Name=name, SecretString=value)


def secret(run, key: str, suffix: str = "") -> str:
    return next(value for name, value in stack_secrets(run, suffix).items() if f"/{key}-" in name)


def admin_password(run, suffix: str = "") -> str:
    return secret(run, "gitea-admin-password", suffix)


class Client:
    """git and the API of the forge at DOMAIN, reached at the testbed's address with pebble's CA."""

    def __init__(self, testbed, work: Path, password: str):
        self.testbed, self.work = testbed, work
        self.ca = work / "pebble-root.pem"
        self.ca.write_text(testbed.pebble_root_pem())
        askpass = work / "askpass"
        askpass.write_text("#!/bin/sh\nprintf '%s\\n' \"$E2E_GIT_PASSWORD\"\n")
        askpass.chmod(0o700)
        self.env = {**os.environ, "GIT_SSL_CAINFO": str(self.ca), "GIT_ASKPASS": str(askpass),
                    "E2E_GIT_PASSWORD": password, "GIT_TERMINAL_PROMPT": "0"}
        self.password = password

    def git(self, *args: str, cwd: Path | None = None) -> str:
        resolve = f"http.curloptResolve={DOMAIN}:443:{self.testbed.address}"
        result = subprocess.run(["git", "-c", resolve, *args], cwd=cwd, env=self.env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
        return result.stdout

    def api(self, method: str, path: str, body: dict | None = None, password: str | None = None) -> tuple[int, dict]:
        config = "\n".join([f'user = "gitea-admin:{password or self.password}"', f'request = "{method}"',
                            f'url = "https://{DOMAIN}{path}"', 'write-out = "\\n%{http_code}"', "silent"]
                           + ([f"data = {json.dumps(json.dumps(body))}", 'header = "Content-Type: application/json"']
                              if body is not None else []))
        result = subprocess.run(["curl", "--config", "-", "--cacert", str(self.ca), "--resolve",
                                 f"{DOMAIN}:443:{self.testbed.address}"], input=config, capture_output=True,
                                text=True, timeout=60)
        text, _, status = result.stdout.rpartition("\n")
        return int(status or 0), json.loads(text) if text.strip().startswith("{") else {}


def make_repository(client: Client, name: str, commits: int) -> Path:
    status, _ = client.api("POST", "/api/v1/user/repos", {"name": name, "description": f"{name} of team A"})
    assert status == 201, status
    clone = client.work / name
    client.git("init", "--quiet", "-b", "main", str(clone))
    identity = ("-c", "user.name=Alice", "-c", "user.email=alice@example.com")
    for number in range(commits):
        (clone / f"file{number % 5}.txt").write_text(f"{name} {number}\n" + os.urandom(4000).hex())
        client.git("-C", str(clone), "add", ".")
        client.git("-C", str(clone), *identity, "commit", "--quiet", "-m", f"{name}: change {number}")
        if number == commits // 2:
            client.git("-C", str(clone), "branch", "release")
    client.git("-C", str(clone), "tag", "v1.0")
    url = f"https://gitea-admin@{DOMAIN}/gitea-admin/{name}.git"
    client.git("-C", str(clone), "push", "--quiet", url, "main", "release", "v1.0")
    return clone


def refs_and_trees(client: Client, name: str) -> dict[str, str]:
    """Every ref of the repository on the forge, and the tree of main, through a fresh clone."""
    refs = dict(reversed(line.split("\t")) for line in
                client.git("ls-remote", f"https://{DOMAIN}/gitea-admin/{name}.git").splitlines())
    clone = client.work / f"clone-{name}-{time.monotonic_ns()}"
    client.git("clone", "--quiet", "--mirror", f"https://{DOMAIN}/gitea-admin/{name}.git", str(clone))
    fsck = subprocess.run(["git", "-C", str(clone), "fsck", "--full", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    refs["main^{tree}"] = subprocess.run(["git", "-C", str(clone), "rev-parse", "main^{tree}"], capture_output=True,
                                         text=True, check=True).stdout.strip()
    return refs


def psql(testbed, sql: str) -> str:
    postgres = containers(testbed)["postgres"][0]
    return testbed.run(f"docker exec -i {postgres} psql -U postgres -d gitea -At", input=sql).stdout.strip()


def database_checksums(testbed) -> dict[str, str]:
    return {table: psql(testbed, f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t.id)) FROM {table} t;")
            for table in ("repository", "issue")}


def exec_start_of(testbed, unit: str) -> str:
    """The command systemd runs for `unit`, as the converge installed it."""
    text = testbed.path(f"/etc/systemd/system/{unit}").read_text()
    [command] = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]
    return command


@pytest.fixture(scope="module")
def stack_a(testbed, images, target, tmp_path_factory):
    """Stack A converged, holding repositories and rows, backed up by its timer's service."""
    run = run_program(stack_config(testbed, images), stack="e2e")
    deploy(testbed, run)
    check_replay(run, target)
    client = Client(testbed, tmp_path_factory.mktemp("team-a"), admin_password(run))
    for number, name in enumerate(REPOSITORIES):
        make_repository(client, name, commits=6 + 3 * number)
    psql(testbed, f"""CREATE TABLE issue (id bigserial PRIMARY KEY, repo_id bigint NOT NULL REFERENCES repository(id),
                                          title text NOT NULL, content text);
                      INSERT INTO issue (repo_id, title, content) SELECT (SELECT min(id) FROM repository) + i % 3,
                          'issue ' || i, md5(i::text) || md5((i * 7)::text) FROM generate_series(1, {ROWS}) i;""")
    expected = {"repositories": {name: refs_and_trees(client, name) for name in REPOSITORIES},
                "rows": database_checksums(testbed)}
    a_facts = create_backup_bucket(testbed)
    backup = testbed.run(exec_start_of(testbed, "gitea-stack-backup.service"), check=False)
    assert backup.returncode == 0, backup.stderr[-3000:]
    secret_arn = testbed.boto3_client("secretsmanager").describe_secret(
        SecretId=a_facts["SECRET_RESTIC_PASSWORD"])["ARN"]
    return {"run": run, "client": client, "expected": expected, "facts": a_facts, "secret_arn": secret_arn}


@pytest.fixture(scope="module")
def stack_b(testbed, images, target, stack_a):
    """A's host and volume are gone; stack B restores A's latest backup run on its first converge."""
    restore_from = {"bucket": stack_a["facts"]["BACKUP_BUCKET"], "passwordSecret": stack_a["secret_arn"]}
    run = run_program(stack_config(testbed, images, restoreFrom=json.dumps(restore_from)), stack="dr")
    deploy(testbed, run, STACK_B_SUFFIX)
    # First with a secret that holds the wrong password, on a new host with an empty volume.
    wrong = testbed.boto3_client("secretsmanager").create_secret(Name="gitea-stack/old/not-the-password",
                                                                 SecretString="not-the-password")["ARN"]
    testbed.replace_instance()
    testbed.replace_data_volume(2048)
    wrong_run = run_program(stack_config(testbed, images, restoreFrom=json.dumps(
        {**restore_from, "passwordSecret": wrong})), stack="dr")
    failed = replay(wrong_run, target)
    wrong_password = {"step": failed[-1][0].name, "code": failed[-1][1].returncode,
                      "output": failed[-1][1].stderr.decode() + failed[-1][1].stdout.decode(),
                      "containers": containers(testbed),
                      "volume": sorted(str(path.relative_to(testbed.path("/srv/gitea-stack")))
                                       for path in testbed.path("/srv/gitea-stack").rglob("*"))}
    testbed.restore_data_volume()
    # Then with the right one, on another new host with an empty volume: the RTO of this path.
    testbed.replace_instance()
    testbed.replace_data_volume(2048)  # the new stack's own new, empty volume
    started = time.monotonic()
    results = check_replay(run, target)
    status, _, _ = https_get(testbed, "/api/healthz")
    rto = time.monotonic() - started
    assert status == 200
    steps = {step.name: None for step in remote_steps(run)}
    converge_output = next(result for step, result in results if step.name == "provision-converge")
    b_facts = facts(testbed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rto_s": round(rto, 1), "steps": list(steps), "repositories": len(REPOSITORIES),
        "rows": sum(int(value.split(":")[0]) for value in stack_a["expected"]["rows"].values()),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "what": "testbed: from the first remote step of stack B's `pulumi up` (restoreFrom) to /api/healthz 200 "
                "over HTTPS; no EC2 boot, no image pulls (both add minutes on AWS)"}, indent=2) + "\n")
    print(f"\nDR into a new stack: {rto:.1f}s from B's first step to a healthy forge")
    yield {"run": run, "facts": b_facts, "rto": rto, "converge": converge_output, "wrong_password": wrong_password}
    testbed.restore_data_volume()


def test_stack_a_s_weekly_check_and_monthly_drill_pass_on_its_backup(testbed, stack_a):
    """As their systemd units run them, on the real dockerd: the drill's scratch PostgreSQL is a
    container of the stack's own postgres image."""
    check = testbed.run(exec_start_of(testbed, "gitea-stack-backup-check.service"), check=False)
    assert check.returncode == 0, check.stderr[-3000:]
    drill = testbed.run(exec_start_of(testbed, "gitea-stack-restore-drill.service") + " --json", check=False)
    assert drill.returncode == 0, drill.stderr[-3000:]
    report = json.loads(drill.stdout)
    assert report["state"] == "ok" and report["repositories_checked"] == len(REPOSITORIES)
    assert report["table_rows"]["public.issue"] == ROWS
    # The scratch container is gone; the forge's own containers still run.
    names = testbed.run("docker ps --all --format '{{.Names}}'").stdout.split()
    assert not any("restore-drill" in name for name in names)


def test_a_wrong_password_stops_the_new_stacks_converge_before_gitea_starts(stack_b):
    failed = stack_b["wrong_password"]
    assert failed["step"] == "provision-converge" and failed["code"] != 0
    assert "gitea-stack:restoreFrom: could not restore" in failed["output"]
    assert "wrong password" in failed["output"]
    assert "gitea" not in failed["containers"]  # Gitea never started
    # The volume holds no forge: no repositories, no Gitea data, and the restore still pending.
    assert not any(path.startswith("gitea/data/") for path in failed["volume"]), failed["volume"]
    assert "state/restore-from.pending" in failed["volume"]


def test_the_new_stack_restored_before_gitea_first_started(testbed, stack_b):
    log = stack_b["converge"].stderr.decode() + stack_b["converge"].stdout.decode()
    assert "restoreFrom: restoring the latest backup run of s3://" in log
    assert log.index("restoreFrom: restoring") < log.index("converged:")
    assert not testbed.path("/srv/gitea-stack/state/restore-from.pending").exists()


def test_every_repository_comes_back_with_its_refs_and_trees(stack_a, stack_b):
    client = stack_a["client"]
    for name, expected in stack_a["expected"]["repositories"].items():
        assert refs_and_trees(client, name) == expected, name


def test_the_rows_come_back(testbed, stack_a, stack_b):
    assert database_checksums(testbed) == stack_a["expected"]["rows"]


def test_the_old_administrator_signs_in_with_the_old_password(stack_a, stack_b):
    status, user = stack_a["client"].api("GET", "/api/v1/user")
    assert status == 200 and user["login"] == "gitea-admin"
    b_password = admin_password(stack_b["run"], STACK_B_SUFFIX)
    assert b_password != admin_password(stack_a["run"])
    status, _ = stack_a["client"].api("GET", "/api/v1/user", password=b_password)
    assert status == 401  # the new stack's adminPassword does not apply to the restored administrator


def test_the_restored_forge_keeps_the_old_secret_key_and_a_second_converge_changes_nothing(
        testbed, stack_a, stack_b, target):
    old_key = secret(stack_a["run"], "gitea-secret-key")
    assert old_key != secret(stack_b["run"], "gitea-secret-key", STACK_B_SUFFIX)
    assert testbed.path("/opt/gitea-stack/secrets/gitea/gitea-secret-key").read_text() == old_key
    assert testbed.path("/srv/gitea-stack/state/gitea-secrets/gitea-secret-key").read_text() == old_key
    before = containers(testbed)
    results = check_replay(stack_b["run"], target, only={"provision-converge"})
    assert "restoreFrom: restoring" not in results[0][1].stderr.decode()
    assert containers(testbed) == before


def test_the_new_stack_backs_up_into_its_own_bucket(testbed, stack_a, stack_b):
    assert stack_b["facts"]["BACKUP_BUCKET"] != stack_a["facts"]["BACKUP_BUCKET"]
    assert stack_b["facts"]["RESTORE_FROM_BUCKET"] == stack_a["facts"]["BACKUP_BUCKET"]
