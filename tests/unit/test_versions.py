"""The pinned versions and what the host reads from them: image tags, PostgreSQL's major version."""

from __future__ import annotations

import re

import pytest

from gitea_stack.versions import (
    DEFAULT_IMAGES,
    DIUN_INCLUDE_TAGS,
    image_tag,
    postgres_major,
)


@pytest.mark.parametrize("reference, tag", [
    ("docker.io/library/postgres:17.6-bookworm", "17.6-bookworm"),
    ("postgres:18", "18"),
    ("localhost:5000/postgres:16.4", "16.4"),      # a registry's port is no tag
    ("localhost:5000/postgres", ""),
    ("postgres:18.6@sha256:" + "ab" * 32, "18.6"),  # tag and digest: the tag still names the version
    ("docker.io/library/postgres@sha256:" + "ab" * 32, ""),
])
def test_image_tag(reference, tag):
    assert image_tag(reference) == tag


@pytest.mark.parametrize("reference, major", [
    ("docker.io/library/postgres:17.6-bookworm", 17),
    ("docker.io/library/postgres:18-alpine", 18),
    ("postgres:18beta3", 18),
    ("postgres:9.6.24", 9),
    ("localhost:5000/postgres:16.4", 16),
    ("postgres:bookworm", None),
    ("postgres:alpine3.22", None),
    ("docker.io/library/postgres@sha256:" + "ab" * 32, None),
])
def test_postgres_major(reference, major):
    assert postgres_major(reference) == major


def test_the_default_postgres_pin_has_a_major_and_diun_stays_on_it():
    major = postgres_major(DEFAULT_IMAGES["postgres"])
    assert major is not None
    assert re.match(DIUN_INCLUDE_TAGS["postgres"], image_tag(DEFAULT_IMAGES["postgres"]))
    assert DIUN_INCLUDE_TAGS["postgres"].startswith(f"^{major}\\.")
