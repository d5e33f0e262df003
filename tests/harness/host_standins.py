"""Runs the bundle's host scripts (deploy.sh, renew-certificates.sh) on this machine, for the host tier.

What the scripts call but the host tier cannot run is replaced on PATH, and only that:
  docker     tests/harness/docker_standin.py: real nginx and certbot behind `compose exec`/`run`,
             a healthy host's answers for the rest;
  systemctl  logs its arguments (no systemd manager runs here);
  python3    this test's Python (it has boto3, as the host's python3-boto3), which also records the
             modes of the directory fetch-secrets.py wrote (the staging directory is gone afterwards).
Secrets Manager is a real API: moto's server on loopback (`MotoServer`).

deploy.sh installs systemd units below /etc/systemd/system: `host_script_argv` runs it in a private
mount namespace where a test directory is bound over that path, so this machine's is never touched.

The stand-ins run the services where the layout puts them: a HostLayout whose container paths equal
the host paths (`layout_mount_problems` checks the compose file for that), so nothing is translated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from tests.harness.nginx import NginxServer, free_port, wait_for_port
from tests.harness.tools import require_tool, stop_process

DOCKER_STANDIN = Path(__file__).with_name("docker_standin.py")

PYTHON_WRAPPER = """\
#!{python}
# python3 for the host scripts: the test's own Python. After fetch-secrets.py it records the modes and
# owners of the directory it wrote to and of each file there, as one JSON line in {log}.
import json, os, subprocess, sys
status = subprocess.run([{python!r}, *sys.argv[1:]], check=False).returncode
if len(sys.argv) == 4 and sys.argv[1].endswith("/fetch-secrets.py"):
    out = sys.argv[3]
    entries = [out] + [os.path.join(out, name) for name in sorted(os.listdir(out))]
    seen = {{path: [os.stat(path).st_mode & 0o7777, os.stat(path).st_uid] for path in entries}}
    with open({log!r}, "a") as log:
        log.write(json.dumps(seen) + "\\n")
sys.exit(status)
"""

SYSTEMCTL = """\
#!/bin/sh
# systemctl for the host scripts: no systemd manager runs here; the call is logged.
printf '%s\\n' "$*" >>'{log}'
"""


class HostStandIns:
    """A directory of stand-ins (bin/) and their logs; `environment()` is what the scripts run with."""

    def __init__(self, directory: Path, nginx: NginxServer, certbot_env: dict[str, str] | None = None):
        self.directory = directory
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.docker_log = directory / "docker-calls.jsonl"
        self.systemctl_log = directory / "systemctl-calls.log"
        self.fetch_log = directory / "fetch-secrets-modes.jsonl"
        self.config = directory / "standin.json"
        self.config.write_text(json.dumps({
            "log": str(self.docker_log),
            "state": str(directory / "gitea-admins.json"),
            "nginx": [nginx.nginx, "-p", str(nginx.workdir), "-c", str(nginx.config)],
            "certbot": [require_tool("certbot", "certbot")],
            "env": certbot_env or {},
        }))
        self._write("docker", f"#!/bin/sh\nexec '{sys.executable}' '{DOCKER_STANDIN}' \"$@\"\n")
        self._write("systemctl", SYSTEMCTL.format(log=self.systemctl_log))
        self._write("python3", PYTHON_WRAPPER.format(python=sys.executable, log=str(self.fetch_log)))

    def _write(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def environment(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "GITEA_STACK_STANDIN_CONFIG": str(self.config),
                "GITEA_STACK_LOCK": str(self.directory / "gitea-stack.lock"), **extra}

    def docker_calls(self) -> list[list[str]]:
        if not self.docker_log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.docker_log.read_text().splitlines()]

    def fetched_modes(self) -> list[dict[str, list[int]]]:
        """One {path: [mode, uid]} per fetch-secrets.py run: its output directory and files."""
        if not self.fetch_log.exists():
            return []
        return [json.loads(line) for line in self.fetch_log.read_text().splitlines()]


def service_calls(calls: list[list[str]], service: str) -> list[list[str]]:
    """The `compose exec|run … <service> …` calls among docker calls, from the service name on."""
    found = []
    for argv in calls:
        if argv[:1] == ["compose"] and service in argv:
            rest = argv[argv.index(service):]
            if argv[argv.index(service) - 1] in ("-T", "--no-deps"):
                found.append(rest)
    return found


def host_script_argv(script: Path, systemd_dir: Path, *args: str) -> list[str]:
    """argv running `script` with `systemd_dir` bound over /etc/systemd/system (private mount namespace)."""
    unshare = require_tool("unshare", "util-linux")
    bind = 'mount --bind "$1" /etc/systemd/system && shift && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", bind, "sh", str(systemd_dir),
            "bash", str(script), *args]


# Container paths the stand-ins map themselves: the site directory (nginx includes it) and cli.ini
# (certbot gets it as --config, as the certbot service's entrypoint does).
MAPPED_BY_THE_STANDINS = {"/etc/nginx/conf.d", "/etc/gitea-stack/cli.ini"}


def layout_mount_problems(compose_text: str, services: tuple[str, ...] = ("nginx", "certbot")) -> list[str]:
    """Volumes of `services` whose container path differs from the host path (the stand-ins run
    nginx and certbot on the host, so every other path must be the same on both sides)."""
    problems = []
    for service in services:
        for volume in yaml.safe_load(compose_text)["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source != target and target not in MAPPED_BY_THE_STANDINS:
                problems.append(f"{service}: {volume}")
    return problems


def moto_sent_mails(url: str) -> list[dict]:
    """The mails the moto server at `url` took through SES, oldest first: {"subject", "body", "source",
    "destinations"}."""
    with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=10) as response:
        return json.load(response)["ses"]["Message"]


class MotoServer:
    """moto's server on loopback: a real Secrets Manager API. A child of the test, stopped by its PID."""

    def __init__(self, workdir: Path, region: str = "eu-central-1"):
        try:
            import moto.server  # noqa: F401
        except ImportError:
            import pytest
            pytest.fail("this test needs moto's server (PyPI moto[server], in the test extras); run tests/run.sh")
        self.workdir = workdir
        self.region = region
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        with (self.workdir / "moto.log").open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout=30)
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=10) as response:
                assert response.status == 200
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, service: str) -> Any:
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def accept_mail_from(self, domain: str) -> None:
        """Verifies `domain` in SES, as the stack's mail component does: SES then takes its mail."""
        self.client("ses").verify_domain_identity(Domain=domain)

    def sent_mails(self) -> list[dict]:
        return moto_sent_mails(self.url)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
