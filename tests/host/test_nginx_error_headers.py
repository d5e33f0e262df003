"""HSTS and the security headers come with every HTTPS answer, errors included.

nginx's `add_header` leaves out error responses (4xx, 5xx) unless it says `always`; a browser that
meets a 404 or a 502 page first would then not learn HSTS. Real nginx runs the rendered site files
(tests/host/test_nginx.py's `prepare_site`); Gitea's stand-in here answers with the status a path
asks for, or hangs up without an answer so that nginx itself answers 502.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness.nginx import NginxServer
from tests.host.test_nginx import DOMAIN, https_connection, prepare_site

SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


class StatusHandler(BaseHTTPRequestHandler):
    """GET /status/<code> answers <code>; /hang-up closes the connection without an answer."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path == "/hang-up":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        code = int(self.path.rsplit("/", 1)[1])
        body = f"gitea says {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        workdir = tmp_path_factory.mktemp("nginx-errors")
        site = prepare_site(workdir, DOMAIN, upstream=f"127.0.0.1:{server.server_address[1]}")
        with NginxServer(workdir / "nginx", site.configs, [site.http_port, site.https_port]):
            yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def https_request(site, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    connection = https_connection(site)
    connection.request(method, path, headers={"Host": DOMAIN, **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


CASES = {
    "200 from Gitea": ("GET", "/status/200", {}, 200),
    "404 from Gitea": ("GET", "/status/404", {}, 404),
    "500 from Gitea": ("GET", "/status/500", {}, 500),
    "502 from nginx": ("GET", "/hang-up", {}, 502),
    "413 from nginx": ("POST", "/status/200", {"Content-Length": str(600 * 1024 * 1024)}, 413),
}


@pytest.mark.parametrize("method, path, headers, status", CASES.values(), ids=CASES.keys())
def test_every_https_answer_carries_hsts_and_the_security_headers(site, method, path, headers, status):
    response = https_request(site, method, path, headers)
    assert response.status == status
    hsts = response.getheader("Strict-Transport-Security") or ""
    max_age = re.fullmatch(r"max-age=(\d+)(; includeSubDomains)?(; preload)?", hsts)
    assert max_age and int(max_age.group(1)) >= 31536000, f"{status}: Strict-Transport-Security {hsts!r}"
    missing = [name for name in SECURITY_HEADERS if not response.getheader(name)]
    assert not missing, f"{status} lacks {missing}"
