"""Every pinned version of the stack, in one place.

Container images are the defaults of the `images` stack setting; a stack can override one service's
image there. Tags are exact releases, never `latest`, so a deploy is repeatable and Diun can tell
an operator when a newer release exists.
"""

from __future__ import annotations

import re

DEFAULT_IMAGES: dict[str, str] = {
    "gitea": "docker.gitea.com/gitea:1.27.3-rootless",
    "postgres": "docker.io/library/postgres:18.6-bookworm",
    "nginx": "docker.io/library/nginx:1.30.1-alpine",
    "certbot": "docker.io/certbot/certbot:v5.8.0",
    "diun": "docker.io/crazymax/diun:4.33.0",
    # Stands between Diun and the Docker socket, letting through only the read calls Diun makes.
    "docker-socket-proxy": "docker.io/library/haproxy:3.2.21-alpine",
    # The observability plane (docs/monitoring.md, docs/logging.md).
    "prometheus": "docker.io/prom/prometheus:v3.13.2",
    "alertmanager": "docker.io/prom/alertmanager:v0.33.0",
    "node-exporter": "docker.io/prom/node-exporter:v1.12.1",
    "postgres-exporter": "quay.io/prometheuscommunity/postgres-exporter:v0.20.1",
    "blackbox-exporter": "docker.io/prom/blackbox-exporter:v0.27.0",
    # v0.54 and later find containers under Docker 29 (google/cadvisor#3709, #3790).
    "cadvisor": "ghcr.io/google/cadvisor:v0.60.5",
    "grafana": "docker.io/grafana/grafana:13.2.0",
    "loki": "docker.io/grafana/loki:3.7.8",
    # Reads the containers' log files, not the Docker API (docs/logging.md: grafana/alloy#5610).
    "alloy": "docker.io/grafana/alloy:v1.19.2",
}

# Ubuntu 24.04 LTS images are published by Canonical under this AWS account.
CANONICAL_AMI_OWNER = "099720109477"
UBUNTU_AMI_NAME_PATTERN = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"

# Tags Diun reports as updates for each service: same major line, same variant as the default pin,
# so an operator hears of 1.27.4-rootless, not of unrelated tags. Overridden images keep these.
DIUN_INCLUDE_TAGS: dict[str, str] = {
    "gitea": r"^1\.\d+\.\d+-rootless$",
    "postgres": r"^18\.\d+-bookworm$",
    "nginx": r"^1\.\d*[02468]\.\d+-alpine$",
    "certbot": r"^v\d+\.\d+\.\d+$",
    "diun": r"^4\.\d+\.\d+$",
    "docker-socket-proxy": r"^3\.2\.\d+-alpine$",  # the 3.2 LTS line
    "prometheus": r"^v3\.\d+\.\d+$",
    "alertmanager": r"^v0\.\d+\.\d+$",
    "node-exporter": r"^v1\.\d+\.\d+$",
    "postgres-exporter": r"^v0\.\d+\.\d+$",
    "blackbox-exporter": r"^v0\.\d+\.\d+$",
    "cadvisor": r"^v0\.\d+\.\d+$",
    "grafana": r"^13\.\d+\.\d+$",
    "loki": r"^3\.\d+\.\d+$",
    "alloy": r"^v1\.\d+\.\d+$",
}

# Who may apply an update without an operator: low-risk, stateless services only.
UPDATE_POLICY: dict[str, str] = {
    "gitea": "manual",
    "postgres": "manual",
    "nginx": "auto",
    "certbot": "auto",
    "diun": "auto",
    "docker-socket-proxy": "auto",
    # The plane holds no forge data: its images may be rebuilt under the same tag weekly too.
    "prometheus": "auto",
    "alertmanager": "auto",
    "node-exporter": "auto",
    "postgres-exporter": "auto",
    "blackbox-exporter": "auto",
    "cadvisor": "auto",
    "grafana": "auto",
    "loki": "auto",
    "alloy": "auto",
}

# Host packages from Docker's apt repository for Ubuntu 24.04 (noble), installed by install-host.sh.
DOCKER_PACKAGES: dict[str, str] = {
    "docker-ce": "5:29.8.1-1~ubuntu.24.04~noble",
    "docker-ce-cli": "5:29.8.1-1~ubuntu.24.04~noble",
    "containerd.io": "2.3.6-1~ubuntu.24.04~noble",
    "docker-compose-plugin": "5.6.0-1~ubuntu.24.04~noble",
}


def image_tag(reference: str) -> str:
    """The tag of an image reference: `docker.io/library/postgres:17.6-bookworm` -> `17.6-bookworm`;
    empty when it has none (a digest-only reference). A registry's port is not a tag."""
    name = reference.partition("@")[0]
    last_component = name[name.rfind("/") + 1:]
    return last_component.rpartition(":")[2] if ":" in last_component else ""


def postgres_major(reference: str) -> int | None:
    """The PostgreSQL major version a postgres image's tag starts with (`postgres:17.6-bookworm` -> 17,
    `postgres:18-alpine` -> 18); None when the tag names none (`bookworm`, or a digest only).

    The data on the volume works only with the major that wrote it, so the host refuses an image of
    another major (deploy.sh reads this number from settings.env as POSTGRES_MAJOR)."""
    match = re.match(r"\d+", image_tag(reference))
    return int(match.group()) if match else None
