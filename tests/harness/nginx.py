"""Real nginx on loopback, running the bundle's own server configs.

The harness writes only the main nginx.conf (what the nginx image provides in production: events,
mime types, temp paths) and includes the rendered site files unchanged. nginx runs in the
foreground as a child of the test and is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.harness.tools import require_tool, stop_process

MAIN_CONFIG = """\
{user}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
{includes}
}}
"""


def nginx_version(nginx: str) -> tuple[int, ...]:
    output = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr  # nginx version: nginx/1.22.1
    return tuple(int(part) for part in output.strip().split("/")[-1].split(" ")[0].split("."))


def supports_http2_directive(nginx: str) -> bool:
    return nginx_version(nginx) >= (1, 25, 1)


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NginxServer:
    def __init__(self, workdir: Path, site_configs: list[Path], ports: list[int]):
        self.nginx = require_tool("nginx", "nginx")
        self.workdir = workdir
        self.site_configs = site_configs
        self.ports = ports
        self.process: subprocess.Popen | None = None
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.config = workdir / "nginx.conf"
        self.write_config()

    def write_config(self) -> None:
        includes = "\n".join(f"    include {path};" for path in self.site_configs)
        # As root, workers would drop to nobody and could not read the test's private temp files.
        user = "user root root;" if os.geteuid() == 0 else ""
        self.config.write_text(MAIN_CONFIG.format(user=user, workdir=self.workdir, includes=includes))

    def check(self) -> subprocess.CompletedProcess:
        """`nginx -t` on the configuration as it stands."""
        return subprocess.run([self.nginx, "-t", "-p", str(self.workdir), "-c", str(self.config)],
                              capture_output=True, text=True)

    def start(self) -> NginxServer:
        self.process = subprocess.Popen(
            [self.nginx, "-p", str(self.workdir), "-c", str(self.config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for port in self.ports:
                wait_for_port(port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {(self.workdir / 'error.log').read_text()}") from None
        return self

    def reload(self) -> None:
        """SIGHUP: nginx re-reads its configuration and certificates, as `nginx -s reload` does."""
        assert self.process is not None
        log = self.workdir / "error.log"
        seen = log.read_text().count("reconfiguring")
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while log.read_text().count("reconfiguring") == seen:
            if time.monotonic() > deadline:
                raise TimeoutError("nginx did not reload")
            time.sleep(0.05)
        time.sleep(0.3)  # new workers take over after the master logs the reload

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
