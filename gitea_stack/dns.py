"""DNS: the forge's name in the existing Route 53 zone."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from gitea_stack.settings import Settings

ADDRESS_TTL = 300


def find_zone_id(hosted_zone: str) -> str:
    """The id of the existing public hosted zone; fails the preview if there is none by that name."""
    return aws.route53.get_zone(name=hosted_zone, private_zone=False).zone_id


class ForgeDns(pulumi.ComponentResource):
    """An A record for `domain` pointing at the host's Elastic IP."""

    def __init__(self, name: str, settings: Settings, zone_id: pulumi.Input[str], address: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:dns:ForgeDns", name, None, opts)
        self.record = aws.route53.Record(
            f"{name}-a", zone_id=zone_id, name=settings.domain, type="A", ttl=ADDRESS_TTL, records=[address],
            opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"fqdn": self.record.fqdn})
