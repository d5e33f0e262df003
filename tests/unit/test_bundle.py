"""The host bundle as data: deterministic, complete, and saying what the stack config says."""

from __future__ import annotations

import re

import jinja2
import pytest
import yaml

from gitea_stack import bundle as bundle_module
from gitea_stack.bundle import PRODUCTION, HostLayout, bundle_digest
from gitea_stack.cli import main as cli_main
from gitea_stack.rendering import TEMPLATES_DIR
from gitea_stack.versions import DEFAULT_IMAGES, UPDATE_POLICY, image_tag
from tests.harness.bundles import VARIANTS, render, variant

EXPECTED_FILES = {
    "docker-compose.yml", "settings.env", "nginx/http.conf", "nginx/https.conf", "certbot/cli.ini",
    "systemd/gitea-stack-certbot-renew.service", "systemd/gitea-stack-certbot-renew.timer",
    "systemd/gitea-stack-backup.service", "systemd/gitea-stack-backup.timer",
    "systemd/gitea-stack-backup-check.service", "systemd/gitea-stack-backup-check.timer",
    "systemd/gitea-stack-restore-drill.service", "systemd/gitea-stack-restore-drill.timer",
    "systemd/gitea-stack-health-check.service", "systemd/gitea-stack-health-check.timer",
    "scripts/lib.sh", "scripts/deploy.sh", "scripts/grow-data-filesystem.sh", "scripts/renew-certificates.sh",
    "scripts/fetch-secrets.py", "scripts/backup.sh", "scripts/backup-support.py", "scripts/send-mail.py",
    "scripts/restore.sh", "scripts/restore-support.py", "scripts/check-backups.sh", "scripts/restore-drill.sh",
    "scripts/health-check.sh", "scripts/health-support.py",
    "systemd/docker.service.d/10-gitea-stack.conf", "diun/images.yml", "docker-socket-proxy/haproxy.cfg",
    "images.conf", "scripts/update.sh", "scripts/update-support.py",
    "systemd/gitea-stack-update.service", "systemd/gitea-stack-update.timer",
    "prometheus/prometheus.yml", "blackbox/blackbox.yml", "alertmanager/alertmanager.yml",
    "grafana/grafana.ini", "grafana/provisioning/datasources/datasources.yml",
    "grafana/provisioning/dashboards/dashboards.yml", "loki/config.yml", "alloy/config.alloy",
}
# Copied as they are from templates/: every file there is in the bundle.
STATIC_DIRS = ("prometheus/rules", "grafana/dashboards")


def static_files():
    return {str(path.relative_to(TEMPLATES_DIR)) for directory in STATIC_DIRS
            for path in (TEMPLATES_DIR / directory).rglob("*") if path.is_file() and not path.name.startswith(".")}


def compose(settings, layout=PRODUCTION):
    return yaml.safe_load(render(settings, layout)["docker-compose.yml"][0])


@pytest.mark.parametrize("name", VARIANTS)
def test_rendering_is_deterministic(name):
    first, second = render(variant(name)), render(variant(name))
    assert first == second and bundle_digest(first) == bundle_digest(second)


def test_the_bundle_has_every_file_with_its_mode():
    rendered = render(variant("example"))
    assert set(rendered) == EXPECTED_FILES | static_files()
    assert {path for path, (_, mode) in rendered.items() if mode == 0o755} == {
        path for path in EXPECTED_FILES if path.startswith("scripts/")}


def test_different_settings_give_different_digests():
    digests = {bundle_digest(render(variant(name))) for name in VARIANTS}
    assert len(digests) == len(VARIANTS)


def test_a_missing_variable_fails_loudly(monkeypatch):
    monkeypatch.setitem(bundle_module.TEMPLATES, "broken.conf", ("nginx/http.conf.j2", 0o644))
    original = bundle_module.template_context
    monkeypatch.setattr(bundle_module, "template_context",
                        lambda *args: {k: v for k, v in original(*args).items() if k != "domain"})
    with pytest.raises(jinja2.UndefinedError, match="domain"):
        render(variant("example"))


def test_every_service_is_pinned_limited_logged_and_unprivileged():
    services = compose(variant("example"))["services"]
    assert set(services) == set(DEFAULT_IMAGES)
    for name, service in services.items():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        assert service["logging"]["options"] == {"max-size": "10m", "max-file": "5",
                                                 "labels": "com.docker.compose.service"}, name
        assert int(service["mem_limit"].removesuffix("m")) >= 64, name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert not service.get("privileged") and service.get("network_mode") != "host", name
        assert not service.get("ports") or name in ("gitea", "nginx"), name  # nothing else faces the internet
        if name != "certbot":
            assert service["restart"] == "unless-stopped", name
            assert "healthcheck" in services[name] or name in ("diun", "docker-socket-proxy"), name


def test_a_changed_config_file_changes_only_its_service(monkeypatch):
    before = compose(variant("example"))["services"]
    static = bundle_module.static_files()
    monkeypatch.setattr(bundle_module, "static_files",
                        lambda: {**static, "prometheus/rules/extra.yml": "groups: []\n"})
    after = compose(variant("example"))["services"]
    # compose recreates the service whose definition changed, and only that one.
    assert {name for name in before if before[name] != after[name]} == {"prometheus"}
    assert all(service["labels"]["gitea-stack.config-digest"]
               for name, service in after.items() if name in bundle_module.CONFIG_FILES)


def test_the_observability_plane_is_internal_and_reaches_out_only_where_it_must():
    rendered = compose(variant("example"))
    assert rendered["networks"]["monitoring"] == {"internal": True}
    services = rendered["services"]
    outside = {name for name, service in services.items() if "default" in service.get("networks", [])}
    # diun (registries), alertmanager (SES SMTP), blackbox-exporter (the forge's public address).
    assert outside == {"diun", "alertmanager", "blackbox-exporter"}
    assert services["prometheus"]["networks"] == ["monitoring", "frontend"]
    assert "/var/run/docker.sock" not in str(services["cadvisor"]) + str(services["alloy"])
    assert services["alloy"]["cap_drop"] == ["ALL"]
    command = services["prometheus"]["command"]
    assert "--storage.tsdb.retention.time=30d" in command and "--storage.tsdb.retention.size=5GB" in command


def test_gitea_is_configured_through_environment_with_secrets_in_files():
    gitea = compose(variant("custom-ports-and-images"))["services"]["gitea"]
    environment = gitea["environment"]
    assert environment["GITEA__server__ROOT_URL"] == "https://git.example.com/"
    assert environment["GITEA__server__SSH_PORT"] == "2200"
    assert environment["GITEA__service__DISABLE_REGISTRATION"] == "true"
    assert environment["GITEA__service__ENABLE_NOTIFY_MAIL"] == "true"
    assert environment["GITEA__metrics__ENABLED"] == "true"
    assert environment["GITEA__mailer__PROTOCOL"] == "smtp+starttls"
    secret_keys = [key for key in environment if key.endswith("__FILE")]
    assert {"GITEA__database__PASSWD__FILE", "GITEA__mailer__PASSWD__FILE", "GITEA__metrics__TOKEN__FILE"} <= set(
        secret_keys)
    assert all(environment[key].startswith("/run/gitea-stack/") for key in secret_keys)
    assert gitea["ports"] == ["2200:2222"]
    assert gitea["image"] == "docker.gitea.com/gitea:1.27.4-rootless"
    assert gitea["healthcheck"]["test"][-1] == "http://localhost:3000/api/healthz"
    assert gitea["stop_grace_period"] == "30s"


def test_gitea_reads_its_keys_at_runtime_and_never_writes_them_into_app_ini():
    environment = compose(variant("example"))["services"]["gitea"]["environment"]
    for key, file in (("SECRET_KEY", "gitea-secret-key"), ("INTERNAL_TOKEN", "gitea-internal-token")):
        assert environment[f"GITEA__security__{key}_URI"] == f"file:///run/gitea-stack/{file}"
        assert environment[f"GITEA__security__{key}"] == ""  # clears a value an older app.ini holds
        assert f"GITEA__security__{key}__FILE" not in environment


def test_gitea_trusts_forwarded_client_addresses_from_nginx_network_only():
    rendered = compose(variant("example"))
    subnet = rendered["networks"]["frontend"]["ipam"]["config"][0]["subnet"]
    environment = rendered["services"]["gitea"]["environment"]
    assert environment["GITEA__security__REVERSE_PROXY_TRUSTED_PROXIES"] == subnet == PRODUCTION.frontend_subnet
    assert environment["GITEA__security__REVERSE_PROXY_LIMIT"] == "1"
    assert rendered["services"]["nginx"]["networks"] == ["frontend"]


def test_postgres_stops_cleanly_has_shared_memory_and_is_healthy_only_over_tcp():
    postgres = compose(variant("example"))["services"]["postgres"]
    assert postgres["stop_grace_period"] == "60s" and postgres["shm_size"] == "256m"
    assert "--host=127.0.0.1" in postgres["healthcheck"]["test"]
    # The superuser is not Gitea's: deploy.sh creates the gitea role as owner of the database.
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    assert postgres["environment"]["POSTGRES_DB"] == "gitea"


def test_networks_that_need_no_internet_have_none():
    networks = compose(variant("example"))["networks"]
    assert networks["backend"] == {"internal": True} and networks["docker-api"] == {"internal": True}
    assert not networks["frontend"].get("internal")


def test_data_lives_on_the_data_volume():
    services = compose(variant("example"))["services"]
    assert "/srv/gitea-stack/postgres:/var/lib/postgresql" in services["postgres"]["volumes"]
    assert "/srv/gitea-stack/gitea/data:/var/lib/gitea" in services["gitea"]["volumes"]


def test_only_the_socket_proxy_holds_the_docker_socket_and_only_diun_and_cadvisor_reach_the_proxy():
    rendered = compose(variant("example"))
    services = rendered["services"]
    holders = {name for name, service in services.items()
               if any("docker.sock" in volume for volume in service.get("volumes", []))}
    assert holders == {"docker-socket-proxy"}
    proxy = services["docker-socket-proxy"]
    assert proxy["networks"] == ["docker-api"] and proxy["cap_drop"] == ["ALL"] and proxy["read_only"] is True
    assert [name for name, service in services.items() if "docker-api" in service.get("networks", [])] == [
        "docker-socket-proxy", "diun", "cadvisor"]
    # The host's root (and the socket in it) is mounted into node-exporter alone, which runs as nobody.
    root_mounts = {name for name, service in services.items()
                   if any(volume.split(":")[0] in ("/", "/run", "/var/run") for volume in service.get("volumes", []))}
    assert root_mounts == {"node-exporter"} and services["node-exporter"]["user"] == "65534:65534"
    assert services["diun"]["environment"]["DIUN_PROVIDERS_DOCKER_ENDPOINT"] == "tcp://docker-socket-proxy:2375"
    assert "bind :2375" in render(variant("example"))["docker-socket-proxy/haproxy.cfg"][0]


def test_diun_watches_each_running_service_by_label_and_certbot_through_its_file():
    rendered = render(variant("custom-ports-and-images"))
    services = yaml.safe_load(rendered["docker-compose.yml"][0])["services"]
    environment = services["diun"]["environment"]
    assert environment["DIUN_PROVIDERS_DOCKER_WATCHBYDEFAULT"] == "false"
    assert environment["DIUN_WATCH_SCHEDULE"] == "0 4 * * 1"
    for name, service in services.items():
        if name == "certbot":
            assert "labels" not in service  # run on demand: Diun's Docker provider never sees it
            continue
        labels = service["labels"]
        assert labels["diun.enable"] == "true" and labels["diun.watch_repo"] == "true"
        assert labels["diun.include_tags"].endswith("$$")  # compose's escape for a literal `$`
    assert services["gitea"]["labels"]["diun.metadata.update_policy"] == "manual"
    assert services["nginx"]["labels"]["diun.metadata.update_policy"] == "auto"
    assert environment["DIUN_PROVIDERS_FILE_FILENAME"] == "/etc/diun/images.yml"
    assert "/opt/gitea-stack/diun/images.yml:/etc/diun/images.yml:ro" in services["diun"]["volumes"]
    (certbot,) = yaml.safe_load(rendered["diun/images.yml"][0])
    assert certbot == {"name": services["certbot"]["image"], "watch_repo": True, "sort_tags": "semver",
                       "max_tags": 5, "include_tags": [r"^v\d+\.\d+\.\d+$"],
                       "metadata": {"update_policy": "auto"}}


def test_memory_limits_follow_the_instance_size():
    small = compose(variant("example"))["services"]["gitea"]["mem_limit"]
    large = compose(variant("graviton"))["services"]["gitea"]["mem_limit"]
    assert int(large.removesuffix("m")) > int(small.removesuffix("m"))


def test_layout_moves_ports_and_paths_without_editing_output():
    layout = HostLayout(http_listen="127.0.0.1:18080", https_listen="127.0.0.1:18443",
                        letsencrypt_dir="/tmp/le", acme_webroot="/tmp/www", gitea_upstream="127.0.0.1:13000")
    rendered = render(variant("example"), layout)
    http, https = rendered["nginx/http.conf"][0], rendered["nginx/https.conf"][0]
    assert "listen 127.0.0.1:18080;" in http and "root /tmp/www;" in http
    assert "listen 127.0.0.1:18443 ssl;" in https and "set $gitea_upstream 127.0.0.1:13000;" in https
    assert "ssl_certificate /tmp/le/live/git.example.com/fullchain.pem;" in https


def test_cli_render_writes_the_bundle_the_program_copies(tmp_path, capsys):
    assert cli_main(["render", "--stack", "example", "--project-dir", "examples", "--out", str(tmp_path), "--instance-memory-mib", "4096"]) == 0
    from tests.harness.pulumi_mocks import stack_file_config
    from gitea_stack.settings import parse_settings
    config = {k.split(":", 1)[1]: v for k, v in stack_file_config().items() if k.startswith("gitea-stack:")}
    expected = render(parse_settings(config, "example"))
    for path, (content, mode) in expected.items():
        written = tmp_path / path
        assert written.read_text() == content
        assert written.stat().st_mode & 0o777 == mode


def test_cli_render_reports_bad_config(tmp_path, capsys):
    (tmp_path / "Pulumi.bad.yaml").write_text("config:\n  gitea-stack:domain: not a domain\n")
    assert cli_main(["render", "--stack", "bad", "--out", str(tmp_path / "out"), "--project-dir", str(tmp_path)]) == 1
    assert "gitea-stack:domain: expected a fully qualified domain name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_acme_server_and_aws_endpoint_come_from_the_settings():
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    default = render(variant("example"))
    assert "server = https://acme-v02.api.letsencrypt.org/directory\n" in default["certbot/cli.ini"][0]
    assert "AWS_ENDPOINT_URL" not in default["settings.env"][0]
    custom = render(parse_settings({**BASE, "acmeServer": "https://acme-staging-v02.api.letsencrypt.org/directory",
                                           "awsEndpointUrl": "http://192.0.2.2:5000"}, "prod"))
    assert "server = https://acme-staging-v02.api.letsencrypt.org/directory\n" in custom["certbot/cli.ini"][0]
    assert "\nAWS_ENDPOINT_URL=http://192.0.2.2:5000\n" in custom["settings.env"][0]


def settings_env(settings) -> dict[str, str]:
    lines = render(settings)["settings.env"][0].splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_host_knows_the_data_volume_size_it_must_grow_to():
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    assert settings_env(variant("example"))["DATA_VOLUME_GIB"] == "50"
    grown = parse_settings({**BASE, "dataVolumeGiB": 80}, "prod")
    assert settings_env(grown)["DATA_VOLUME_GIB"] == "80"
    # A new size is a new bundle: the copy and the converge run again, and the converge grows the filesystem.
    assert bundle_digest(render(grown)) != bundle_digest(render(variant("example")))


def test_the_host_knows_the_backup_retention():
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    assert settings_env(parse_settings({**BASE, "backupRetentionDays": 9}, "prod"))["BACKUP_RETENTION_DAYS"] == "9"
    assert settings_env(variant("example"))["BACKUP_RETENTION_DAYS"].isdigit()


@pytest.mark.parametrize("image, major", [
    ("docker.io/library/postgres:18.6-bookworm", "18"),
    ("docker.io/library/postgres:17.6-bookworm", "17"),
    ("registry.example.com:5000/postgres:16-alpine", "16"),
    # A digest-only reference is refused by the settings (no major to compare); with a tag it is fine.
    ("docker.io/library/postgres:18.6-bookworm@sha256:" + "ab" * 32, "18"),
])
def test_the_host_knows_the_postgres_image_and_its_major_version(image, major):
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    settings = parse_settings({**BASE, "images": {"postgres": image}}, "prod")
    values = settings_env(settings)
    assert (values["POSTGRES_IMAGE"], values["POSTGRES_MAJOR"]) == (image, major)
    assert compose(settings)["services"]["postgres"]["image"] == values["POSTGRES_IMAGE"]


def test_the_tarball_is_deterministic_and_keeps_modes():
    import io
    import tarfile
    from gitea_stack.bundle import bundle_tarball
    rendered = render(variant("example"))
    assert bundle_tarball(rendered) == bundle_tarball(render(variant("example")))
    with tarfile.open(fileobj=io.BytesIO(bundle_tarball(rendered))) as archive:
        assert {m.name: m.mode for m in archive.getmembers()} == {path: mode for path, (_, mode) in rendered.items()}


def test_cli_render_asks_aws_for_the_instance_memory(tmp_path, capsys, monkeypatch):
    from moto import mock_aws
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():  # moto describes t3.medium as AWS does: 4096 MiB
        assert cli_main(["render", "--stack", "example", "--project-dir", "examples", "--out", str(tmp_path / "asked")]) == 0
    assert "for a t3.medium with 4096 MiB" in capsys.readouterr().out
    assert cli_main(["render", "--stack", "example", "--project-dir", "examples", "--out", str(tmp_path / "given"), "--instance-memory-mib", "4096"]) == 0
    compose_file = "docker-compose.yml"
    assert (tmp_path / "asked" / compose_file).read_text() == (tmp_path / "given" / compose_file).read_text()


def test_cli_render_without_aws_says_how_to_render_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert cli_main(["render", "--stack", "example", "--project-dir", "examples", "--out", str(tmp_path / "out")]) == 1
    assert "pass --instance-memory-mib" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("image, host_path, container_path", [
    ("docker.io/library/postgres:18.6-bookworm", "/srv/gitea-stack/postgres", "/var/lib/postgresql"),
    ("docker.io/library/postgres:19.0-trixie", "/srv/gitea-stack/postgres", "/var/lib/postgresql"),
    # Before 18 the image declares VOLUME /var/lib/postgresql/data: the data volume must be mounted
    # exactly there, or Docker puts the database in an anonymous volume on the root disk.
    ("docker.io/library/postgres:17.6-bookworm", "/srv/gitea-stack/postgres/data", "/var/lib/postgresql/data"),
])
def test_the_database_lands_on_the_data_volume_for_each_postgres_layout(image, host_path, container_path):
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    volumes = compose(parse_settings({**BASE, "images": {"postgres": image}}, "prod"))["services"]["postgres"]["volumes"]
    assert f"{host_path}:{container_path}" in volumes
    assert [volume for volume in volumes if volume.startswith("/srv/")] == [f"{host_path}:{container_path}"]


def test_the_backup_timer_runs_the_backup_script_on_the_configured_schedule():
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    default = render(variant("example"))
    assert "\nOnCalendar=hourly\n" in default["systemd/gitea-stack-backup.timer"][0]
    assert "\nExecStart=/opt/gitea-stack/scripts/backup.sh\n" in default["systemd/gitea-stack-backup.service"][0]
    nightly = render(parse_settings({**BASE, "backupSchedule": "*-*-* 02:30:00"}, "prod"))
    assert "\nOnCalendar=*-*-* 02:30:00\n" in nightly["systemd/gitea-stack-backup.timer"][0]


@pytest.mark.parametrize("unit, script, calendar", [
    ("gitea-stack-backup-check", "check-backups.sh", "weekly"),
    ("gitea-stack-restore-drill", "restore-drill.sh", "monthly"),
])
def test_the_backup_check_and_the_restore_drill_run_on_their_timers(unit, script, calendar):
    rendered = render(variant("example"))
    timer, service = rendered[f"systemd/{unit}.timer"][0], rendered[f"systemd/{unit}.service"][0]
    assert f"\nOnCalendar={calendar}\n" in timer
    assert "\nPersistent=true\n" in timer and "\nRandomizedDelaySec=" in timer
    assert "\nWantedBy=timers.target\n" in timer
    assert f"\nExecStart=/opt/gitea-stack/scripts/{script}\n" in service
    # As the backup: the forge comes first.
    assert "\nType=oneshot\n" in service and "\nNice=10\n" in service and "\nIOSchedulingClass=idle\n" in service
    assert "\nRequiresMountsFor=/srv/gitea-stack\n" in service
    deploy = rendered["scripts/deploy.sh"][0]
    assert f"systemctl enable --now {unit}.timer" in deploy


def test_images_conf_names_each_service_s_image_policy_and_update_line_for_bash():
    settings = variant("example")
    lines = [line.split() for line in render(settings)["images.conf"][0].splitlines()
             if line and not line.startswith("#")]
    by_service = {fields[0]: fields[1:] for fields in lines}
    assert set(by_service) == set(settings.images)
    for service, (image, policy, update_line) in by_service.items():
        assert image == settings.images[service]
        assert policy == UPDATE_POLICY[service]
        # bash's =~ is POSIX ERE, which has no \\d.
        assert "\\d" not in update_line
        assert re.fullmatch(update_line, image_tag(DEFAULT_IMAGES[service])), (service, update_line)
    assert by_service["gitea"][1] == "manual" and by_service["nginx"][1] == "auto"


def test_the_health_check_runs_every_five_minutes_and_knows_the_ports_and_schedule_it_checks():
    from gitea_stack.settings import parse_settings
    from tests.harness.bundles import BASE
    rendered = render(variant("example"))
    timer = rendered["systemd/gitea-stack-health-check.timer"][0]
    service = rendered["systemd/gitea-stack-health-check.service"][0]
    assert "\nOnUnitActiveSec=5min\n" in timer and "\nOnBootSec=10min\n" in timer
    assert "\nWantedBy=timers.target\n" in timer
    assert "\nExecStart=/opt/gitea-stack/scripts/health-check.sh --notify\n" in service
    assert "\nType=oneshot\n" in service
    assert "systemctl enable --now gitea-stack-health-check.timer" in rendered["scripts/deploy.sh"][0]
    assert (settings_env(variant("example"))["GIT_SSH_PORT"], settings_env(variant("example"))["BACKUP_SCHEDULE"]) == (
        "22", "hourly")
    custom = settings_env(parse_settings({**BASE, "gitSshPort": 2200, "backupSchedule": "*-*-* 02:30:00"}, "prod"))
    assert (custom["GIT_SSH_PORT"], custom["BACKUP_SCHEDULE"]) == ("2200", "*-*-* 02:30:00")
