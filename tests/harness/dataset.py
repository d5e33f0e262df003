"""A forge-sized dataset for the ops tier and bench/backup.py: a database of Gitea's shape with
foreign keys and a data directory of Gitea's layout, made with the real tools.

* database `gitea`: users, repositories, issues, comments and actions (>= 100,000 rows in all),
  each row pointing at the others by foreign key, text that does not repeat (issue bodies of about
  1 KB and comments of about 500 bytes, as on a forge: a dump of about 60 MB);
* Gitea's data directory: REPOSITORIES real git repositories of about 5 MB each (made with the
  git client, pushed to bare repositories where Gitea keeps them), >= 1,000 attachments, avatars and LFS objects of
  assorted sizes, and one 50 MB binary (random bytes: nothing to compress);
* `create_forge` makes all of it below DATA_DIR, as a forge holds it;
* `change_one_percent` changes 1 % of it (rows updated and added, files added, a push);
* `database_checksums` / `file_checksums` / `fsck_all` say whether a restore gave it all back.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from tests.harness.postgres import give_database_to_gitea, run

USERS, REPOSITORIES_ROWS, ISSUES, COMMENTS, ACTIONS = 2_000, 5_000, 30_000, 45_000, 30_000
TABLES = ('"user"', "repository", "issue", "comment", "action")
REPOSITORIES = 24
COMMITS = 20  # of about 250 KB each: repositories are most of a forge's data
SMALL_FILES = 1_100
BINARY_BYTES = 50 * 2**20

SCHEMA = f"""
CREATE TABLE "user" (id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, email text NOT NULL,
                     created timestamptz NOT NULL DEFAULT now());
CREATE TABLE repository (id bigserial PRIMARY KEY, owner_id bigint NOT NULL REFERENCES "user"(id),
                         name text NOT NULL, description text, UNIQUE (owner_id, name));
CREATE TABLE issue (id bigserial PRIMARY KEY, repo_id bigint NOT NULL REFERENCES repository(id),
                    poster_id bigint NOT NULL REFERENCES "user"(id), title text NOT NULL, content text);
CREATE TABLE comment (id bigserial PRIMARY KEY, issue_id bigint NOT NULL REFERENCES issue(id),
                      poster_id bigint NOT NULL REFERENCES "user"(id), content text);
CREATE TABLE action (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES "user"(id),
                     repo_id bigint NOT NULL REFERENCES repository(id), op_type int NOT NULL, content text);
CREATE INDEX comment_issue ON comment (issue_id);
INSERT INTO "user" (name, email) SELECT 'user' || i, 'user' || i || '@example.com' FROM generate_series(1, {USERS}) i;
INSERT INTO repository (owner_id, name, description)
    SELECT 1 + i % {USERS}, 'repo' || i, md5(i::text) || ' ' || md5((i * 7)::text) FROM generate_series(1, {REPOSITORIES_ROWS}) i;
INSERT INTO issue (repo_id, poster_id, title, content)
    SELECT 1 + i % {REPOSITORIES_ROWS}, 1 + i % {USERS}, 'issue ' || md5(i::text),
           (SELECT string_agg(md5((i * 32 + k)::text), ' ') FROM generate_series(1, 32) k)
    FROM generate_series(1, {ISSUES}) i;
INSERT INTO comment (issue_id, poster_id, content)
    SELECT 1 + i % {ISSUES}, 1 + (i * 7) % {USERS},
           (SELECT string_agg(md5((i * 16 + k)::text || 'c'), ' ') FROM generate_series(1, 16) k)
    FROM generate_series(1, {COMMENTS}) i;
INSERT INTO action (user_id, repo_id, op_type, content)
    SELECT 1 + i % {USERS}, 1 + i % {REPOSITORIES_ROWS}, i % 20, md5((i * 29)::text) || md5((i * 31)::text)
    FROM generate_series(1, {ACTIONS}) i;
"""


def create_database(psql: list[str], database: str = "gitea") -> int:
    """Creates and fills `database`; returns its row count."""
    run(*psql, "--dbname", "postgres", "-c", f"CREATE DATABASE {database}")
    run(*psql, "--dbname", database, "-v", "ON_ERROR_STOP=1", "-c", SCHEMA, timeout=600)
    return USERS + REPOSITORIES_ROWS + ISSUES + COMMENTS + ACTIONS


def create_forge(psql: list[str], data_dir: Path, git: str, work: Path) -> dict[str, int]:
    """The whole dataset as a forge holds it: the database (owned by Gitea's role), Gitea's data and
    config directories and the state directory below DATA_DIR; its rows, files and repositories."""
    rows = create_database(psql)
    give_database_to_gitea(psql)
    work.mkdir(exist_ok=True)
    files = create_files(data_dir / "gitea/data", git, work)
    (data_dir / "gitea/config").mkdir()
    (data_dir / "gitea/config/app.ini").write_text("[server]\nDOMAIN = git.example.com\n")
    (data_dir / "state").mkdir(mode=0o700)
    return {"rows": rows, "files": files, "repositories": len(repositories(data_dir / "gitea/data"))}


def create_files(gitea_data: Path, git: str, work: Path, seed: int = 1) -> int:
    """Fills Gitea's data directory; returns the number of files written (git's own not counted)."""
    generator = random.Random(seed)
    written = 0
    for number in range(SMALL_FILES):
        kind = ("attachments", "avatars", "lfs")[number % 3]
        name = hashlib.sha256(f"{seed}-{number}".encode()).hexdigest()
        path = gitea_data / kind / name[:2] / name[2:4] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(generator.randbytes(generator.randint(512, 48 * 1024)))
        written += 1
    binary = gitea_data / "lfs" / "50" / "mb" / "release-artifact.bin"
    binary.parent.mkdir(parents=True, exist_ok=True)
    with binary.open("wb") as out:
        for _ in range(BINARY_BYTES // 2**20):
            out.write(generator.randbytes(2**20))
    written += 1
    for number in range(REPOSITORIES):
        make_repository(gitea_data, git, work, f"owner{number % 4}", f"project{number}", generator, commits=COMMITS)
    return written


def make_repository(gitea_data: Path, git: str, work: Path, owner: str, name: str, generator: random.Random,
                    commits: int) -> Path:
    bare = gitea_data / "git" / "repositories" / owner / f"{name}.git"
    run(git, "init", "--quiet", "--bare", str(bare))
    clone = work / f"{owner}-{name}"
    run(git, "init", "--quiet", "-b", "main", str(clone))
    add_commits(clone, git, generator, commits)
    run(git, "-C", str(clone), "push", "--quiet", str(bare), "main")
    run(git, "-C", str(clone), "tag", "v1")
    run(git, "-C", str(clone), "push", "--quiet", str(bare), "v1")
    return bare


def add_commits(clone: Path, git: str, generator: random.Random, commits: int) -> None:
    identity = ("-c", "user.name=Alice", "-c", "user.email=alice@example.com")
    for number in range(commits):
        (clone / f"src{generator.randint(0, 30)}.txt").write_text(generator.randbytes(3000).hex())
        (clone / f"asset{number}.bin").write_bytes(generator.randbytes(250_000))
        run(git, "-C", str(clone), "add", ".")
        run(git, "-C", str(clone), *identity, "commit", "--quiet", "-m", f"change {number}")


def change_one_percent(psql: list[str], gitea_data: Path, git: str, work: Path) -> None:
    """1 % of the rows added or updated, 1 % more small files, one push. As a forge changes: new
    issues, comments and actions, and edits on the most recent issues (activity clusters on new
    work). Updates spread evenly over a whole table (every 200th row) touch every chunk of its dump
    instead (17 % of the full on a database-heavy variant of this dataset; docs/backup.md says so)."""
    run(*psql, "--dbname", "gitea", "-v", "ON_ERROR_STOP=1", "-c", f"""
        INSERT INTO issue (repo_id, poster_id, title, content)
            SELECT 1 + i % {REPOSITORIES_ROWS}, 1 + i % {USERS}, 'new issue ' || md5((i * 41)::text), md5((i * 43)::text)
            FROM generate_series(1, {ISSUES // 200}) i;
        INSERT INTO comment (issue_id, poster_id, content)
            SELECT {ISSUES} - i % 300, 1 + i % {USERS}, 'new ' || md5((i * 37)::text) FROM generate_series(1, {COMMENTS // 200}) i;
        INSERT INTO action (user_id, repo_id, op_type, content)
            SELECT 1 + i % {USERS}, 1 + i % {REPOSITORIES_ROWS}, 1, md5((i * 47)::text) FROM generate_series(1, {ACTIONS // 200}) i;
        UPDATE issue SET title = title || ' (edited)' WHERE id > {ISSUES - ISSUES // 100};
    """)
    generator = random.Random(99)
    for number in range(SMALL_FILES // 100):
        path = gitea_data / "attachments" / "new" / f"attachment-{number}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(generator.randbytes(generator.randint(512, 48 * 1024)))
    clone = work / "owner0-project0"
    add_commits(clone, git, generator, 2)
    bare = gitea_data / "git" / "repositories" / "owner0" / "project0.git"
    run(git, "-C", str(clone), "push", "--quiet", str(bare), "main")


def database_checksums(psql: list[str], database: str = "gitea") -> dict[str, str]:
    """Table -> "rows:md5 of every row in order"."""
    return {table: run(*psql, "--dbname", database, "-At", "-c",
                       f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t.id)) FROM {table} t",
                       timeout=300).stdout.strip() for table in TABLES}


def file_checksums(top: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir', or the link target) of everything below `top`, with modes."""
    found = {}
    for directory, directories, files in os.walk(top):
        for name in directories + files:
            path = Path(directory) / name
            relative = str(path.relative_to(top))
            mode = oct(path.lstat().st_mode)
            if path.is_symlink():
                found[relative] = f"-> {os.readlink(path)} {mode}"
            elif path.is_dir():
                found[relative] = f"dir {mode}"
            else:
                digest = hashlib.sha256()
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                found[relative] = f"{digest.hexdigest()} {mode}"
    return found


def repositories(gitea_data: Path) -> list[Path]:
    return sorted((gitea_data / "git" / "repositories").glob("*/*.git"))


def fsck_all(gitea_data: Path, git: str) -> dict[str, int]:
    """Repository -> exit status of `git fsck --full --strict`."""
    import subprocess
    return {str(bare.relative_to(gitea_data)): subprocess.run([git, "-C", str(bare), "fsck", "--full", "--strict"],
                                                              capture_output=True).returncode
            for bare in repositories(gitea_data)}
