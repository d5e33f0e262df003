"""The end-to-end tier's container images, built here from Debian trixie: no registry needed.

`build_images(docker_host, cache_dir, extra_ca_pem)` returns {service: image reference} for
postgres, nginx, certbot, gitea, diun, docker-socket-proxy and the observability plane (prometheus,
alertmanager, node-exporter, postgres-exporter, blackbox-exporter, cadvisor, grafana, loki, alloy), e.g. `gitea-stack-testbed/gitea:1.27.3-rootless-<hash>`.
Each reference passes `gitea_stack.settings.parse_image_reference` (an exact tag, never latest).

Two steps, both cached, from the files in tests/e2e/images/<service>/:

1. One shared root filesystem: a single `mmdebstrap --variant=apt trixie` installs the Debian
   packages of every service (their `packages` files), runs their `essential-hook.sh` (before the
   packages: users with fixed ids) and `customize-hook.sh` (after them) and leaves out their
   `path-excludes`. The tarball is cached in `cache_dir/rootfs/`, named by a hash of all those
   inputs, and `docker import`ed as `gitea-stack-testbed/base:trixie-<hash>`. A new dockerd data
   root only imports it again: nothing is downloaded.
2. One image per service: `docker build` of its Dockerfile `FROM` that base, without network (it
   copies the service's files and sets user, entrypoint and command), tagged with a hash of the
   base's inputs, every file of the service directory and, for certbot, the extra CA certificates.
   A change to a stand-in's script or to the CA builds that image again in seconds.

One base for all is about twice as fast as one mmdebstrap per image (the essential set and
python3 are installed once, the dockerd stores the packages once), and the builds need no
network, so they work in a dockerd without any. The images carry each other's packages, which
no test can notice. An image whose tag is present in that dockerd is not built at all. Builds
hold a lock in `cache_dir`, so concurrent sessions share the cache without racing. Timings are
printed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parents[1] / "e2e" / "images"
COMMON_DIR = IMAGES_DIR / "common"
REPOSITORY = "gitea-stack-testbed"
SERVICES = ("postgres", "nginx", "certbot", "gitea", "diun", "docker-socket-proxy",
            "prometheus", "alertmanager", "node-exporter", "postgres-exporter", "blackbox-exporter",
            "cadvisor", "grafana", "loki", "alloy")
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
# The version each image stands for starts its tag; a hash of its inputs ends it.
TAG_PREFIXES = {
    "postgres": "17-trixie",        # trixie's PostgreSQL 17, laid out as the official 17 images
    "nginx": "1.26-trixie",
    "certbot": "4.0-trixie",
    "gitea": "1.27.3-rootless",     # the stand-in answers /api/v1/version with 1.27.3
    "diun": "4.33.0",
    "docker-socket-proxy": "3.0-trixie",  # trixie's HAProxy 3.0 standing in for haproxy:3.2-alpine
    # The observability plane: trixie's packages (their upstream major.minor), and stand-ins
    # named after the upstream version they answer with.
    "prometheus": "2.53-trixie",
    "alertmanager": "0.28-trixie",
    "node-exporter": "1.9-trixie",
    "postgres-exporter": "0.17-trixie",
    "blackbox-exporter": "0.26-trixie",
    "cadvisor": "v0.60.5",
    "grafana": "13.2.0",
    "loki": "3.7.8",
    "alloy": "v1.19.2",
}
# Services whose image trusts the extra CA (the ACME test server's TLS CA).
# alertmanager: the SES-like SMTP server of the e2e tests has a certificate from that CA too.
EXTRA_CA_SERVICES = frozenset({"certbot", "alertmanager"})
# Bump to rebuild everything when this module's way of building changes.
RECIPE_VERSION = "1"
MMDEBSTRAP_OPTIONS = (
    "--variant=apt",
    "--format=tar",
    # No documentation, manual pages or translations: a smaller tarball, a faster import.
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    '--aptopt=Acquire::Languages "none"',
)
ROOTFS_INPUTS = ("packages", "essential-hook.sh", "customize-hook.sh", "path-excludes")
TARBALLS_KEPT = 2
IGNORED_FILES = re.compile(r"(^|/)(__pycache__|\.[^/]*\.swp|[^/]*~|\.#[^/]*|[^/]*\.pyc)(/|$)")
CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


class ImageBuildError(RuntimeError):
    """A step of the build failed; the message names the step and ends with its output."""


# --- what the images are made of, and their hashes ---

def service_dir(service: str) -> Path:
    return IMAGES_DIR / service


def _files(directory: Path) -> list[Path]:
    return [path for path in sorted(directory.rglob("*"))
            if path.is_file() and not IGNORED_FILES.search(path.relative_to(directory).as_posix())]


def _digest_files(digest, label: str, paths: list[Path], base: Path) -> None:
    for path in paths:
        content = path.read_bytes()
        digest.update(f"{label}/{path.relative_to(base).as_posix()}\0{len(content)}\0".encode())
        digest.update(content)


def _listed(path: Path) -> list[str]:
    """Lines of a list file, without comments and blank lines; [] when it does not exist."""
    if not path.exists():
        return []
    entries = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [entry for entry in entries if entry]


def packages(service: str) -> list[str]:
    return _listed(service_dir(service) / "packages")


def path_excludes(service: str) -> list[str]:
    return _listed(service_dir(service) / "path-excludes")


def _rootfs_files(service: str) -> list[Path]:
    return [service_dir(service) / name for name in ROOTFS_INPUTS if (service_dir(service) / name).exists()]


def rootfs_key(suite: str = SUITE, services: tuple[str, ...] = SERVICES) -> str:
    """Hash of everything the shared root filesystem is made of."""
    digest = hashlib.sha256(f"recipe {RECIPE_VERSION}\0{suite}\0{MIRROR}\0".encode())
    digest.update("\0".join(MMDEBSTRAP_OPTIONS).encode())
    _digest_files(digest, "common", _files(COMMON_DIR), COMMON_DIR)
    for service in services:
        _digest_files(digest, service, _rootfs_files(service), service_dir(service))
    return digest.hexdigest()


def extra_ca_certificates(extra_ca_pem: str) -> list[str]:
    """The PEM certificates in `extra_ca_pem`, normalised; ValueError if it holds text but none."""
    bodies = ["\n".join(re.findall(r".{1,64}", re.sub(r"\s+", "", body)))
              for body in CERTIFICATE.findall(extra_ca_pem or "")]
    if (extra_ca_pem or "").strip() and not bodies:
        raise ValueError("extra_ca_pem holds no PEM certificate (-----BEGIN CERTIFICATE----- ...)")
    return [f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n" for body in bodies]


@dataclass(frozen=True)
class Plan:
    service: str
    rootfs_key: str
    image_key: str

    @property
    def reference(self) -> str:
        return f"{REPOSITORY}/{self.service}:{TAG_PREFIXES[self.service]}-{self.image_key[:12]}"


def base_reference(key: str, suite: str = SUITE) -> str:
    return f"{REPOSITORY}/base:{suite}-{key[:12]}"


def base_tarball(cache_dir: Path, key: str, suite: str = SUITE) -> Path:
    return Path(cache_dir) / "rootfs" / f"base-{suite}-{key[:16]}.tar"


def plan(service: str, extra_ca_pem: str = "", key: str | None = None) -> Plan:
    if service not in TAG_PREFIXES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    key = key or rootfs_key()
    digest = hashlib.sha256(f"rootfs {key}\0".encode())
    _digest_files(digest, service, _files(service_dir(service)), service_dir(service))
    if service in EXTRA_CA_SERVICES:
        for certificate in extra_ca_certificates(extra_ca_pem):
            digest.update(b"extra-ca\0" + certificate.encode())
    return Plan(service, key, digest.hexdigest())


def image_references(extra_ca_pem: str = "") -> dict[str, str]:
    """The references build_images returns for this CA, computed without building or docker."""
    key = rootfs_key()
    return {service: plan(service, extra_ca_pem, key).reference for service in SERVICES}


# --- running docker and mmdebstrap ---

def docker_host_url(docker_host: str) -> str:
    """`unix:///path` (or tcp://...) as given; a bare socket path becomes `unix://<path>`."""
    return f"unix://{docker_host}" if str(docker_host).startswith("/") else str(docker_host)


def _failure(what: str, command: list[str], returncode: int, output: str) -> ImageBuildError:
    tail = output.strip().splitlines()[-40:]
    return ImageBuildError(f"{what} failed (exit {returncode}): {shlex.join(command)}\n  " + "\n  ".join(tail))


class Docker:
    """The docker CLI, talking to one dockerd (DOCKER_HOST and DOCKER_CONTEXT are ignored)."""

    def __init__(self, docker_host: str):
        docker = shutil.which("docker")
        if docker is None:
            raise ImageBuildError("building the testbed images needs `docker` (Debian package docker.io)")
        self.docker = docker
        self.host = docker_host_url(docker_host)
        self.env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
        self.env["DOCKER_BUILDKIT"] = "0"  # the classic builder: FROM a local image, no frontend to pull

    def command(self, *args: str) -> list[str]:
        return [self.docker, "--host", self.host, *args]

    def run(self, *args: str, what: str) -> str:
        command = self.command(*args)
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise _failure(what, command, result.returncode, result.stdout + result.stderr)
        return result.stdout

    def image_exists(self, reference: str) -> bool:
        result = subprocess.run(self.command("image", "inspect", "--format", "{{.Id}}", reference),
                                capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL)
        return result.returncode == 0


def mmdebstrap_command(target: Path, suite: str = SUITE, services: tuple[str, ...] = SERVICES) -> list[str]:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageBuildError("building the testbed images needs `mmdebstrap` (Debian package mmdebstrap)")
    command = [mmdebstrap, *MMDEBSTRAP_OPTIONS]
    for service in services:
        command += [f"--dpkgopt=path-exclude={pattern}" for pattern in path_excludes(service)]
    names = sorted({name for service in services for name in packages(service)})
    command.append(f"--include={','.join(names)}")
    for stage in ("essential", "customize"):
        for service in services:
            hook = service_dir(service) / f"{stage}-hook.sh"
            if hook.exists():
                command.append(f'--{stage}-hook=sh {shlex.quote(str(hook))} "$1" {shlex.quote(str(COMMON_DIR))}')
    return command + [suite, str(target), MIRROR]


def _make_tarball(cache_dir: Path, key: str, suite: str = SUITE,
                  services: tuple[str, ...] = SERVICES) -> tuple[Path, float | None]:
    """The base tarball, from the cache or made now; (path, seconds mmdebstrap took or None)."""
    tarball = base_tarball(cache_dir, key, suite)
    if tarball.exists():
        os.utime(tarball)  # recently used: kept by the pruning below
        return tarball, None
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
    log_file = Path(cache_dir) / "logs" / f"mmdebstrap-{suite}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = mmdebstrap_command(partial, suite, services)
    started = time.monotonic()
    try:
        with log_file.open("w") as log:
            log.write(shlex.join(command) + "\n")
            log.flush()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise _failure(f"mmdebstrap (log {log_file})", command[:1] + [f"... {suite}"], result.returncode,
                           log_file.read_text())
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
    old = sorted(tarball.parent.glob(f"base-{suite}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[TARBALLS_KEPT:]:
        stale.unlink(missing_ok=True)
    return tarball, time.monotonic() - started


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _log(message: str) -> None:
    print(f"testbed_images: {message}", flush=True)


def _build_context(service: str, extra_ca_pem: str, directory: Path) -> None:
    for path in _files(service_dir(service)):
        if path.name in ROOTFS_INPUTS:
            continue
        target = directory / path.relative_to(service_dir(service))
        target.parent.mkdir(parents=True, exist_ok=True)
        content = path.read_bytes()
        target.write_bytes(content)
        target.chmod(0o755 if content.startswith(b"#!") else 0o644)
    if service in EXTRA_CA_SERVICES:
        ca_dir = directory / "extra-ca"
        ca_dir.mkdir()
        for index, certificate in enumerate(extra_ca_certificates(extra_ca_pem)):
            (ca_dir / f"gitea-stack-testbed-{index}.crt").write_text(certificate)


def _build(docker: Docker, plan_: Plan, extra_ca_pem: str) -> float:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"testbed-image-{plan_.service}-") as context:
        _build_context(plan_.service, extra_ca_pem, Path(context))
        docker.run("build", "--network", "none", "--rm", "--force-rm",
                   "--build-arg", f"ROOTFS={base_reference(plan_.rootfs_key)}",
                   "--label", f"org.gitea-stack.testbed.service={plan_.service}",
                   "--label", f"org.gitea-stack.testbed.inputs={plan_.image_key}",
                   "--tag", plan_.reference, context, what=f"docker build of {plan_.reference}")
    return time.monotonic() - started


def build_images(docker_host: str, cache_dir: Path, extra_ca_pem: str) -> dict[str, str]:
    """Builds (or finds) the testbed's images in the dockerd at `docker_host`; service -> reference.

    docker_host: `unix:///path/to/docker.sock` or a bare socket path.
    cache_dir: keeps the base tarball (rootfs/) and the last mmdebstrap log (logs/) between runs.
    extra_ca_pem: PEM certificate(s) the certbot image trusts in its system store ("" for none).
    Raises ImageBuildError naming the failed step (or a missing `docker` / `mmdebstrap`).
    """
    started = time.monotonic()
    cache_dir = Path(cache_dir)
    docker = Docker(docker_host)
    key = rootfs_key()
    plans = [plan(service, extra_ca_pem, key) for service in SERVICES]
    references = {p.service: p.reference for p in plans}
    if all(docker.image_exists(p.reference) for p in plans):
        _log(f"all {len(plans)} images present in {docker.host} ({time.monotonic() - started:.1f}s)")
        return references

    with _locked(cache_dir):
        missing = [p for p in plans if not docker.image_exists(p.reference)]
        base = base_reference(key)
        if missing and not docker.image_exists(base):
            tarball, seconds = _make_tarball(cache_dir, key)
            size = tarball.stat().st_size / 2**20
            _log(f"base rootfs {tarball.name} ({size:.0f} MiB): "
                 + (f"mmdebstrap {seconds:.1f}s" if seconds is not None else "cached"))
            imported = time.monotonic()
            docker.run("image", "import", "--message", f"mmdebstrap {SUITE}: {', '.join(SERVICES)}",
                       str(tarball), base, what=f"docker import of {tarball}")
            _log(f"{base}: imported in {time.monotonic() - imported:.1f}s")
        if missing:
            with ThreadPoolExecutor(max_workers=len(missing)) as pool:
                seconds = list(pool.map(lambda p: _build(docker, p, extra_ca_pem), missing))
            for p, took in zip(missing, seconds):
                _log(f"{p.reference}: built in {took:.1f}s")
    _log(f"{len(missing)} of {len(plans)} images built in {time.monotonic() - started:.1f}s "
         f"(cache {cache_dir}, docker {docker.host})")
    return references


# The postgres stand-in once more, from Debian bookworm: PostgreSQL 15, the major before trixie's 17,
# so that a major upgrade is tested between two real majors. Same files, same contract.
OLDER_POSTGRES_SUITE = "bookworm"
OLDER_POSTGRES_MAJOR = 15


def build_older_postgres_image(docker_host: str, cache_dir: Path) -> str:
    """Builds (or finds) the bookworm postgres image (PostgreSQL 15); returns its reference."""
    started = time.monotonic()
    docker = Docker(docker_host)
    suite, services = OLDER_POSTGRES_SUITE, ("postgres",)
    key = rootfs_key(suite, services)
    digest = hashlib.sha256(f"rootfs {key}\0".encode())
    _digest_files(digest, "postgres", _files(service_dir("postgres")), service_dir("postgres"))
    reference = f"{REPOSITORY}/postgres:{OLDER_POSTGRES_MAJOR}-{suite}-{digest.hexdigest()[:12]}"
    if docker.image_exists(reference):
        return reference
    with _locked(Path(cache_dir)):
        base = base_reference(key, suite)
        if not docker.image_exists(base):
            tarball, seconds = _make_tarball(Path(cache_dir), key, suite, services)
            _log(f"{suite} rootfs {tarball.name}: " + (f"mmdebstrap {seconds:.1f}s" if seconds is not None else "cached"))
            docker.run("image", "import", "--message", f"mmdebstrap {suite}: postgres", str(tarball), base,
                       what=f"docker import of {tarball}")
        with tempfile.TemporaryDirectory(prefix="testbed-image-postgres-older-") as context:
            _build_context("postgres", "", Path(context))
            docker.run("build", "--network", "none", "--rm", "--force-rm", "--build-arg", f"ROOTFS={base}",
                       "--label", "org.gitea-stack.testbed.service=postgres", "--tag", reference, context,
                       what=f"docker build of {reference}")
    _log(f"{reference}: ready in {time.monotonic() - started:.1f}s")
    return reference


def remove_stale_images(docker_host: str, references: dict[str, str]) -> list[str]:
    """Removes this module's images other than `references` and their base from a long-lived
    dockerd (earlier recipes, earlier CAs); returns what was removed. Images in use stay."""
    docker = Docker(docker_host)
    keep = set(references.values()) | {base_reference(rootfs_key())}
    listed = docker.run("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{REPOSITORY}/*",
                        what="docker image ls").split()
    removed = []
    for reference in sorted(set(listed) - keep):
        result = subprocess.run(docker.command("image", "rm", reference), capture_output=True, text=True,
                                env=docker.env, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            removed.append(reference)
    if removed:
        _log(f"removed {len(removed)} stale images: {', '.join(removed)}")
    return removed
