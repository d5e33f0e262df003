"""Resident memory of the observability plane's real programs, after start and after minutes of
scraping, against the memory caps sizing.py gives their containers.

Usage, as root: .venv/bin/python bench/plane_memory.py [--minutes N]      (default 10)

Runs what can run here, with the bundle's own configs (rendered with a MonitoringLayout of loopback
ports, as tests/host/test_monitoring.py does): Debian's Prometheus (with every alert rule), node,
postgres and blackbox exporters and Alertmanager, against a real PostgreSQL cluster, a Gitea
/metrics stand-in and an SSH banner on the git SSH port. Grafana, Loki, Alloy and cAdvisor have no
build on this machine: they are listed as not measured. Debian 12 ships older releases than the
pinned images (Prometheus 2.42 for 3.13, ...): same programs, other versions, so the figures are
indicative. RSS is VmRSS of each process, read from /proc, the figure a container's memory cap
counts (plus the page cache it uses). Prints a table and writes bench/results/plane-memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitea_stack.bundle import HostLayout, MonitoringLayout, write_bundle  # noqa: E402
from gitea_stack.settings import parse_settings  # noqa: E402
from gitea_stack.sizing import FIXED_MIB  # noqa: E402
from tests.harness.bundles import BASE, render  # noqa: E402
from tests.harness.nginx import free_port, wait_for_port  # noqa: E402
from tests.harness.postgres import postgres_tools, psql_argv, run, start_postgres, stop_postgres  # noqa: E402
from tests.harness.tools import stop_process  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "plane-memory.json"
NOT_RUNNABLE_HERE = ("grafana", "loki", "alloy", "cadvisor")
TOKEN = "bench-metrics-token"


class GiteaMetrics(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def do_GET(self):  # noqa: N802
        payload = b"# TYPE gitea_users gauge\ngitea_users 3\n"
        self.send_response(200 if self.headers.get("Authorization") == f"Bearer {TOKEN}" else 401)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class Banner(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"SSH-2.0-Go\r\n")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    minutes = parser.parse_args().minutes
    root = Path(tempfile.mkdtemp(prefix="gitea-stack-plane-bench-"))
    root.chmod(0o755)
    gitea = ThreadingHTTPServer(("127.0.0.1", 0), GiteaMetrics)
    ssh_port = free_port()
    banner = socketserver.ThreadingTCPServer(("127.0.0.1", ssh_port), Banner)
    for server in (gitea, banner):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    tools = postgres_tools()
    postgres, sockets, port = start_postgres(root, tools)
    processes: dict[str, subprocess.Popen] = {}
    try:
        run(*psql_argv(tools, sockets, port), "--dbname", "postgres", "--command",
            "CREATE ROLE gitea_stack_monitor LOGIN IN ROLE pg_monitor")
        bundle_dir = root / "bundle"
        monitoring = MonitoringLayout(
            **{name: f"127.0.0.1:{free_port()}" for name in (
                "prometheus", "alertmanager", "node_exporter", "postgres_exporter", "blackbox_exporter", "cadvisor",
                "alloy", "loki")},
            gitea=f"127.0.0.1:{gitea.server_address[1]}", config_dir=str(bundle_dir / "prometheus"),
            secrets_dir=str(root / "secrets"), https_probe_url=f"https://127.0.0.1:{free_port()}/api/healthz",
            git_ssh_probe_host="127.0.0.1")
        settings = parse_settings({**BASE, "gitSshPort": ssh_port}, "bench")
        write_bundle(render(settings, HostLayout(monitoring=monitoring)), bundle_dir)
        (root / "secrets").mkdir()
        (root / "secrets" / "metrics-token").write_text(TOKEN)
        (root / "smtp-password").write_text("unused")
        alertmanager_config = root / "alertmanager.yml"
        alertmanager_config.write_text((bundle_dir / "alertmanager/alertmanager.yml").read_text()
                                       .replace("SMTP_SMARTHOST_FROM_SECRET", "127.0.0.1:2525")
                                       .replace("SMTP_USERNAME_FROM_SECRET", "bench")
                                       .replace("/run/gitea-stack/smtp-password", str(root / "smtp-password")))
        (root / "metrics").mkdir()
        commands = {
            "prometheus": (["prometheus", f"--config.file={bundle_dir / 'prometheus/prometheus.yml'}",
                            f"--storage.tsdb.path={root / 'prometheus'}", f"--web.listen-address={monitoring.prometheus}"],
                           monitoring.prometheus, {}),
            "alertmanager": (["prometheus-alertmanager", f"--config.file={alertmanager_config}",
                              f"--storage.path={root / 'alertmanager'}", f"--web.listen-address={monitoring.alertmanager}",
                              "--cluster.listen-address="], monitoring.alertmanager, {}),
            "node-exporter": (["prometheus-node-exporter", f"--web.listen-address={monitoring.node_exporter}",
                               f"--collector.textfile.directory={root / 'metrics'}"], monitoring.node_exporter, {}),
            "postgres-exporter": (["prometheus-postgres-exporter", f"--web.listen-address={monitoring.postgres_exporter}"],
                                  monitoring.postgres_exporter,
                                  {"DATA_SOURCE_NAME": f"host={sockets} port={port} user=gitea_stack_monitor "
                                                       "dbname=postgres sslmode=disable"}),
            "blackbox-exporter": (["prometheus-blackbox-exporter", f"--config.file={bundle_dir / 'blackbox/blackbox.yml'}",
                                   f"--web.listen-address={monitoring.blackbox_exporter}"], monitoring.blackbox_exporter, {}),
        }
        for name, (argv, address, env) in commands.items():
            processes[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               env={"PATH": "/usr/bin:/bin", **env})
            wait_for_port(int(address.rsplit(":", 1)[1]), timeout=30)
        print(f"plane started; first sample in 60 s, the second after {minutes:g} minutes", flush=True)
        time.sleep(60)
        after_start = {name: rss_mib(process.pid) for name, process in processes.items()}
        remaining = minutes * 60 - 60
        while remaining > 0:
            step = min(60, remaining)
            time.sleep(step)
            remaining -= step
            print(f"  {minutes - remaining / 60:.0f} of {minutes:g} minutes", flush=True)
        after_scraping = {name: rss_mib(process.pid) for name, process in processes.items()}
    finally:
        for process in processes.values():
            stop_process(process)
        stop_postgres(postgres)
        gitea.shutdown()
        banner.shutdown()
        banner.server_close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    rows = []
    print(f"\n{'service':<20}{'RSS after start':>18}{f'after {minutes:g} min':>16}{'cap (sizing.py)':>18}")
    for name in [*commands, *NOT_RUNNABLE_HERE]:
        cap = FIXED_MIB[name]
        if name in after_start:
            rows.append({"service": name, "rss_after_start_mib": round(after_start[name], 1),
                         "rss_after_scraping_mib": round(after_scraping[name], 1), "cap_mib": cap})
            print(f"{name:<20}{after_start[name]:>14.1f} MiB{after_scraping[name]:>12.1f} MiB{cap:>14} MiB")
        else:
            rows.append({"service": name, "measured": False, "cap_mib": cap,
                         "why": "no build of it runs on this machine (no registry, no Debian package)"})
            print(f"{name:<20}{'not measured here':>34}{cap:>14} MiB")
    total = sum(row.get("rss_after_scraping_mib", 0) for row in rows)
    print(f"{'measured total':<20}{'':>18}{total:>12.1f} MiB")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "minutes": minutes, "programs": "Debian 12 builds (older than the pinned images)", "services": rows,
        "measured_total_after_scraping_mib": round(total, 1)}, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
