"""The host bundle: settings -> {relative path: (content, mode)}, pure and deterministic.

The same settings always give byte-identical files, so the provisioning steps can hash them and a
no-op `pulumi up` re-runs nothing. `HostLayout` says where things live on the host and where nginx
listens; tests pass loopback ports and temporary paths through it, never by editing output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from gitea_stack.rendering import DATA_MOUNT_POINT, TEMPLATES_DIR, read_script, render_template
from gitea_stack.settings import Settings
from gitea_stack.sizing import memory_limits_mib
from gitea_stack.versions import DIUN_INCLUDE_TAGS, UPDATE_POLICY, postgres_major


@dataclass(frozen=True)
class MonitoringLayout:
    """What Prometheus scrapes and alerts to (host:port), and where its files are: names on the compose
    network and paths inside the containers in production; loopback ports and test paths in tests."""
    prometheus: str = "localhost:9090"
    alertmanager: str = "alertmanager:9093"
    node_exporter: str = "node-exporter:9100"
    postgres_exporter: str = "postgres-exporter:9187"
    blackbox_exporter: str = "blackbox-exporter:9115"
    cadvisor: str = "cadvisor:8080"
    gitea: str = "gitea:3000"
    alloy: str = "alloy:12345"
    loki: str = "loki:3100"
    config_dir: str = "/etc/prometheus"
    secrets_dir: str = "/run/gitea-stack"
    # Empty: https://<domain>/api/healthz, through DNS, the Elastic IP and nginx, as users come.
    https_probe_url: str = ""
    # Git over SSH where the host publishes it: Docker's host gateway seen from the blackbox container.
    git_ssh_probe_host: str = "host.docker.internal"
    # Empty: the system's CAs (the real certificate is publicly trusted); tests give their test CA.
    probe_ca_file: str = ""


@dataclass(frozen=True)
class HostLayout:
    bundle_dir: str = "/opt/gitea-stack"
    data_dir: str = DATA_MOUNT_POINT
    http_listen: str = "80"
    https_listen: str = "443"
    gitea_upstream: str = "gitea:3000"
    grafana_upstream: str = "grafana:3000"
    # nginx's access log: the container's stdout in production (Docker keeps it, Alloy reads it).
    nginx_access_log: str = "/dev/stdout"
    # Docker's embedded DNS: nginx asks it for gitea's address at request time, so a recreated
    # container (new address) is found without a reload.
    dns_resolver: str = "127.0.0.11"
    # The nginx <-> gitea network has a fixed subnet: Gitea trusts X-Forwarded-For from it alone.
    frontend_subnet: str = "10.250.0.0/24"
    # Diun reaches the Docker API through the filtering proxy on this port; the proxy reaches
    # dockerd's socket at the same path as on the host.
    docker_socket_proxy_port: int = 2375
    docker_socket: str = "/var/run/docker.sock"
    # Paths as nginx and certbot see them (inside their containers on the host).
    letsencrypt_dir: str = "/etc/letsencrypt"
    certbot_work_dir: str = "/var/lib/letsencrypt"
    certbot_logs_dir: str = "/var/log/letsencrypt"
    # certbot's logs on the host (root volume): they outlive each `run --rm` container.
    certbot_host_logs_dir: str = "/var/log/gitea-stack/letsencrypt"
    acme_webroot: str = "/var/www/certbot"
    # nginx >= 1.25.1 turns HTTP/2 on with `http2 on;`; older ones (Debian 12's 1.22) on `listen`.
    nginx_http2_directive: bool = True
    monitoring: MonitoringLayout = MonitoringLayout()


PRODUCTION = HostLayout()

Bundle = dict[str, tuple[str, int]]

# Rendered templates: bundle path -> (template, mode).
TEMPLATES: dict[str, tuple[str, int]] = {
    "docker-compose.yml": ("docker-compose.yml.j2", 0o644),
    "settings.env": ("settings.env.j2", 0o644),
    "images.conf": ("images.conf.j2", 0o644),
    "nginx/http.conf": ("nginx/http.conf.j2", 0o644),
    "nginx/https.conf": ("nginx/https.conf.j2", 0o644),
    "certbot/cli.ini": ("certbot/cli.ini.j2", 0o644),
    "systemd/gitea-stack-certbot-renew.service": ("systemd/gitea-stack-certbot-renew.service.j2", 0o644),
    "systemd/gitea-stack-certbot-renew.timer": ("systemd/gitea-stack-certbot-renew.timer.j2", 0o644),
    "systemd/gitea-stack-backup.service": ("systemd/gitea-stack-backup.service.j2", 0o644),
    "systemd/gitea-stack-backup.timer": ("systemd/gitea-stack-backup.timer.j2", 0o644),
    "systemd/gitea-stack-backup-check.service": ("systemd/gitea-stack-backup-check.service.j2", 0o644),
    "systemd/gitea-stack-backup-check.timer": ("systemd/gitea-stack-backup-check.timer.j2", 0o644),
    "systemd/gitea-stack-restore-drill.service": ("systemd/gitea-stack-restore-drill.service.j2", 0o644),
    "systemd/gitea-stack-restore-drill.timer": ("systemd/gitea-stack-restore-drill.timer.j2", 0o644),
    "systemd/gitea-stack-update.service": ("systemd/gitea-stack-update.service.j2", 0o644),
    "systemd/gitea-stack-update.timer": ("systemd/gitea-stack-update.timer.j2", 0o644),
    "systemd/gitea-stack-health-check.service": ("systemd/gitea-stack-health-check.service.j2", 0o644),
    "systemd/gitea-stack-health-check.timer": ("systemd/gitea-stack-health-check.timer.j2", 0o644),
    "systemd/docker.service.d/10-gitea-stack.conf": ("systemd/docker.service.d/10-gitea-stack.conf.j2", 0o644),
    "diun/images.yml": ("diun/images.yml.j2", 0o644),
    "docker-socket-proxy/haproxy.cfg": ("docker-socket-proxy/haproxy.cfg.j2", 0o644),
    # The observability plane (docs/monitoring.md, docs/logging.md).
    "prometheus/prometheus.yml": ("prometheus/prometheus.yml.j2", 0o644),
    "blackbox/blackbox.yml": ("blackbox/blackbox.yml.j2", 0o644),
    # Holds no secret: deploy.sh puts the SMTP endpoint and user name from Secrets Manager into a
    # private copy (secrets/alertmanager/alertmanager.yml) that Alertmanager reads.
    "alertmanager/alertmanager.yml": ("alertmanager/alertmanager.yml.j2", 0o644),
    "grafana/grafana.ini": ("grafana/grafana.ini.j2", 0o644),
    "grafana/provisioning/datasources/datasources.yml": ("grafana/provisioning/datasources/datasources.yml.j2", 0o644),
    "grafana/provisioning/dashboards/dashboards.yml": ("grafana/provisioning/dashboards/dashboards.yml.j2", 0o644),
    "loki/config.yml": ("loki/config.yml.j2", 0o644),
    "alloy/config.alloy": ("alloy/config.alloy.j2", 0o644),
}
# Directories of templates/ copied as they are: alert rules and dashboards are full of `{{ }}` of
# their own (Prometheus and Grafana templating), which Jinja must not touch.
STATIC_DIRS = ("prometheus/rules", "grafana/dashboards")
# Host scripts, copied as they are (no rendering): they read settings.env and stack-facts.env.
SCRIPTS = ("lib.sh", "deploy.sh", "grow-data-filesystem.sh", "renew-certificates.sh", "fetch-secrets.py",
           "backup.sh", "backup-support.py", "send-mail.py", "restore.sh", "restore-support.py",
           "check-backups.sh", "restore-drill.sh", "update.sh", "update-support.py", "health-check.sh",
           "health-support.py")


def diun_labels(service: str) -> str:
    """Compose labels that make Diun watch one service for newer tags of its line."""
    labels = {
        "diun.enable": "true",
        "diun.watch_repo": "true",
        "diun.sort_tags": "semver",
        "diun.max_tags": "5",
        # Compose would read a lone `$` as a variable; `$$` is a literal dollar sign.
        "diun.include_tags": DIUN_INCLUDE_TAGS[service].replace("$", "$$"),
        "diun.metadata.update_policy": UPDATE_POLICY[service],
    }
    return "\n".join(f"      {key}: '{value}'" for key, value in labels.items())


# Services Diun cannot see as running containers (certbot only runs on demand): it watches their
# images through its file provider instead, with the same rules as the labels above.
FILE_WATCHED_SERVICES = ("certbot",)


def template_context(settings: Settings, memory_mib: int, layout: HostLayout) -> dict[str, object]:
    return {
        "stack": settings.stack,
        "domain": settings.domain,
        "acme_email": settings.acme_email,
        "acme_server": settings.acme_server,
        "aws_endpoint_url": settings.aws_endpoint_url,
        "admin_username": settings.admin_username,
        "admin_email": settings.admin_email,
        "alert_emails": settings.alert_emails,
        "git_ssh_port": settings.git_ssh_port,
        "images": dict(settings.images),
        "postgres_major": postgres_major(settings.images["postgres"]),
        "data_volume_gib": settings.data_volume_gib,
        "backup_schedule": settings.backup_schedule,
        "backup_retention_days": settings.backup_retention_days,
        "memory": memory_limits_mib(memory_mib),
        "diun_labels": diun_labels,
        "update_policy": UPDATE_POLICY,
        "include_tags": DIUN_INCLUDE_TAGS,
        "file_watched": [{"image": settings.images[service], "include_tags": DIUN_INCLUDE_TAGS[service],
                          "update_policy": UPDATE_POLICY[service]} for service in FILE_WATCHED_SERVICES],
        "metrics_retention_days": settings.metrics_retention_days,
        "metrics_retention_size": prometheus_retention_size(settings.data_volume_gib),
        "logs_retention_days": settings.logs_retention_days,
        "layout": layout,
    }


def prometheus_retention_size(data_volume_gib: int) -> str:
    """Prometheus' size bound (--storage.tsdb.retention.size): a tenth of the data volume, at least
    1 GiB, so metrics can never fill the volume the forge's data lives on, whatever the time bound."""
    return f"{max(1, data_volume_gib // 10)}GB"


def static_files() -> dict[str, str]:
    """The files of STATIC_DIRS, by bundle path."""
    return {str(path.relative_to(TEMPLATES_DIR)): path.read_text()
            for directory in STATIC_DIRS for path in sorted((TEMPLATES_DIR / directory).rglob("*"))
            if path.is_file() and not path.name.startswith(".")}


# The bundle files each service reads from a bind mount. Compose cannot see a changed file behind a
# mount, so their digest is a label of the service: a changed file changes the service's definition
# and `compose up` recreates exactly that service. (Files with secrets: deploy.sh's runtime/*.env.)
CONFIG_FILES: dict[str, tuple[str, ...]] = {
    "docker-socket-proxy": ("docker-socket-proxy/",),
    "diun": ("diun/",),
    "prometheus": ("prometheus/",),
    "blackbox-exporter": ("blackbox/",),
    "grafana": ("grafana/",),
    "loki": ("loki/",),
    "alloy": ("alloy/",),
}
COMPOSE_FILE = "docker-compose.yml"


def config_digests(bundle: Bundle) -> dict[str, str]:
    """Per service, a short hash of the bundle files under its CONFIG_FILES prefixes."""
    return {service: bundle_digest({path: file for path, file in bundle.items() if path.startswith(prefixes)})[:16]
            for service, prefixes in CONFIG_FILES.items()}


def render_bundle(settings: Settings, memory_mib: int, layout: HostLayout = PRODUCTION) -> Bundle:
    """The bundle for `settings` on an instance with `memory_mib` of memory (the limits fit it)."""
    context = template_context(settings, memory_mib, layout)
    bundle: Bundle = {path: (render_template(template, **context), mode)
                      for path, (template, mode) in TEMPLATES.items() if path != COMPOSE_FILE}
    for relative, content in static_files().items():
        bundle[relative] = (content, 0o644)
    compose_template, compose_mode = TEMPLATES[COMPOSE_FILE]
    bundle[COMPOSE_FILE] = (render_template(compose_template, **context, config_digests=config_digests(bundle)),
                            compose_mode)
    for script in SCRIPTS:
        bundle[f"scripts/{script}"] = (read_script(script), 0o755)
    return dict(sorted(bundle.items()))


def write_bundle(bundle: Bundle, out_dir: str | Path) -> list[Path]:
    """Writes the bundle below `out_dir` with its modes; returns the files written."""
    written = []
    for relative, (content, mode) in bundle.items():
        target = Path(out_dir) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
        written.append(target)
    return written


def bundle_digest(bundle: Bundle) -> str:
    """One hash over paths, modes and contents: equal bundles, equal digests."""
    digest = hashlib.sha256()
    for relative, (content, mode) in sorted(bundle.items()):
        digest.update(f"{relative}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content.encode())
    return digest.hexdigest()


def bundle_tarball(bundle: Bundle) -> bytes:
    """The bundle as a gzipped tar with its modes; byte-identical for equal bundles (no times, no owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for relative, (content, mode) in sorted(bundle.items()):
            data = content.encode()
            info = tarfile.TarInfo(relative)
            info.size, info.mode, info.mtime = len(data), mode, 0
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)
