"""Updates that roll back, end to end on the testbed: update.sh by hand, by the weekly timer, and
through `pulumi up` with a new tag in the stack config (replayed remote steps), a PostgreSQL major
upgrade among them.

The stack's images come from a real registry inside the testbed (Debian's docker-registry), so
every update is a real `docker pull`. Next to the stand-in images, the registry holds images built
from them for these tests: an nginx that is fine and one that exits at start, a Gitea 1.28.1 that
migrates the database to its schema, and Gitea 1.28.0 and 1.29.0 builds whose migration fails
half-way (they change the schema, then exit). The Gitea stand-in refuses a database a newer
release migrated, as Gitea does, so only a restored database lets the older one serve again.

The forge runs on PostgreSQL 15 (the postgres stand-in built from Debian bookworm) until the last
cases, where the stack config names PostgreSQL 17 (the stand-in from trixie): first a 17 build that
does not start (the converge fails, the 15 cluster is back and serves Gitea), then a working one
(every row of every table is there, the old cluster is gone).

Each case asserts the service's final image, its health, the data, and the mail SES took. The
rollback times update.sh reports (from the failed health check to the previous image healthy
again) are written to bench/results/update-rollback.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gitea_stack.versions import UPDATE_POLICY, image_tag
from tests.e2e import test_replay
from tests.e2e.test_replay import (
    DOMAIN,
    check_replay,
    containers,
    create_backup_bucket,
    https_get,
    psql,
    stack_config,
    store_secrets,
)
from tests.harness.pulumi_mocks import run_program
from tests.harness.replay import replay
from tests.harness.testbed_images import (
    OLDER_POSTGRES_MAJOR,
    build_older_postgres_image,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "update-rollback.json"
UPDATE = "/opt/gitea-stack/scripts/update.sh"
DATA = "/srv/gitea-stack"
STATE = f"{DATA}/state"
# The tags the stand-ins are pushed as where the update lines need real-looking ones.
REGISTRY_TAGS = {"gitea": "1.27.3-rootless", "nginx": "1.30.1-alpine"}
# Images built from the stand-ins for these tests: (service, tag) -> Dockerfile lines.
DERIVED_IMAGES = {
    ("nginx", "1.30.2-alpine"): 'LABEL stands-for="nginx 1.30.2: healthy"',
    ("nginx", "1.30.3-alpine"): 'LABEL stands-for="nginx 1.30.3: exits at start"\n'
                                'CMD ["sh", "-c", "echo this nginx build is broken >&2; exit 1"]',
    ("gitea", "1.28.0-rootless"): "ENV STANDIN_VERSION=1.28.0 STANDIN_MIGRATION_FAILS=true",
    ("gitea", "1.28.1-rootless"): "ENV STANDIN_VERSION=1.28.1",
    ("gitea", "1.29.0-rootless"): "ENV STANDIN_VERSION=1.29.0 STANDIN_MIGRATION_FAILS=true",
    ("postgres", "17.0-broken"): 'CMD ["sh", "-c", "echo this postgres build is broken >&2; exit 1"]',
}
CACHE_DIR = Path("/var/cache/gitea-stack-testbed")
ROWS = 20_000
# Every row of the PostgreSQL upgrade's tables, in one digest.
CONTENT = ("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM "
           "(SELECT 'a' || a::text AS t FROM upgrade_accounts a UNION ALL "
           "SELECT 'o' || o::text FROM upgrade_orders o) rows;")

testbed, images, target = test_replay.testbed, test_replay.images, test_replay.target
# Seconds from the failed health check to the previous image serving again (its healthcheck passes)
# and to Docker marking it healthy (at its healthcheck's next interval).
rollback_seconds: dict[str, dict[str, float]] = {}
upgrade_seconds: dict[str, float] = {}


def push_to_registry(testbed, images: dict[str, str], tags: dict[str, str],
                     derived: dict[tuple[str, str], str]) -> dict[str, str]:
    """Starts the testbed's registry and pushes every image there, tagged as `tags` says (else as
    it is), and the images `derived` from them ((service, tag) -> Dockerfile lines), which are then
    removed locally so that the host pulls them. {service: its reference in the registry}."""
    address = testbed.start_registry()
    pushed = {}
    for service, reference in images.items():
        pushed[service] = f"{address}/gitea-stack-testbed/{service}:{tags.get(service, image_tag(reference))}"
        testbed.docker("tag", reference, pushed[service])
        testbed.docker("push", pushed[service], timeout=1200)
    for (service, tag), lines in derived.items():
        image = repository(pushed[service]) + f":{tag}"
        testbed.docker("build", "--quiet", "--tag", image, "-", input=f"FROM {pushed[service]}\n{lines}\n")
        testbed.docker("push", image)
        testbed.docker("rmi", image)
    return pushed


@pytest.fixture(scope="module")
def registry(testbed, images) -> dict[str, str]:
    """The stand-ins, the derived images and PostgreSQL 15 ("postgres-15") in the registry."""
    older = build_older_postgres_image(testbed.docker_host, CACHE_DIR)
    return push_to_registry(testbed, {**images, "postgres-15": older}, REGISTRY_TAGS, DERIVED_IMAGES)


def stack_images(registry: dict[str, str], **changes: str) -> dict[str, str]:
    """The stack config's images: the registry's, with PostgreSQL 15 unless `changes` say otherwise."""
    images = {service: reference for service, reference in registry.items() if service != "postgres-15"}
    return {**images, "postgres": registry["postgres-15"], **changes}


def repository(reference: str) -> str:
    return reference.rpartition(":")[0]


@pytest.fixture(scope="module")
def stack_run(testbed, registry):
    run = run_program(stack_config(testbed, stack_images(registry)), stack="e2e")
    store_secrets(testbed, run)
    testbed.boto3_client("ses").verify_domain_identity(Domain=DOMAIN)
    return run


@pytest.fixture(scope="module")
def converged(testbed, stack_run, target):
    check_replay(stack_run, target)
    create_backup_bucket(testbed)  # the pre-update backups go there
    psql(testbed, "CREATE TABLE update_canary (note TEXT); ALTER TABLE update_canary OWNER TO gitea;"
                  "INSERT INTO update_canary VALUES ('written before any update');")
    yield
    RESULTS.parent.mkdir(exist_ok=True)
    if rollback_seconds:
        RESULTS.write_text(json.dumps({
            "rollback_seconds": rollback_seconds, "postgres_upgrade_seconds": upgrade_seconds,
            "measured_on": "the e2e testbed (stand-in images, loopback registry)"}, indent=2) + "\n")


def update(testbed, arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return testbed.run(f"{UPDATE} {arguments}", check=False, env=env, timeout=900)


def running_image(testbed, service: str) -> str:
    return testbed.run(f"docker inspect --format '{{{{.Config.Image}}}}' {containers(testbed)[service][0]}").stdout.strip()


def health(testbed, service: str) -> str:
    return testbed.run(f"docker inspect --format '{{{{.State.Health.Status}}}}' {containers(testbed)[service][0]}").stdout.strip()


def mails_after(testbed, count: int) -> list[dict]:
    return testbed.sent_mails()[count:]


def served(testbed) -> bool:
    status, body, _ = https_get(testbed, "/api/healthz")
    return status == 200 and b"pass" in body


def gitea_version(testbed) -> str:
    return json.loads(https_get(testbed, "/api/v1/version")[1])["version"]


def schema(testbed) -> str:
    return psql(testbed, "SELECT version FROM version WHERE id = 1;")


def outcome(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def applied_images(testbed) -> str:
    path = testbed.path(f"{STATE}/images.conf")
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize(("arguments", "message"), [
    ("", "name the service to update"),
    ("--to 1.30.2-alpine mailserver", "unknown service 'mailserver'; expected one of: "),
    ("--to 1.28.1-rootless gitea", "gitea is updated only on an operator's word: add --yes"),
    ("postgres", "postgres is updated only on an operator's word: add --yes"),
    ("--to 1.31.0-alpine nginx", "1.31.0-alpine is outside nginx's update line"),
    ("--to latest nginx", "'latest' names no release"),
    ("--to 'bad tag' nginx", "'bad tag' is not an image tag"),
    ("--to 19.1-trixie --yes postgres", "a major upgrade goes through the stack config"),
    ("--auto nginx", "--auto takes no service"),
    ("--frobnicate nginx", "unknown option --frobnicate"),
])
def test_bad_input_is_refused_clearly_and_changes_nothing(testbed, converged, arguments, message):
    before, mails = containers(testbed), len(testbed.sent_mails())
    result = update(testbed, arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert containers(testbed) == before and applied_images(testbed) == ""
    assert len(testbed.sent_mails()) == mails


def test_a_dry_run_says_what_would_happen_and_changes_nothing(testbed, registry, converged):
    before = containers(testbed)
    result = update(testbed, "--dry-run --json --to 1.30.2-alpine nginx")
    assert result.returncode == 0, result.stderr
    assert f"runs now:   {registry['nginx']}" in result.stderr
    assert f"would pull: {repository(registry['nginx'])}:1.30.2-alpine" in result.stderr
    assert outcome(result)["outcome"] == "dry-run"
    assert containers(testbed) == before and applied_images(testbed) == ""
    assert not testbed.path(f"{STATE}/update-status.json").exists()


def test_a_tag_that_does_not_exist_changes_nothing(testbed, registry, converged):
    before, mails = containers(testbed), len(testbed.sent_mails())
    result = update(testbed, "--json --to 1.30.9-alpine nginx")
    assert result.returncode == 4, result.stderr
    assert "could not pull" in result.stderr and "nothing was changed" in result.stderr
    assert containers(testbed) == before and running_image(testbed, "nginx") == registry["nginx"]
    [mail] = mails_after(testbed, mails)
    assert "could not pull" in mail["subject"] and "Nothing was changed" in mail["body"]


def test_a_failing_pre_update_backup_abandons_the_update(testbed, registry, converged):
    before, mails = containers(testbed), len(testbed.sent_mails())
    password = "/opt/gitea-stack/secrets/host/restic-password"
    testbed.run(f"mv {password} {password}.away")
    try:
        result = update(testbed, "--to 1.30.2-alpine nginx")
    finally:
        testbed.run(f"mv {password}.away {password}")
    assert result.returncode == 5, result.stderr
    assert "the pre-update backup failed" in result.stderr
    assert containers(testbed) == before and running_image(testbed, "nginx") == registry["nginx"]
    assert applied_images(testbed) == "" and served(testbed)
    assert any("pre-update backup failed" in mail["subject"] for mail in mails_after(testbed, mails))


def test_a_concurrent_run_is_refused(testbed, registry, converged):
    holder = subprocess.Popen(
        [testbed.tools["nsenter"], "--target", str(testbed.holder.pid), "--mount", "--net", "--",
         "flock", "/run/lock/gitea-stack.lock", "sleep", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        testbed.run("for _ in $(seq 50); do flock --nonblock /run/lock/gitea-stack.lock true || exit 0; sleep 0.1; done; exit 1")
        before = containers(testbed)
        result = update(testbed, "--to 1.30.2-alpine nginx")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep that holds the lock with it
        holder.wait()
    assert result.returncode == 3, result.stderr
    assert "another gitea-stack job" in result.stderr and "nothing was changed" in result.stderr
    assert containers(testbed) == before and running_image(testbed, "nginx") == registry["nginx"]


def test_a_healthy_new_nginx_is_applied_alone(testbed, registry, converged):
    before, mails = containers(testbed), len(testbed.sent_mails())
    new = repository(registry["nginx"]) + ":1.30.2-alpine"
    result = update(testbed, "--json --to 1.30.2-alpine nginx")
    assert result.returncode == 0, result.stderr
    assert outcome(result)["outcome"] == "updated"
    after = containers(testbed)
    assert running_image(testbed, "nginx") == new and health(testbed, "nginx") == "healthy" and served(testbed)
    assert after["nginx"] != before["nginx"]
    assert {service: after[service] for service in after if service != "nginx"} == \
        {service: before[service] for service in before if service != "nginx"}
    # Kept on the data volume, so a new instance runs it too; compose runs it through the override.
    assert applied_images(testbed) == f"nginx {new}\n"
    assert f"image: {new}" in testbed.path("/opt/gitea-stack/runtime/images.yml").read_text()
    [mail] = mails_after(testbed, mails)
    assert "nginx updated to 1.30.2-alpine" in mail["subject"]


def test_an_nginx_that_does_not_start_is_rolled_back(testbed, registry, converged):
    mails = len(testbed.sent_mails())
    previous = repository(registry["nginx"]) + ":1.30.2-alpine"
    result = update(testbed, "--json --to 1.30.3-alpine nginx")
    assert result.returncode == 1, result.stderr
    reported = outcome(result)
    assert reported["outcome"] == "rolled-back" and reported["from"] == previous
    rollback_seconds["nginx"] = {"serving_again": reported["rollback_seconds"],
                                 "healthy_to_docker": reported["settled_seconds"]}
    assert running_image(testbed, "nginx") == previous and health(testbed, "nginx") == "healthy" and served(testbed)
    assert applied_images(testbed) == f"nginx {previous}\n"
    [mail] = mails_after(testbed, mails)
    assert "rolled back" in mail["subject"] and previous in mail["body"] and "What to do first" in mail["body"]


def test_the_weekly_run_applies_a_rebuilt_image_of_the_running_tag_without_mail(testbed, registry, converged):
    running = repository(registry["nginx"]) + ":1.30.2-alpine"
    old_id = testbed.docker("image", "inspect", "--format", "{{.Id}}", running).stdout.strip()
    testbed.docker("build", "--quiet", "--tag", running, "-",
                   input=f"FROM {running}\nLABEL rebuilt=\"a new base image under the same tag\"\n")
    testbed.docker("push", running)
    testbed.docker("tag", old_id, running)  # the host still has the old build under the tag
    mails = len(testbed.sent_mails())
    result = update(testbed, "--auto --json")
    assert result.returncode == 0, result.stderr
    outcomes = {line["service"]: line["outcome"] for line in map(json.loads, result.stdout.splitlines())}
    # Every service with the auto policy is looked at; only nginx's image was rebuilt.
    assert outcomes == {**{service: "up-to-date" for service, policy in UPDATE_POLICY.items() if policy == "auto"},
                        "nginx": "updated"}
    container = containers(testbed)["nginx"][0]
    assert testbed.run(f"docker inspect --format '{{{{.Image}}}}' {container}").stdout.strip() != old_id
    assert health(testbed, "nginx") == "healthy" and served(testbed)
    assert mails_after(testbed, mails) == []  # Diun announced it; a successful automatic update is no news


def test_a_gitea_upgrade_whose_migration_fails_gets_its_database_back(testbed, registry, converged):
    mails, schema_before = len(testbed.sent_mails()), schema(testbed)
    result = update(testbed, "--yes --json --to 1.28.0-rootless gitea")
    assert result.returncode == 1, result.stderr
    reported = outcome(result)
    assert reported["outcome"] == "rolled-back"
    rollback_seconds["gitea (with its database restored)"] = {"serving_again": reported["rollback_seconds"],
                                                              "healthy_to_docker": reported["settled_seconds"]}
    assert running_image(testbed, "gitea") == registry["gitea"] and health(testbed, "gitea") == "healthy"
    assert gitea_version(testbed) == "1.27.3" and served(testbed)
    # The half-migrated schema is gone: the database is the pre-update dump's.
    assert schema(testbed) == schema_before == "327"
    assert psql(testbed, "SELECT to_regclass('standin_half_migrated') IS NULL;") == "t"
    assert psql(testbed, "SELECT note FROM update_canary;") == "written before any update"
    assert not testbed.path(f"{STATE}/pre-update").exists()
    [mail] = mails_after(testbed, mails)
    assert "gitea" in mail["subject"] and "rolled back" in mail["subject"]
    assert "with its database as it was before the update" in mail["body"]


def converge_with_gitea(testbed, registry, target, tag: str):
    """`pulumi up`'s remote steps with the gitea entry of `images` at `tag`."""
    images = stack_images(registry, gitea=repository(registry["gitea"]) + f":{tag}")
    return replay(run_program(stack_config(testbed, images), stack="e2e"), target)


def test_a_new_gitea_tag_in_the_stack_config_goes_through_the_update_path(testbed, registry, target, converged):
    backups_before = json.loads(testbed.path(f"{STATE}/backup-status.json").read_text())["last_success"]
    mails = len(testbed.sent_mails())
    results = converge_with_gitea(testbed, registry, target, "1.28.1-rootless")
    step, converge = results[-1]
    assert converge.returncode == 0, converge.stderr.decode()[-3000:]
    assert b"updating it through update.sh" in converge.stderr
    assert running_image(testbed, "gitea").endswith(":1.28.1-rootless") and health(testbed, "gitea") == "healthy"
    assert gitea_version(testbed) == "1.28.1" and schema(testbed) == "328"
    assert psql(testbed, "SELECT note FROM update_canary;") == "written before any update"
    # A backup was taken first; the stack config now says what runs, so nothing is kept as applied.
    assert json.loads(testbed.path(f"{STATE}/backup-status.json").read_text())["last_success"] != backups_before
    assert not any(line.startswith("gitea ") for line in applied_images(testbed).splitlines())
    assert any("gitea updated to 1.28.1-rootless" in mail["subject"] for mail in mails_after(testbed, mails))


def test_an_unhealthy_gitea_tag_in_the_stack_config_fails_the_converge_rolled_back(testbed, registry, target, converged):
    results = converge_with_gitea(testbed, registry, target, "1.29.0-rootless")
    step, converge = results[-1]
    assert converge.returncode != 0
    assert b"update.sh rolled gitea back to" in converge.stderr and b"serves again" in converge.stderr
    assert running_image(testbed, "gitea").endswith(":1.28.1-rootless") and health(testbed, "gitea") == "healthy"
    assert gitea_version(testbed) == "1.28.1" and schema(testbed) == "328" and served(testbed)
    assert psql(testbed, "SELECT to_regclass('standin_half_migrated') IS NULL;") == "t"
    assert psql(testbed, "SELECT note FROM update_canary;") == "written before any update"
    # Kept as applied, so a converge with the same config does not start 1.29.0 without the update path.
    assert f"gitea {repository(registry['gitea'])}:1.28.1-rootless" in applied_images(testbed).splitlines()


def converge_with_postgres(testbed, registry, target, postgres: str):
    """`pulumi up`'s remote steps with `postgres` in `images` (and the gitea that runs now)."""
    images = stack_images(registry, gitea=repository(registry["gitea"]) + ":1.28.1-rootless", postgres=postgres)
    return replay(run_program(stack_config(testbed, images), stack="e2e"), target)


def server_major(testbed) -> str:
    return psql(testbed, "SHOW server_version_num;")[:2]


@pytest.fixture(scope="module")
def upgrade_data(testbed, converged) -> str:
    """Rows in two tables with a foreign key and sequences, owned by gitea; their digest."""
    psql(testbed, f"""
        CREATE TABLE upgrade_accounts (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, created TIMESTAMPTZ NOT NULL);
        CREATE TABLE upgrade_orders (id BIGSERIAL PRIMARY KEY,
            account BIGINT NOT NULL REFERENCES upgrade_accounts (id), note TEXT, amount NUMERIC(12, 2));
        INSERT INTO upgrade_accounts (name, created)
            SELECT 'account ' || i, timestamptz '2026-01-01' + i * interval '1 minute' FROM generate_series(1, {ROWS}) i;
        INSERT INTO upgrade_orders (account, note, amount)
            SELECT 1 + i % {ROWS}, repeat('x', i % 50), i / 7.0 FROM generate_series(1, {ROWS}) i;
        ALTER TABLE upgrade_accounts OWNER TO gitea; ALTER TABLE upgrade_orders OWNER TO gitea;""")
    return psql(testbed, CONTENT)


def test_a_postgres_major_upgrade_whose_new_major_does_not_start_puts_the_old_cluster_back(
        testbed, registry, target, converged, upgrade_data):
    assert server_major(testbed) == str(OLDER_POSTGRES_MAJOR)
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == str(OLDER_POSTGRES_MAJOR)
    mails = len(testbed.sent_mails())
    results = converge_with_postgres(testbed, registry, target, repository(registry["postgres"]) + ":17.0-broken")
    converge = results[-1][1]
    assert converge.returncode != 0
    assert b"upgraded to 17 by a dump and restore" in converge.stderr
    assert b"update.sh rolled postgres back to" in converge.stderr
    # PostgreSQL 15 with its own files serves Gitea again; nothing of the attempt is left.
    assert running_image(testbed, "postgres") == registry["postgres-15"] and server_major(testbed) == "15"
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == "15"
    assert not testbed.path(f"{DATA}/postgres-15.before-upgrade").exists()
    assert psql(testbed, CONTENT) == upgrade_data and served(testbed)
    assert health(testbed, "gitea") == "healthy" and gitea_version(testbed) == "1.28.1"
    assert any("postgres" in mail["subject"] and "rolled back" in mail["subject"]
               for mail in testbed.sent_mails()[mails:])


def test_a_postgres_major_upgrade_keeps_every_row_and_removes_the_old_cluster(
        testbed, registry, target, converged, upgrade_data):
    gitea_before = containers(testbed)["gitea"]
    started = time.monotonic()
    results = converge_with_postgres(testbed, registry, target, registry["postgres"])
    took = upgrade_seconds["converge with a 15 -> 17 upgrade, 40,000 rows"] = round(time.monotonic() - started, 1)
    step, converge = results[-1]
    assert converge.returncode == 0, converge.stderr.decode()[-3000:]
    assert b"upgrading PostgreSQL 15 to 17 by dump and restore" in converge.stderr
    assert running_image(testbed, "postgres") == registry["postgres"] and server_major(testbed) == "17"
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == "17"
    assert psql(testbed, CONTENT) == upgrade_data
    assert psql(testbed, "SELECT count(*) FROM upgrade_orders o JOIN upgrade_accounts a ON a.id = o.account;") \
        == str(ROWS)
    assert psql(testbed, "SELECT note FROM update_canary;") == "written before any update"
    # Sequences carry on where they were, and Gitea owns what it owned.
    assert psql(testbed, "INSERT INTO upgrade_accounts (name, created) VALUES ('after', now()) RETURNING id;") \
        .splitlines()[0] == str(ROWS + 1)
    assert psql(testbed, "SELECT tableowner FROM pg_tables WHERE tablename = 'upgrade_orders';") == "gitea"
    assert not testbed.path(f"{DATA}/postgres-15.before-upgrade").exists()
    assert containers(testbed)["gitea"][0] == gitea_before[0] and served(testbed)
    assert schema(testbed) == "328"
    print(f"\nPostgreSQL 15 -> 17 with {2 * ROWS} rows: the converge took {took:.0f}s")
