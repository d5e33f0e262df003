"""nginx in front of Gitea, as the bundle renders it: real nginx on loopback, a stub Gitea behind it.

The site files are rendered by `render_bundle` and included unchanged; only the HostLayout differs
from production (loopback ports, temporary certificate and webroot paths, a stub upstream, and the
`listen ... http2` form Debian's nginx 1.22 needs). The certificate is a self-signed ECDSA P-256 one
shaped like a Let's Encrypt leaf (90 days, SAN, key usage, serverAuth, key identifiers), and clients
(and sslyze) trust exactly that certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gitea_stack.bundle import HostLayout, write_bundle
from gitea_stack.settings import parse_settings
from tests.harness.nginx import NginxServer, free_port, supports_http2_directive
from tests.harness.bundles import BASE, render
from tests.harness.tools import require_tool
from tests.harness.servers import ServedInThread

EXAMPLE_SETTINGS = BASE
DOMAIN = EXAMPLE_SETTINGS["domain"]
VARIANT_DOMAIN = "code.example.org"
MIB = 1024 * 1024
CLIENT_MAX_BODY = 512 * MIB
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 20


# --- certificate -----------------------------------------------------------------------------------

def write_certificate(live_dir: Path, domain: str) -> Path:
    """A self-signed ECDSA P-256 leaf for `domain`, valid 90 days, as certbot lays it out.

    Beyond the SAN it carries what sslyze's path validation (cryptography's CA/B Forum policy) demands
    of a leaf: basicConstraints CA:FALSE, key usage, serverAuth and an authority key identifier.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    live_dir.mkdir(parents=True, exist_ok=True)
    fullchain = live_dir / "fullchain.pem"
    fullchain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    privkey = live_dir / "privkey.pem"
    privkey.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    privkey.chmod(0o600)
    return fullchain


# --- stub Gitea ------------------------------------------------------------------------------------

def websocket_frame(payload: bytes, *, masked: bool, opcode: int = 0x1) -> bytes:
    """One final frame with a short payload; clients mask, servers do not (RFC 6455 5.1)."""
    assert len(payload) < 126
    if not masked:
        return bytes([0x80 | opcode, len(payload)]) + payload
    key = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_websocket_frame(stream) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of one short frame read from a buffered binary stream."""
    head = stream.read(2)
    assert len(head) == 2, "connection closed before a websocket frame arrived"
    length = head[1] & 0x7F
    assert length < 126
    key = stream.read(4) if head[1] & 0x80 else None
    payload = stream.read(length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head[0] & 0x0F, payload


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: StubUpstream

    def log_message(self, *_):
        pass

    def do_GET(self):
        record = {"method": self.command, "path": self.path, "body_bytes": 0, "body_complete": False,
                  "headers": {name.lower(): value for name, value in self.headers.items()}}
        self.upstream.requests.append(record)  # before the body, so tests can watch it stream in
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.switch_to_websocket()
            return
        for chunk in self.body_chunks():
            record["body_bytes"] += len(chunk)  # counted, never stored
        record["body_complete"] = True
        payload = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_GET

    def body_chunks(self, size: int = 256 * 1024):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while length := int(self.rfile.readline().split(b";")[0], 16):
                yield from self.read_exactly(length, size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
        else:
            yield from self.read_exactly(int(self.headers.get("Content-Length") or 0), size)

    def read_exactly(self, remaining: int, size: int):
        while remaining > 0:
            chunk = self.rfile.read1(min(size, remaining))  # whatever has arrived, so counts move as it streams
            if not chunk:
                raise ConnectionError(f"request body ended {remaining} bytes early")
            remaining -= len(chunk)
            yield chunk

    def switch_to_websocket(self):
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(self.headers["Sec-WebSocket-Key"]))
        self.end_headers()
        opcode, payload = read_websocket_frame(self.rfile)
        self.wfile.write(websocket_frame(b"echo: " + payload, masked=False, opcode=opcode))
        self.close_connection = True


class StubUpstream(ServedInThread):
    """Gitea's stand-in on 127.0.0.1: answers with the request it saw, as JSON, and records it."""

    def __init__(self):
        self.requests: list[dict] = []
        handler = type("BoundStubHandler", (StubHandler,), {"upstream": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="stub-upstream", daemon=True)

    def seen(self, path: str) -> dict | None:
        matching = [record for record in self.requests if record["path"] == path]
        return matching[-1] if matching else None



# --- the site --------------------------------------------------------------------------------------

@dataclass
class Site:
    domain: str
    workdir: Path
    layout: HostLayout
    certificate: Path
    configs: list[Path]
    http_port: int
    https_port: int


def prepare_site(workdir: Path, domain: str, *, upstream: str) -> Site:
    """Certificate, webroot and the rendered site files; all differences from production are in the layout."""
    nginx = require_tool("nginx", "nginx")
    letsencrypt = workdir / "letsencrypt"
    certificate = write_certificate(letsencrypt / "live" / domain, domain)
    webroot = workdir / "acme-webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    http_port, https_port = free_port(), free_port()
    layout = HostLayout(
        http_listen=f"127.0.0.1:{http_port}",
        https_listen=f"127.0.0.1:{https_port}",
        gitea_upstream=upstream,
        letsencrypt_dir=str(letsencrypt),
        acme_webroot=str(webroot),
        nginx_http2_directive=supports_http2_directive(nginx),
    )
    bundle_dir = workdir / "bundle"
    write_bundle(render(parse_settings({**EXAMPLE_SETTINGS, "domain": domain}, "prod"), layout), bundle_dir)
    configs = [bundle_dir / "nginx" / "http.conf", bundle_dir / "nginx" / "https.conf"]
    return Site(domain, workdir, layout, certificate, configs, http_port, https_port)


@dataclass
class RunningSite:
    site: Site
    upstream: StubUpstream
    nginx: NginxServer


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> RunningSite:
    workdir = tmp_path_factory.mktemp("nginx-site")
    with StubUpstream() as upstream:
        site = prepare_site(workdir, DOMAIN, upstream=f"127.0.0.1:{upstream.port}")
        with NginxServer(workdir / "nginx", site.configs, [site.http_port, site.https_port]) as nginx:
            yield RunningSite(site, upstream, nginx)


# --- clients ---------------------------------------------------------------------------------------

def client_context(site: Site, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Trusts only the site's certificate and checks it against the domain."""
    context = ssl.create_default_context(cafile=str(site.certificate))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def tls_socket(site: Site, context: ssl.SSLContext) -> ssl.SSLSocket:
    """TLS to nginx on loopback with SNI = the domain."""
    raw = socket.create_connection(("127.0.0.1", site.https_port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=site.domain)
    except BaseException:
        raw.close()
        raise


def https_connection(site: Site) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection(site.domain, timeout=TIMEOUT)
    connection.sock = tls_socket(site, client_context(site, alpn=["http/1.1"]))
    return connection


def http_get(site: Site, path: str, host: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=TIMEOUT)
    connection.request("GET", path, headers={"Host": host})
    return connection.getresponse()


def read_head(stream) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-cased names) of an HTTP/1.1 response read from a binary stream."""
    status_line = stream.readline().decode("latin-1")
    assert status_line, "connection closed without a response"
    status = int(status_line.split()[1])
    headers = {}
    while (line := stream.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def unique_path(name: str) -> str:
    return f"/{name}/{uuid.uuid4().hex}"


def wait_until(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.01)
    return result


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", [DOMAIN, VARIANT_DOMAIN])
def test_nginx_accepts_the_rendered_configuration(tmp_path, domain):
    site = prepare_site(tmp_path, domain, upstream="127.0.0.1:3000")
    result = NginxServer(tmp_path / "nginx", site.configs, []).check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    for config in site.configs:
        assert f"server_name {domain};" in config.read_text()


# --- plain HTTP ------------------------------------------------------------------------------------

def test_http_redirects_to_https_keeping_path_and_query(running):
    response = http_get(running.site, "/user/login?x=1", DOMAIN)
    assert response.status == 301
    assert response.getheader("Location") == f"https://{DOMAIN}/user/login?x=1"


def test_http_serves_acme_challenges_from_the_webroot(running):
    token = "tok_" + uuid.uuid4().hex
    body = f"{token}.key-thumbprint"
    (Path(running.site.layout.acme_webroot) / ".well-known" / "acme-challenge" / token).write_text(body)
    response = http_get(running.site, f"/.well-known/acme-challenge/{token}", DOMAIN)
    assert response.status == 200
    assert response.read().decode() == body
    assert response.getheader("Content-Type", "").startswith("text/plain")


def test_http_unknown_acme_token_is_404_not_a_redirect(running):
    response = http_get(running.site, "/.well-known/acme-challenge/no-such-token", DOMAIN)
    assert response.status == 404
    assert response.getheader("Location") is None


def test_http_other_host_names_get_no_response(running):
    with socket.create_connection(("127.0.0.1", running.site.http_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: other.example.net\r\n\r\n")
        try:
            received = sock.recv(4096)
        except ConnectionResetError:
            received = b""
    assert received == b"", f"expected the connection closed without an answer, got {received[:200]!r}"


# --- HTTPS -----------------------------------------------------------------------------------------

def test_https_proxies_to_gitea_with_security_headers(running):
    path = unique_path("home")
    connection = https_connection(running.site)
    connection.request("GET", path, headers={"Host": DOMAIN})
    response = connection.getresponse()
    payload = response.read()
    connection.close()

    assert response.status == 200, payload[:500]
    assert json.loads(payload)["path"] == path
    hsts = response.getheader("Strict-Transport-Security", "")
    max_age = re.search(r"max-age=(\d+)", hsts)
    assert max_age and int(max_age.group(1)) >= 31536000, hsts
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("X-Frame-Options") in ("DENY", "SAMEORIGIN")
    assert response.getheader("Referrer-Policy")
    assert response.getheader("Server") == "nginx", "server_tokens off hides the version"

    seen = running.upstream.seen(path)["headers"]
    assert seen["x-forwarded-proto"] == "https"
    assert seen["host"] == DOMAIN
    assert seen["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=lambda v: v.name)
def test_tls_modern_versions_are_accepted(running, version):
    context = client_context(running.site)
    context.minimum_version = context.maximum_version = version
    with tls_socket(running.site, context) as sock:
        assert sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=lambda v: v.name)
def test_tls_old_versions_are_refused_by_the_server(running, version):
    context = client_context(running.site)
    # Security level 0 lets the local OpenSSL offer TLS 1.0/1.1 (and their SHA-1 suites), so that
    # a failure is the server's refusal and not the client's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl warns about setting TLS 1.0/1.1
        context.minimum_version = context.maximum_version = version
    with pytest.raises(ssl.SSLError) as refused:
        tls_socket(running.site, context).close()
    assert "alert protocol version" in str(refused.value).lower(), refused.value


def test_http2_is_negotiated_with_alpn(running):
    with tls_socket(running.site, client_context(running.site, alpn=["h2", "http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "h2"


def test_websocket_upgrade_passes_through(running):
    path = unique_path("api/ws")
    key = base64.b64encode(os.urandom(16)).decode()
    with tls_socket(running.site, client_context(running.site, alpn=["http/1.1"])) as sock:
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        stream = sock.makefile("rb")
        status, headers = read_head(stream)
        assert status == 101
        assert headers["upgrade"].lower() == "websocket"
        assert headers["sec-websocket-accept"] == websocket_accept(key)
        sock.sendall(websocket_frame(b"hello through nginx", masked=True))
        assert read_websocket_frame(stream) == (0x1, b"echo: hello through nginx")

    seen = running.upstream.seen(path)["headers"]
    assert seen["upgrade"] == "websocket"
    assert seen["connection"].lower() == "upgrade"


def start_upload(site: Site, path: str, length: int) -> http.client.HTTPConnection:
    connection = https_connection(site)
    connection.putrequest("POST", path, skip_host=True)
    connection.putheader("Host", site.domain)
    connection.putheader("Content-Type", "application/octet-stream")
    connection.putheader("Content-Length", str(length))
    connection.endheaders()
    return connection


def send_body(connection: http.client.HTTPConnection, length: int, chunk: bytes = b"\x5a" * MIB) -> None:
    while length > 0:
        piece = chunk[:length]
        connection.send(piece)
        length -= len(piece)


def test_upload_of_100_mib_reaches_gitea_whole(running):
    path, size = unique_path("lfs/upload"), 100 * MIB
    connection = start_upload(running.site, path, size)
    send_body(connection, size)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.status == 200, payload[:500]
    assert json.loads(payload)["body_bytes"] == size
    assert running.upstream.seen(path)["body_complete"]


def test_upload_over_the_limit_is_refused_before_the_body(running):
    path, announced = unique_path("lfs/too-big"), 600 * MIB
    assert announced > CLIENT_MAX_BODY
    with tls_socket(running.site, client_context(running.site, alpn=["http/1.1"])) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {announced}\r\n\r\n").encode())
        try:
            sock.sendall(b"\x5a" * (64 * 1024))  # a first chunk; nginx may already have answered and closed
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        status, headers = read_head(sock.makefile("rb"))
    assert status == 413
    assert running.upstream.seen(path) is None, "the request must not reach Gitea"


def test_request_bodies_stream_to_gitea_unbuffered(running):
    path, size = unique_path("lfs/streamed"), 16 * MIB
    connection = start_upload(running.site, path, size)
    send_body(connection, 2 * MIB)
    # With request buffering, nginx would hold the body until the last byte before calling Gitea.
    wait_until(lambda: (running.upstream.seen(path) or {}).get("body_bytes", 0) > 0,
               what="Gitea receiving the first bytes while the client is still sending")
    assert not running.upstream.seen(path)["body_complete"]
    send_body(connection, size - 2 * MIB)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    assert response.status == 200, payload[:500]
    assert json.loads(payload)["body_bytes"] == size


# --- sslyze ----------------------------------------------------------------------------------------

# sslyze's bundled public trust stores hold a root with a non-positive serial, which cryptography warns about.
@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
def test_tls_meets_mozilla_intermediate_per_sslyze(running):
    from sslyze import (CertificateInfoExtraArgument, Scanner, ScanCommandsExtraArguments, ServerNetworkLocation,
                        ServerScanRequest, ServerScanStatusEnum)
    from sslyze.mozilla_tls_profile.tls_config_checker import (SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
                                                               MozillaTlsConfiguration,
                                                               ServerNotCompliantWithTlsConfiguration,
                                                               TlsConfigurationEnum,
                                                               check_server_against_tls_configuration)

    site = running.site
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=site.domain, port=site.https_port, ip_address="127.0.0.1"),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        # The self-signed certificate is its own trust anchor: sslyze validates the path against it.
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=site.certificate)),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    [result] = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace

    # Path validation (cryptography's CA/B Forum server policy, hostname included) succeeded with the custom
    # store only; the bundled public stores cannot know a self-signed certificate.
    [deployment] = result.scan_result.certificate_info.result.certificate_deployments
    validated_by = [r.trust_store.path for r in deployment.path_validation_results if r.was_validation_successful]
    assert validated_by == [site.certificate], [(r.trust_store.name, r.validation_error)
                                                for r in deployment.path_validation_results]

    try:
        check_server_against_tls_configuration(
            result, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE))
    except ServerNotCompliantWithTlsConfiguration as error:
        pytest.fail(f"not compliant with Mozilla intermediate: {error.issues}")
