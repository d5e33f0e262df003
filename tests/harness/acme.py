"""A real ACME CA on loopback: Let's Encrypt's pebble, with pebble-challtestsrv as its DNS.

Pebble serves ACME over HTTPS only. The Debian package ships no test certificates, so the harness
makes a throwaway CA and a certificate for 127.0.0.1/localhost for pebble's own listener; clients
trust it through `ca_file` (certbot: REQUESTS_CA_BUNDLE). This CA has nothing to do with the CA that
issues the ACME certificates: pebble makes a fresh root and intermediate on every start, fetched
with `root_pem()` / `intermediate_pem()` from its management API.

HTTP-01 validation: pebble resolves the domain through pebble-challtestsrv's DNS server, which
answers every A query with 127.0.0.1 (and no AAAA), and connects to port `http_port` there, i.e.
the nginx under test. Only that DNS server runs; challtestsrv's own challenge servers are off.

Everything listens on 127.0.0.1 only; both processes are children of the test, stopped by PID.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.nginx import free_port, wait_for_port
from tests.harness.tools import require_tool, stop_process

LOOPBACK = "127.0.0.1"


def free_udp_port() -> int:
    """A loopback port free for both UDP and TCP (challtestsrv's DNS server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def new_listener_ca(common_name: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA for pebble's own HTTPS listener (not the CA that issues ACME certificates)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def listener_certificate(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, ip_addresses: list[str],
                         dns_names: list[str], directory: Path, days: int) -> tuple[Path, Path]:
    """A server certificate for pebble's listener, signed by `ca`; returns (cert_file, key_file)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses] + [x509.DNSName(n) for n in dns_names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ip_addresses)[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "listener-cert.pem", directory / "listener-key.pem"
    cert_file.write_bytes(_pem(cert))
    _write_key(key, key_file)
    return cert_file, key_file


def make_listener_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1/localhost server certificate it signed.

    Returns (ca_file, cert_file, key_file).
    """
    ca, ca_key = new_listener_ca("gitea-stack test pebble listener CA", days=1)
    cert_file, key_file = listener_certificate(ca, ca_key, [LOOPBACK], ["localhost"], directory, days=1)
    ca_file = directory / "listener-ca.pem"
    ca_file.write_bytes(_pem(ca))
    return ca_file, cert_file, key_file


def pebble_config(listen: str, management: str, cert_file: Path, key_file: Path, http_port: int,
                  tls_port: int) -> str:
    """pebble's JSON config. certbot's webroot authenticator only does HTTP-01: nothing listens on tls_port."""
    return json.dumps({"pebble": {
        "listenAddress": listen,
        "managementListenAddress": management,
        "certificate": str(cert_file),
        "privateKey": str(key_file),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}, indent=2)


def challtestsrv_argv(binary: str, address: str, dns_port: int, management_port: int, resolve_to: str) -> list[str]:
    """pebble-challtestsrv with only its DNS server, answering every A query with `resolve_to`, no AAAA."""
    return [binary, "-dns01", f"{address}:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"{address}:{management_port}", "-defaultIPv4", resolve_to, "-defaultIPv6", ""]


def pebble_argv(binary: str, config: Path, dns_server: str) -> list[str]:
    return [binary, "-config", str(config), "-dnsserver", dns_server]


PEBBLE_ENVIRONMENT = {
    "PEBBLE_VA_NOSLEEP": "1",       # validate at once, no random 0-15 s sleep
    "PEBBLE_WFE_NONCEREJECT": "0",  # never reject a good nonce: deterministic runs
    # By default pebble reuses a valid authorization for half of new orders, so a renewal would often
    # skip HTTP-01. 0 is the lowest value it accepts, but not "never": pebble 2.4 makes a new
    # authorization only if rand.Intn(100) > percent (wfe.makeAuthorizations), so about 1 order in 100
    # still reuses one. See Pebble.authorizations_created().
    "PEBBLE_AUTHZREUSE": "0",
}


def dns_query_a(server: tuple[str, int], name: str, timeout: float = 0.5) -> list[str]:
    """The IPv4 addresses a DNS server answers for `name` (a minimal one-question UDP query)."""
    query_id = os.getpid() & 0xFFFF
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, server)
        reply = sock.recv(4096)
    _, _, _, ancount, _, _ = struct.unpack(">HHHHHH", reply[:12])
    offset = 12 + len(question) + 4  # skip the echoed question
    addresses = []
    for _ in range(ancount):
        if reply[offset] & 0xC0 == 0xC0:  # compressed name
            offset += 2
        else:
            while reply[offset]:
                offset += reply[offset] + 1
            offset += 1
        rtype, _, _, rdlength = struct.unpack(">HHIH", reply[offset:offset + 10])
        offset += 10
        if rtype == 1 and rdlength == 4:
            addresses.append(socket.inet_ntoa(reply[offset:offset + 4]))
        offset += rdlength
    return addresses


class Pebble:
    """pebble + pebble-challtestsrv (DNS only) on loopback; use as a context manager or start()/stop()."""

    def __init__(self, workdir: Path, http_port: int, resolve_to: str = LOOPBACK):
        self.pebble = require_tool("pebble", "pebble")
        self.challtestsrv = require_tool("pebble-challtestsrv", "pebble")
        self.workdir = workdir
        self.http_port = http_port
        self.resolve_to = resolve_to
        self.acme_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_udp_port()
        self.challtestsrv_management_port = free_port()
        self.ca_file, self.cert_file, self.key_file = make_listener_certificate(workdir / "listener")
        self.config = workdir / "pebble-config.json"
        self.config.write_text(pebble_config(f"{LOOPBACK}:{self.acme_port}", f"{LOOPBACK}:{self.management_port}",
                                             self.cert_file, self.key_file, http_port, tls_port=free_port()))
        self.dns_process: subprocess.Popen | None = None
        self.process: subprocess.Popen | None = None
        self._ssl_context = ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{LOOPBACK}:{self.management_port}"

    def _log(self, name: str):
        return (self.workdir / name).open("wb")

    def start(self) -> Pebble:
        try:
            self._start_dns()
            self._start_pebble()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_dns(self) -> None:
        with self._log("challtestsrv.log") as log:
            self.dns_process = subprocess.Popen(
                challtestsrv_argv(self.challtestsrv, LOOPBACK, self.dns_port, self.challtestsrv_management_port,
                                  self.resolve_to),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 10
        while True:
            if self.dns_process.poll() is not None:
                raise RuntimeError(f"pebble-challtestsrv exited: {self.read_log('challtestsrv.log')}")
            try:
                if dns_query_a((LOOPBACK, self.dns_port), "git.example.com") == [self.resolve_to]:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"pebble-challtestsrv DNS did not answer: {self.read_log('challtestsrv.log')}")
            time.sleep(0.05)

    def _start_pebble(self) -> None:
        env = {**os.environ, **PEBBLE_ENVIRONMENT}
        with self._log("pebble.log") as log:
            self.process = subprocess.Popen(
                pebble_argv(self.pebble, self.config, f"{LOOPBACK}:{self.dns_port}"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        wait_for_port(self.acme_port, timeout=10)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited: {self.read_log('pebble.log')}")
            try:
                directory = json.loads(self._get(self.directory_url))
                if "newOrder" in directory:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"pebble's directory did not answer: {self.read_log('pebble.log')}")
            time.sleep(0.05)

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._ssl_context, timeout=5) as response:
            return response.read()

    def root_pem(self, index: int = 0) -> bytes:
        """The root that signs pebble's issuing intermediate (regenerated on every pebble start)."""
        return self._get(f"{self.management_url}/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> bytes:
        return self._get(f"{self.management_url}/intermediates/{index}")

    def authorizations_created(self) -> int:
        """How many authorizations pebble has made so far (each one means an HTTP-01 validation),
        from its log line "There are now N authorizations in the db"."""
        counts = re.findall(r"There are now (\d+) authorizations in the db", self.read_log())
        return int(counts[-1]) if counts else 0

    def read_log(self, name: str = "pebble.log") -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in (self.process, self.dns_process):
            stop_process(process)

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
