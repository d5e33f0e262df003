"""Which changes to a running stack are safe, and what an adopting stack may take over (pure).

The Pulumi edge (`existing.py`) asks AWS what the stack already has; these functions decide, and
return a message that names the setting and says what to do, or None when the change is fine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gitea_stack.settings import qualified


@dataclass(frozen=True)
class VolumeFacts:
    volume_id: str
    availability_zone: str
    size_gib: int
    encrypted: bool


def volume_shrink_problem(current: VolumeFacts | None, requested_gib: int) -> str | None:
    """EBS volumes only grow; a smaller size would fail in EC2 after other changes were made."""
    if current is None or requested_gib >= current.size_gib:
        return None
    return (f"{qualified('dataVolumeGiB')}: expected {current.size_gib} or more, got {requested_gib}; the data volume "
            f"{current.volume_id} holds {current.size_gib} GiB and EBS volumes cannot shrink. To use less space, "
            "restore into a new, smaller stack from backups instead")


def architecture_change_problem(current_type: str | None, current_architectures: Iterable[str],
                                requested_type: str, requested_architecture: str) -> str | None:
    """The host keeps the image it was built from, so its type must stay on the same architecture."""
    architectures = tuple(current_architectures)
    if current_type is None or requested_architecture in architectures:
        return None
    return (f"{qualified('instanceType')}: expected a type for {'/'.join(architectures)} like the running "
            f"{current_type}, got {requested_type} ({requested_architecture}); the host's operating system image is "
            "built for one architecture and a running forge is never rebuilt implicitly. To move to "
            f"{requested_architecture}, rebuild it deliberately: pulumi destroy (the data volume, bucket and secrets "
            f"are kept while {qualified('retainDataOnDestroy')} is true), then set {qualified('adopt')} to them "
            "(see the README, \"Bring a destroyed forge back\") with the new instanceType, and pulumi up")


def adopted_volume_problems(volume: VolumeFacts | None, volume_id: str, requested_gib: int,
                            offered_zones: Iterable[str]) -> list[str]:
    key = qualified("adopt")
    if volume is None:
        return [f"{key}: dataVolumeId {volume_id} is no volume of this account in this region; expected the id of "
                "the data volume a destroyed stack kept (its dataVolumeId output, or the volume named "
                "gitea-stack-<stack>-data in the EC2 console)"]
    problems = []
    if not volume.encrypted:
        problems.append(f"{key}: dataVolumeId {volume_id} is not encrypted; expected an encrypted volume "
                        "(copy a snapshot of it with encryption on and adopt the copy)")
    if volume.size_gib != requested_gib:
        problems.append(f"{qualified('dataVolumeGiB')}: expected {volume.size_gib}, the size of the adopted volume "
                        f"{volume_id}, got {requested_gib}; set it to {volume.size_gib} (grow it later like any "
                        "data volume)")
    if volume.availability_zone not in set(offered_zones):
        problems.append(f"{key}: dataVolumeId {volume_id} is in {volume.availability_zone}, where the instance type "
                        f"is not offered; expected a {qualified('instanceType')} sold in that zone")
    return problems


def kept_secret_names(names: Iterable[str], from_stack: str, keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Picks, per key, the secret a destroyed stack kept: `gitea-stack/<stack>/<key>-<suffix>`.

    Returns (key -> name, problems). A key with no kept secret or with several is a problem: adopting
    the wrong generation of secrets would lock the forge out of its own data.
    """
    chosen: dict[str, str] = {}
    problems = []
    available = sorted(set(names))
    for key in keys:
        pattern = re.compile(rf"^gitea-stack/{re.escape(from_stack)}/{re.escape(key)}-[0-9A-Za-z]+$")
        matches = [name for name in available if pattern.match(name)]
        if len(matches) == 1:
            chosen[key] = matches[0]
        elif not matches:
            problems.append(f"{qualified('adopt')}: secretsFromStack {from_stack!r} has no kept secret {key} "
                            f"(expected one named gitea-stack/{from_stack}/{key}-...; a secret scheduled for "
                            "deletion can be restored with aws secretsmanager restore-secret)")
        else:
            problems.append(f"{qualified('adopt')}: secretsFromStack {from_stack!r} has {len(matches)} kept secrets "
                            f"{key}: {', '.join(matches)}; expected one. Keep the generation that belongs to the "
                            "data and delete the others (aws secretsmanager delete-secret --secret-id NAME)")
    return chosen, problems


def adopted_bucket_problem(found_region: str | None, bucket: str, region: str) -> str | None:
    if found_region is None:
        return (f"{qualified('adopt')}: backupBucket {bucket} is no bucket of this account; expected the backup "
                "bucket a destroyed stack kept (its backupBucket output)")
    if found_region != region:
        return f"{qualified('adopt')}: backupBucket {bucket} is in {found_region}; expected a bucket in {region}"
    return None
