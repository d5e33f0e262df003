"""Container memory limits that fit the instance (pure).

EC2 memory follows a pattern: a general-purpose `medium` has 4 GiB and each size step doubles it;
compute-optimised families have half as much, memory-optimised twice. The estimate only sets caps
so one runaway service cannot starve the others; it never reserves memory.
"""

from __future__ import annotations

import re

_SIZE_GIB = {"nano": 0.5, "micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16}
_FAMILY_FACTOR = {"c": 0.5, "r": 2, "x": 4, "z": 2}
# Left to the kernel, sshd, dockerd and the page cache PostgreSQL relies on.
HOST_RESERVE_MIB = 768
# Share of the rest each service may grow to; small fixed caps for the small services.
SHARES = {"gitea": 0.45, "postgres": 0.35}
FIXED_MIB = {"nginx": 256, "certbot": 256, "diun": 128}


def instance_memory_mib(instance_type: str) -> int:
    family, size = instance_type.split(".", 1)
    match = re.fullmatch(r"(\d*)xlarge", size)
    if size in _SIZE_GIB:
        gib = _SIZE_GIB[size]
    elif match:
        gib = 16 * int(match[1] or 1)
    else:  # metal sizes: at least as large as the biggest virtual size we know of
        gib = 16 * 24
    if not family.startswith("t"):
        gib *= _FAMILY_FACTOR.get(family[0], 1)
    return int(gib * 1024)


def memory_limits_mib(instance_type: str) -> dict[str, int]:
    available = max(instance_memory_mib(instance_type) - HOST_RESERVE_MIB, 512)
    limits = {service: max(int(available * share), 256) for service, share in SHARES.items()}
    return {**limits, **FIXED_MIB}
