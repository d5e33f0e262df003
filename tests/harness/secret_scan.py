"""Finds secret values wherever a value travels in plaintext, also in altered form.

A secret counts as found when it appears raw, hex-encoded (either case), base64- or urlsafe-base64-
encoded (at any byte alignment, so also when it sits inside a larger encoded text, and across the
line breaks of wrapped base64), in any string of a nested structure (dict keys included). Payloads are
opened on the way: a string that is base64 (as a whole, or as a long run inside a command line) is
decoded, gzip is decompressed, a tar archive is unpacked and every member is scanned the same way.

`scan(value, secrets)` returns a `Scan`: the findings (where, which secret, in what form) and every
place it read, so a test can prove that the payloads it expects were really opened.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 4  # payload inside payload inside ...: deeper than anything the program sends
# A run this long of base64 characters inside a larger string is decoded and scanned on its own
# (an inline payload in a command line, say).
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")
_WHITESPACE = re.compile(r"\s+")
_WRAPPED_BASE64 = re.compile(r"[A-Za-z0-9+/_=\r\n-]+")


@dataclass(frozen=True)
class Finding:
    where: str   # e.g. "provision-copy-bundle.stdin | base64 | gzip | tar:scripts/deploy.sh"
    secret: str
    form: str    # raw, hex, base64, urlsafe-base64


@dataclass
class Scan:
    findings: list[Finding] = field(default_factory=list)
    read: list[str] = field(default_factory=list)  # every place whose text was searched

    def places(self) -> set[str]:
        return {finding.where for finding in self.findings}


def _base64_cores(data: bytes, encode) -> set[str]:
    """The characters of encode(prefix + data) that depend on `data` alone, for the 3 byte alignments."""
    cores = set()
    for offset in range(3):
        encoded = encode(b"\0" * offset + data).decode()
        start = -(-8 * offset // 6)               # first character made of data bits only
        end = (8 * (offset + len(data))) // 6     # past the last one
        core = encoded[start:end]
        if len(core) >= 8:
            cores.add(core)
    return cores


def encoded_forms(secret: str) -> dict[str, set[str]]:
    """Form name -> the strings whose presence means the secret is there in that form."""
    data = secret.encode()
    return {
        "raw": {secret},
        "hex": {data.hex(), data.hex().upper()},
        "base64": _base64_cores(data, base64.b64encode),
        "urlsafe-base64": _base64_cores(data, base64.urlsafe_b64encode),
    }


def _decode_base64(text: str) -> bytes | None:
    compact = _WHITESPACE.sub("", text)
    if len(compact) < 16:
        return None
    padded = compact + "=" * (-len(compact) % 4)
    for alphabet in (b"+/", b"-_"):  # standard, then urlsafe; validate: no character silently dropped
        try:
            return base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


def _as_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class _Scanner:
    def __init__(self, secrets: Iterable[str]):
        self.forms = {secret: encoded_forms(secret) for secret in secrets}
        if not self.forms:
            raise ValueError("nothing to look for: no secrets given")
        self.result = Scan()

    def search(self, text: str, where: str) -> None:
        self.result.read.append(where)
        compact = _WHITESPACE.sub("", text)
        for secret, forms in self.forms.items():
            for form, needles in forms.items():
                if any(needle in text or needle in compact for needle in needles):
                    self.result.findings.append(Finding(where, secret, form))

    def text(self, text: str, where: str, depth: int) -> None:
        self.search(text, where)
        if depth >= MAX_DEPTH:
            return
        # Base64 as a whole (wrapped at any width), or runs of it inside other text.
        whole = _decode_base64(text) if _WRAPPED_BASE64.fullmatch(text) else None
        if whole is not None:
            self.payload(whole, f"{where} | base64", depth + 1)
            return
        for run in _BASE64_RUN.findall(text):
            decoded = _decode_base64(run)
            if decoded is not None:
                self.payload(decoded, f"{where} | base64 run", depth + 1)

    def payload(self, data: bytes, where: str, depth: int) -> None:
        if data[:2] == b"\x1f\x8b":
            try:
                data, where = gzip.decompress(data), f"{where} | gzip"
            except (OSError, EOFError, zlib.error):
                pass
        if len(data) >= 512 and data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                for member in archive.getmembers():
                    self.search(member.name, f"{where} | tar name")
                    if member.isfile():
                        content = archive.extractfile(member).read()
                        self.payload(content, f"{where} | tar:{member.name}", depth + 1)
            return
        self.text(_as_text(data), where, depth)

    def walk(self, value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                self.walk(str(key), f"{where}.<key>")
                self.walk(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple, set, frozenset)):
            for index, item in enumerate(value):
                self.walk(item, f"{where}[{index}]")
        elif isinstance(value, bytes):
            self.payload(value, where, 0)
        elif isinstance(value, str):
            self.text(value, where, 0)
        elif value is not None:
            self.search(str(value), where)


def scan(value: Any, secrets: Iterable[str], where: str = "") -> Scan:
    """Every place in `value` (nested dicts, lists, strings, payloads) where one of `secrets` stands."""
    scanner = _Scanner(secrets)
    scanner.walk(value, where)
    return scanner.result
