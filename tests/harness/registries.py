"""Stand-ins on loopback for what preflight asks over HTTP: an image registry (Docker Registry HTTP
API v2 with anonymous Bearer tokens) and Docker's apt repository.

Each is an `http.server` on 127.0.0.1 at a free port, used as a context manager: the server starts
on enter and is shut down and closed on exit. Both record the requests they received.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

LOOPBACK = "127.0.0.1"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
                      DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json"}


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]


class LoopbackServer:
    """An HTTP server on 127.0.0.1 for the length of a `with` block; subclasses answer `answer_get`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the server runs only inside its `with` block"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def answer_get(self, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for the GET handler
                headers = {name.lower(): value for name, value in self.headers.items()}
                owner.requests.append(Request(self.path, headers))
                status, response_headers, body = owner.answer_get(self.path, headers)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **response_headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # quiet: the tests assert on `requests`

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._server = None


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def _errors(code: str, message: str) -> bytes:
    return _json({"errors": [{"code": code, "message": message}]})


class StandInRegistry(LoopbackServer):
    """Answers the v2 manifest and blob API only to a Bearer token from its own token endpoint,
    as Docker Hub does for anonymous pulls. Blob downloads redirect to a `/storage/` URL that,
    like a pre-signed S3 URL, refuses a request that also carries an Authorization header.

    `token_field` is the key the token endpoint answers with (`token` or `access_token`); repositories
    in `private` get 401 even with a token, as Docker Hub answers for private or unknown repositories.
    """

    SERVICE = "stand-in-registry"
    _API_PATH = re.compile(r"^/v2/(?P<repository>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$")

    def __init__(self, token_field: str = "token", private: Iterable[str] = ()) -> None:
        super().__init__()
        self.token_field = token_field
        self.private = set(private)
        self.token = secrets.token_hex(16)
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}

    def reference(self, repository: str, tag_or_digest: str) -> str:
        """An image reference that points at this registry."""
        separator = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{separator}{tag_or_digest}"

    def _store_manifest(self, repository: str, tag: str, media_type: str, document: dict) -> str:
        content = _json(document)
        digest = _digest(content)
        self.manifests[(repository, tag)] = self.manifests[(repository, digest)] = (media_type, content)
        return digest

    def _single_manifest(self, architecture: str, os_name: str, media_type: str) -> dict:
        config = _json({"architecture": architecture, "os": os_name, "rootfs": {"type": "layers", "diff_ids": []}})
        self.blobs[_digest(config)] = config
        return {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": CONFIG_MEDIA_TYPES[media_type], "digest": _digest(config), "size": len(config)},
                "layers": []}

    def add_image(self, repository: str, tag: str, architecture: str, os_name: str = "linux",
                  media_type: str = DOCKER_MANIFEST) -> str:
        """A single-platform image (manifest and config blob); returns the manifest digest."""
        return self._store_manifest(repository, tag, media_type, self._single_manifest(architecture, os_name, media_type))

    def add_index(self, repository: str, tag: str, platforms: Iterable[str], media_type: str = OCI_INDEX,
                  attestations: bool = True) -> str:
        """A multi-platform index of `os/architecture` images; with `attestations`, BuildKit-style
        unknown/unknown entries as Docker Hub serves them. Returns the index digest."""
        child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
        entries = []
        for platform in platforms:
            os_name, architecture, *variant = platform.split("/")
            child = self._single_manifest(architecture, os_name, child_type)
            digest = self._store_manifest(repository, f"child-{os_name}-{architecture}", child_type, child)
            entries.append({"mediaType": child_type, "digest": digest, "size": len(_json(child)),
                            "platform": {"os": os_name, "architecture": architecture,
                                         **({"variant": variant[0]} if variant else {})}})
            if attestations:
                entries.append({"mediaType": child_type, "digest": digest, "size": 1,
                                "platform": {"os": "unknown", "architecture": "unknown"},
                                "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
        return self._store_manifest(repository, tag, media_type,
                                    {"schemaVersion": 2, "mediaType": media_type, "manifests": entries})

    def token_requests(self) -> list[dict[str, str]]:
        return [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.path).query))
                for request in self.requests if request.path.startswith("/token")]

    def answer_get(self, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(path)
        if parts.path == "/token":
            scope = dict(urllib.parse.parse_qsl(parts.query)).get("scope", "")
            if not re.fullmatch(r"repository:[^:]+:pull", scope):
                return 400, {}, _errors("INVALID_SCOPE", f"expected repository:<name>:pull, got {scope!r}")
            return 200, {"Content-Type": "application/json"}, _json({self.token_field: self.token})
        if parts.path.startswith("/storage/"):
            if "authorization" in headers:
                return 400, {}, b"only one auth mechanism allowed"
            blob = self.blobs.get(parts.path.removeprefix("/storage/"))
            return (200, {}, blob) if blob is not None else (404, {}, b"")
        match = self._API_PATH.match(parts.path)
        if not match:
            return 404, {}, _errors("NAME_UNKNOWN", "not an API path")
        repository, kind, reference = match["repository"], match["kind"], match["reference"]
        if headers.get("authorization") != f"Bearer {self.token}" or repository in self.private:
            challenge = (f'Bearer realm="http://{self.host}/token",service="{self.SERVICE}",'
                         f'scope="repository:{repository}:pull"')
            return 401, {"WWW-Authenticate": challenge}, _errors("UNAUTHORIZED", "authentication required")
        if kind == "blobs":
            if reference not in self.blobs:
                return 404, {}, _errors("BLOB_UNKNOWN", "blob unknown")
            return 307, {"Location": f"http://{self.host}/storage/{reference}?X-Amz-Signature=stand-in"}, b""
        stored = self.manifests.get((repository, reference))
        if stored is None:
            return 404, {}, _errors("MANIFEST_UNKNOWN", "manifest unknown")
        media_type, content = stored
        # Like a real registry, a manifest is served only in a media type the client accepts.
        if media_type not in headers.get("accept", ""):
            return 404, {}, _errors("MANIFEST_UNKNOWN", f"no manifest in an accepted type ({media_type})")
        return 200, {"Content-Type": media_type, "Docker-Content-Digest": _digest(content)}, content


def packages_file(packages: Mapping[str, Iterable[str]], architecture: str) -> str:
    """An apt Packages file listing each version of each package, with multi-line fields as Docker's has."""
    stanzas = []
    for package, versions in packages.items():
        for version in versions:
            stanzas.append(f"Package: {package}\nVersion: {version}\nArchitecture: {architecture}\n"
                           f"Filename: pool/stable/{architecture}/{package}_{version}_{architecture}.deb\n"
                           f"Description: {package} stand-in\n a continuation line: Version: 0.0.0\n")
    return "\n".join(stanzas)


class StandInAptRepository(LoopbackServer):
    """Serves `dists/<codename>/stable/binary-<arch>/Packages[.gz]` files under /linux/ubuntu."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}/linux/ubuntu"

    def add_packages(self, architecture: str, packages: Mapping[str, Iterable[str]], compressed: bool = True,
                     codename: str = "noble") -> None:
        text = packages_file(packages, architecture).encode()
        directory = f"/linux/ubuntu/dists/{codename}/stable/binary-{architecture}"
        if compressed:
            self.files[f"{directory}/Packages.gz"] = gzip.compress(text)
        else:
            self.files[f"{directory}/Packages"] = text

    def answer_get(self, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        content = self.files.get(urllib.parse.urlsplit(path).path)
        return (200, {}, content) if content is not None else (404, {}, b"not found")
