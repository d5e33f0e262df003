"""Network: a VPC with one public subnet, and the host's security group with one rule per purpose."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gitea_stack.settings import Settings

VPC_CIDR = "10.42.0.0/16"
PUBLIC_SUBNET_CIDR = "10.42.0.0/24"
# The VPC is IPv4-only for now, so world-open rules are IPv4; admin CIDRs may be of either family.
ANYWHERE_IPV4 = "0.0.0.0/0"

# What the host itself needs outbound: package mirrors and ACME over HTTP(S), AWS APIs and image
# registries over HTTPS, SES SMTP on 587. DNS, NTP and instance metadata go to link-local AWS
# services that security groups do not filter.
EGRESS_TCP_PORTS = {80: "http", 443: "https", 587: "smtp-submission"}


@dataclass(frozen=True)
class IngressRule:
    """One ingress rule as plain data, so the rule set can be read and tested without Pulumi."""
    name: str
    port: int
    cidr: str
    description: str


def ingress_rules(settings: Settings) -> list[IngressRule]:
    """HTTP, HTTPS and git-over-SSH from anywhere; the admin sshd only from the allowed CIDRs."""
    rules = [
        IngressRule(purpose, port, ANYWHERE_IPV4, f"{purpose} from anywhere")
        for port, purpose in ((80, "http"), (443, "https"), (settings.git_ssh_port, "git-ssh"))
    ]
    for index, cidr in enumerate(settings.ssh_allowed_cidrs):
        rules.append(IngressRule(f"admin-ssh-{index}", settings.admin_ssh_port, cidr, f"admin ssh from {cidr}"))
    return rules


def _cidr_args(cidr: str) -> dict[str, str]:
    version = ipaddress.ip_network(cidr).version
    return {"cidr_ipv4": cidr} if version == 4 else {"cidr_ipv6": cidr}


class Network(pulumi.ComponentResource):
    """VPC, public subnet in `availability_zone`, internet gateway, routes and the host's security group."""

    def __init__(self, name: str, settings: Settings, availability_zone: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc", cidr_block=VPC_CIDR, enable_dns_hostnames=True, enable_dns_support=True,
            tags={**tags, "Name": f"{name}-vpc"}, opts=child)
        self.subnet = aws.ec2.Subnet(
            f"{name}-public", vpc_id=self.vpc.id, cidr_block=PUBLIC_SUBNET_CIDR,
            availability_zone=availability_zone,
            # The host gets an Elastic IP; nothing else should receive a public address by default.
            map_public_ip_on_launch=False,
            tags={**tags, "Name": f"{name}-public"},
            # The zone is picked from where the instance type is offered, a list AWS may grow; a
            # changed pick must never move the subnet, and with it the data volume.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["availabilityZone"]))
        gateway = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags={**tags, "Name": f"{name}-igw"}, opts=child)
        route_table = aws.ec2.RouteTable(
            f"{name}-public-routes", vpc_id=self.vpc.id, tags={**tags, "Name": f"{name}-public-routes"}, opts=child)
        aws.ec2.Route(f"{name}-default-route", route_table_id=route_table.id,
                      destination_cidr_block="0.0.0.0/0", gateway_id=gateway.id, opts=child)
        aws.ec2.RouteTableAssociation(f"{name}-public-routes-association", subnet_id=self.subnet.id,
                                      route_table_id=route_table.id, opts=child)

        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-host-sg", vpc_id=self.vpc.id, description=f"gitea-stack {settings.stack} host",
            tags={**tags, "Name": f"{name}-host-sg"}, opts=child)
        # Rules are separate resources (not inline blocks) so one can change without replacing others.
        for rule in ingress_rules(settings):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-in-{rule.name}", security_group_id=self.security_group.id, ip_protocol="tcp",
                from_port=rule.port, to_port=rule.port, description=rule.description,
                tags={**tags, "Name": f"{name}-in-{rule.name}"}, opts=child, **_cidr_args(rule.cidr))
        for port, purpose in EGRESS_TCP_PORTS.items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-out-{purpose}", security_group_id=self.security_group.id, ip_protocol="tcp",
                from_port=port, to_port=port, cidr_ipv4=ANYWHERE_IPV4, description=f"{purpose} to anywhere",
                tags={**tags, "Name": f"{name}-out-{purpose}"}, opts=child)

        self.register_outputs({"vpc_id": self.vpc.id, "subnet_id": self.subnet.id,
                               "security_group_id": self.security_group.id})
