"""A PostgreSQL major upgrade between two real majors, through `pulumi up`, on the testbed.

The forge starts on PostgreSQL 15 (the postgres stand-in built from Debian bookworm) with rows in
several tables, sequences and a foreign key. The stack config then names PostgreSQL 17 (the
stand-in from trixie): the converge's update path dumps the database, moves the 15 cluster aside,
lets the 17 image make a new cluster, restores the dump and compares every table's rows. First
with a 17 build that does not start: the converge fails, the 15 cluster is back and serves Gitea.
Then with a working 17: every row is there, the old cluster is gone, Gitea serves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e import test_replay
from tests.e2e.test_replay import (DOMAIN, check_replay, containers, create_backup_bucket, psql, stack_config,
                                   store_secrets)
from tests.e2e.test_updates import push_to_registry, repository, running_image, served
from tests.harness.pulumi_mocks import run_program
from tests.harness.replay import replay
from tests.harness.testbed_images import OLDER_POSTGRES_MAJOR, build_older_postgres_image

CACHE_DIR = Path("/var/cache/gitea-stack-testbed")
DATA = "/srv/gitea-stack"
BROKEN_17 = "17.0-broken"
ROWS = 20_000
# Every row of the test's tables, in one digest.
CONTENT = ("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM "
           "(SELECT 'a' || a::text AS t FROM upgrade_accounts a UNION ALL "
           "SELECT 'o' || o::text FROM upgrade_orders o) rows;")

testbed, images, target = test_replay.testbed, test_replay.images, test_replay.target
figures: dict[str, float] = {}


@pytest.fixture(scope="module")
def registry(testbed, images) -> dict[str, str]:
    older = build_older_postgres_image(testbed.docker_host, CACHE_DIR)
    pushed = push_to_registry(testbed, {**images, "postgres-15": older}, {}, {
        ("postgres", BROKEN_17): 'CMD ["sh", "-c", "echo this postgres build is broken >&2; exit 1"]'})
    return pushed


def config_with_postgres(testbed, registry, postgres: str) -> dict[str, str]:
    images = {service: reference for service, reference in registry.items() if service != "postgres-15"}
    return stack_config(testbed, {**images, "postgres": postgres})


@pytest.fixture(scope="module")
def on_postgres_15(testbed, registry, target):
    run = run_program(config_with_postgres(testbed, registry, registry["postgres-15"]), stack="e2e")
    store_secrets(testbed, run)
    testbed.boto3_client("ses").verify_domain_identity(Domain=DOMAIN)
    check_replay(run, target)
    create_backup_bucket(testbed)
    psql(testbed, f"""
        CREATE TABLE upgrade_accounts (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, created TIMESTAMPTZ NOT NULL);
        CREATE TABLE upgrade_orders (id BIGSERIAL PRIMARY KEY,
            account BIGINT NOT NULL REFERENCES upgrade_accounts (id), note TEXT, amount NUMERIC(12, 2));
        INSERT INTO upgrade_accounts (name, created)
            SELECT 'account ' || i, timestamptz '2026-01-01' + i * interval '1 minute' FROM generate_series(1, {ROWS}) i;
        INSERT INTO upgrade_orders (account, note, amount)
            SELECT 1 + i % {ROWS}, repeat('x', i % 50), i / 7.0 FROM generate_series(1, {ROWS}) i;
        ALTER TABLE upgrade_accounts OWNER TO gitea; ALTER TABLE upgrade_orders OWNER TO gitea;""")
    return run


def server_major(testbed) -> str:
    return psql(testbed, "SHOW server_version_num;")[:2]


def test_the_forge_starts_on_postgresql_15(testbed, on_postgres_15):
    assert server_major(testbed) == str(OLDER_POSTGRES_MAJOR)
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == str(OLDER_POSTGRES_MAJOR)
    assert served(testbed)


def test_an_upgrade_whose_new_major_does_not_start_puts_the_old_cluster_back(testbed, registry, target, on_postgres_15):
    content, mails = psql(testbed, CONTENT), len(testbed.sent_mails())
    broken = repository(registry["postgres"]) + f":{BROKEN_17}"
    results = replay(run_program(config_with_postgres(testbed, registry, broken), stack="e2e"), target)
    converge = results[-1][1]
    assert converge.returncode != 0
    assert b"upgraded to 17 by a dump and restore" in converge.stderr
    assert b"update.sh rolled postgres back to" in converge.stderr
    # PostgreSQL 15 with its own files serves Gitea again; nothing of the attempt is left.
    assert running_image(testbed, "postgres") == registry["postgres-15"] and server_major(testbed) == "15"
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == "15"
    assert not testbed.path(f"{DATA}/postgres-15.before-upgrade").exists()
    assert psql(testbed, CONTENT) == content and served(testbed)
    assert any("rolled back" in mail["subject"] for mail in testbed.sent_mails()[mails:])


def test_an_upgrade_to_17_keeps_every_row_and_removes_the_old_cluster(testbed, registry, target, on_postgres_15):
    content = psql(testbed, CONTENT)
    gitea_before = containers(testbed)["gitea"]
    started = time.monotonic()
    results = check_replay(run_program(config_with_postgres(testbed, registry, registry["postgres"]), stack="e2e"),
                           target)
    figures["converge with the upgrade"] = time.monotonic() - started
    assert b"upgrading PostgreSQL 15 to 17 by dump and restore" in results[-1][1].stderr
    assert running_image(testbed, "postgres") == registry["postgres"] and server_major(testbed) == "17"
    assert testbed.path(f"{DATA}/postgres/data/PG_VERSION").read_text().strip() == "17"
    assert psql(testbed, CONTENT) == content
    assert psql(testbed, "SELECT count(*) FROM upgrade_orders o JOIN upgrade_accounts a ON a.id = o.account;") == str(ROWS)
    # Sequences carry on where they were, and Gitea owns what it owned.
    assert psql(testbed, "INSERT INTO upgrade_accounts (name, created) VALUES ('after', now()) RETURNING id;") \
        .splitlines()[0] == str(ROWS + 1)
    assert psql(testbed, "SELECT tableowner FROM pg_tables WHERE tablename = 'upgrade_orders';") == "gitea"
    assert not testbed.path(f"{DATA}/postgres-15.before-upgrade").exists()
    assert containers(testbed)["gitea"][0] == gitea_before[0] and served(testbed)
    print(f"\nPostgreSQL 15 -> 17 with {2 * ROWS} rows: the converge took {figures['converge with the upgrade']:.0f}s")
