"""What the instance type really is, as AWS describes it, and container memory limits that fit it (pure).

The program asks AWS (`ec2.get_instance_type`) for the type's memory and CPU architectures;
`instance_facts` turns that answer into `InstanceFacts`, refusing types too small for the forge.
The limits only set caps so one runaway service cannot starve the others; they never reserve memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Below this, PostgreSQL, Gitea and the rest do not fit next to the kernel and dockerd.
MIN_MEMORY_MIB = 2048
# Left to the kernel, sshd, dockerd and the page cache PostgreSQL relies on.
HOST_RESERVE_MIB = 768
# Share of the rest each service may grow to; small fixed caps for the small services.
SHARES = {"gitea": 0.45, "postgres": 0.35}
FIXED_MIB = {"nginx": 256, "certbot": 256, "diun": 128, "docker-socket-proxy": 64,
             # The observability plane: caps well above what each was measured to use
             # (docs/monitoring.md, "Budget"), small enough that the plane cannot starve the forge.
             "prometheus": 512, "alertmanager": 64, "node-exporter": 64, "postgres-exporter": 64,
             "blackbox-exporter": 64, "cadvisor": 192, "grafana": 384, "loki": 512, "alloy": 256}


class InstanceTypeError(ValueError):
    """The instance type cannot run the forge; the message says why and what was expected."""


@dataclass(frozen=True)
class InstanceFacts:
    """The instance type as AWS describes it."""
    instance_type: str
    memory_mib: int
    architecture: str  # as EC2 names it: "x86_64" or "arm64"


def host_architecture(supported_architectures: Iterable[str]) -> str | None:
    """The architecture the host runs, of those AWS lists for a type; None if Ubuntu has no image for it."""
    architectures = set(supported_architectures)
    # Graviton types list arm64 only; x86 types list x86_64 (some also i386).
    return "arm64" if "arm64" in architectures else "x86_64" if "x86_64" in architectures else None


def instance_facts(instance_type: str, memory_mib: int, supported_architectures: Iterable[str]) -> InstanceFacts:
    """InstanceFacts from AWS's description of a type; InstanceTypeError if the forge cannot run on it."""
    architectures = set(supported_architectures)
    architecture = host_architecture(architectures)
    if architecture is None:
        raise InstanceTypeError(
            f"{instance_type} runs {', '.join(sorted(architectures)) or 'no listed architecture'}; expected an "
            "instance type for x86_64 or arm64 (Ubuntu 24.04 images exist for those)")
    if memory_mib < MIN_MEMORY_MIB:
        raise InstanceTypeError(
            f"{instance_type} has {memory_mib} MiB of memory; expected at least {MIN_MEMORY_MIB} MiB "
            "(PostgreSQL, Gitea, nginx and the host need it), such as t3.small or t4g.small")
    return InstanceFacts(instance_type, int(memory_mib), architecture)


def memory_limits_mib(memory_mib: int) -> dict[str, int]:
    available = max(memory_mib - HOST_RESERVE_MIB, 512)
    limits = {service: max(int(available * share), 256) for service, share in SHARES.items()}
    return {**limits, **FIXED_MIB}
