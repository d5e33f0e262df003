"""Can this machine reach the host's admin SSH port? `pulumi up` provisions over SSH from here.

The security group admits admin SSH from `sshAllowedCidrs` only, so an operator (or a CI runner)
outside them would otherwise wait out every SSH dial attempt before learning anything. This asks
an address echo service for the address the internet sees, before anything is created.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request

from gitea_stack.settings import qualified

# Where to learn this machine's public address. Another echo service (one that answers with the
# bare address), or "off" to skip the check, e.g. for a runner whose egress differs per request.
CHECK_URL_VARIABLE = "GITEA_STACK_CHECKIP_URL"
DEFAULT_CHECK_URL = "https://checkip.amazonaws.com/"
TIMEOUT_SECONDS = 5


def check_url() -> str | None:
    url = os.environ.get(CHECK_URL_VARIABLE, DEFAULT_CHECK_URL).strip()
    return None if url.lower() == "off" else url


def public_address(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[str | None, str | None]:
    """(address, None), or (None, why it could not be learned)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) URL from config
            text = response.read(100).decode("ascii", "replace").strip()
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, f"could not ask {url} for this machine's public address ({error})"
    try:
        return str(ipaddress.ip_address(text)), None
    except ValueError:
        return None, f"{url} answered {text[:40]!r}, not an IP address"


def outside_allowed_problem(address: str, allowed_cidrs: tuple[str, ...], admin_ssh_port: int) -> str | None:
    """A message when `address` is not admitted to admin SSH, else None."""
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(cidr) for cidr in allowed_cidrs):
        return None
    single = f"{address}/{32 if ip.version == 4 else 128}"
    return (f"{qualified('sshAllowedCidrs')}: this machine's public address {address} is not in "
            f"{', '.join(allowed_cidrs)}; pulumi up provisions the host over SSH (port {admin_ssh_port}) from here "
            f"and would wait minutes for a connection the security group drops. Add {single} (or your network's "
            "range) to sshAllowedCidrs, or run pulumi up from a machine inside them. If your traffic to AWS leaves "
            f"from another address than this check sees, set {CHECK_URL_VARIABLE}=off")
