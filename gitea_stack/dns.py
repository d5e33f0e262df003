"""DNS: the forge's name in the existing Route 53 zone."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gitea_stack.settings import Settings, qualified

ADDRESS_TTL = 300


@dataclass(frozen=True)
class Zone:
    zone_id: str
    name: str
    private: bool


def choose_zone(zones: list[Zone], hosted_zone: str) -> tuple[str | None, str | None]:
    """(zone id, None) for the one public zone named `hosted_zone`, else (None, what is wrong)."""
    named = [zone for zone in zones if zone.name.rstrip(".").lower() == hosted_zone]
    public = [zone for zone in named if not zone.private]
    if len(public) == 1:
        return public[0].zone_id, None
    key = qualified("hostedZone")
    if len(public) > 1:
        return None, (f"{key}: this account has {len(public)} public hosted zones named {hosted_zone} "
                      f"({', '.join(zone.zone_id for zone in public)}); expected one. Delete the one the domain "
                      "is not delegated to (compare its NS records with `dig +short NS " + hosted_zone + "`)")
    if named:
        return None, (f"{key}: {hosted_zone} is a private hosted zone here; expected a public one, which the "
                      "internet (Let's Encrypt, your users) can resolve")
    return None, (f"{key}: no public hosted zone named {hosted_zone} in this account; expected an existing zone "
                  f"delegated to Route 53 (create it with `aws route53 create-hosted-zone --name {hosted_zone} "
                  "--caller-reference $(date +%s)`, then set its four name servers at your registrar)")


def find_zone_id(hosted_zone: str) -> str:
    """The id of the existing public hosted zone, or a RunError naming `hostedZone`."""
    zones = []
    for zone_id in aws.route53.get_zones().ids:
        zone = aws.route53.get_zone(zone_id=zone_id)
        zones.append(Zone(zone_id, zone.name, bool(zone.private_zone)))
    chosen, problem = choose_zone(zones, hosted_zone)
    if problem:
        raise pulumi.RunError(problem)
    return chosen


class ForgeDns(pulumi.ComponentResource):
    """An A record for `domain` pointing at the host's Elastic IP."""

    def __init__(self, name: str, settings: Settings, zone_id: pulumi.Input[str], address: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:dns:ForgeDns", name, None, opts)
        self.record = aws.route53.Record(
            f"{name}-a", zone_id=zone_id, name=settings.domain, type="A", ttl=ADDRESS_TTL, records=[address],
            opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"fqdn": self.record.fqdn})
