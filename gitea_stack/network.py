"""Network: a VPC with one public subnet, the host's security group with one rule per purpose, the
VPC's default security group closed, and flow logs in an encrypted CloudWatch log group."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gitea_stack import iam_documents
from gitea_stack.settings import Settings

VPC_CIDR = "10.42.0.0/16"
PUBLIC_SUBNET_CIDR = "10.42.0.0/24"
# The VPC is IPv4-only for now, so world-open rules are IPv4; admin CIDRs may be of either family.
ANYWHERE_IPV4 = "0.0.0.0/0"

# What the host itself needs outbound: package mirrors and ACME over HTTP(S), AWS APIs and image
# registries over HTTPS, SES SMTP on 587. DNS, NTP and instance metadata go to link-local AWS
# services that security groups do not filter. `extraEgressPorts` adds more (pull mirrors over
# SSH, webhooks to other ports).
EGRESS_TCP_PORTS = {80: "http", 443: "https", 587: "smtp-submission"}
# A week of grace before AWS deletes the flow-log key after a destroy (the shortest AWS allows).
KEY_DELETION_WINDOW_DAYS = 7


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


def egress_ports(settings: Settings) -> dict[int, str]:
    """Outbound TCP port -> purpose (the rule's name): the base set and the stack's extra ports."""
    return {**EGRESS_TCP_PORTS, **{port: f"tcp-{port}" for port in settings.extra_egress_ports}}


def flow_log_group_name(settings: Settings) -> str:
    return f"/gitea-stack/{settings.stack}/vpc-flow-logs"


@dataclass(frozen=True)
class AwsAccount:
    """Where the stack lives, for ARNs that must be written before the resources exist."""
    account_id: str
    region: str
    partition: str
    dns_suffix: str = "amazonaws.com"  # "amazonaws.com.cn" in China: service principals end with it


def _cidr_args(cidr: str) -> dict[str, str]:
    version = ipaddress.ip_network(cidr).version
    return {"cidr_ipv4": cidr} if version == 4 else {"cidr_ipv6": cidr}


class Network(pulumi.ComponentResource):
    """VPC, public subnet in `availability_zone`, internet gateway, routes and the host's security group."""

    def __init__(self, name: str, settings: Settings, availability_zone: pulumi.Input[str], account: AwsAccount,
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
        # The default security group of a new VPC lets its members talk to each other and out to the
        # world; nothing uses it, so it holds no rule at all (a resource placed there by mistake is cut off).
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg-closed", vpc_id=self.vpc.id, ingress=[], egress=[],
            tags={**tags, "Name": f"{name}-default-sg (unused, closed)"}, opts=child)
        self.flow_logs = FlowLogs(f"{name}-flow-logs", settings, self.vpc.id, account, opts=child)
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
        for port, purpose in egress_ports(settings).items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-out-{purpose}", security_group_id=self.security_group.id, ip_protocol="tcp",
                from_port=port, to_port=port, cidr_ipv4=ANYWHERE_IPV4, description=f"{purpose} to anywhere",
                tags={**tags, "Name": f"{name}-out-{purpose}"}, opts=child)

        self.register_outputs({"vpc_id": self.vpc.id, "subnet_id": self.subnet.id,
                               "security_group_id": self.security_group.id})


class FlowLogs(pulumi.ComponentResource):
    """Every connection in and out of the VPC, accepted or rejected, kept in CloudWatch Logs for
    `auditLogRetentionDays`, encrypted with a key of the stack's own (rotated yearly)."""

    def __init__(self, name: str, settings: Settings, vpc_id: pulumi.Input[str], account: AwsAccount,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:network:FlowLogs", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags
        group_name = flow_log_group_name(settings)
        # Written before the group exists: the key policy names the one log group that may use it.
        group_arn = f"arn:{account.partition}:logs:{account.region}:{account.account_id}:log-group:{group_name}"

        key = aws.kms.Key(
            f"{name}-key", description=f"gitea-stack {settings.stack}: VPC flow logs",
            enable_key_rotation=True, deletion_window_in_days=KEY_DELETION_WINDOW_DAYS,
            policy=json.dumps(iam_documents.log_group_key_policy(account.account_id, account.partition,
                                                                 f"logs.{account.region}.{account.dns_suffix}",
                                                                 group_arn)),
            tags=tags, opts=child)
        aws.kms.Alias(f"{name}-key-alias", name=f"alias/gitea-stack/{settings.stack}/vpc-flow-logs",
                      target_key_id=key.key_id, opts=child)
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-group", name=group_name, retention_in_days=settings.audit_log_retention_days,
            kms_key_id=key.arn, tags=tags, opts=child)
        role = aws.iam.Role(
            f"{name}-role", path="/gitea-stack/", description=f"gitea-stack {settings.stack}: VPC flow log delivery",
            assume_role_policy=json.dumps(iam_documents.flow_logs_assume_role(
                account.account_id, account.partition, account.region)),
            tags=tags, opts=child)
        delivery = aws.iam.RolePolicy(
            f"{name}-delivery", role=role.id,
            policy=self.log_group.arn.apply(lambda arn: json.dumps(iam_documents.flow_logs_delivery(arn))),
            opts=child)
        aws.ec2.FlowLog(
            f"{name}-vpc", vpc_id=vpc_id, traffic_type="ALL", log_destination_type="cloud-watch-logs",
            log_destination=self.log_group.arn, iam_role_arn=role.arn,
            tags={**tags, "Name": f"gitea-stack-{settings.stack}-vpc"},
            # Delivery starts at creation: the role must already be allowed to write.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[delivery]))
        self.register_outputs({"log_group_name": self.log_group.name})
