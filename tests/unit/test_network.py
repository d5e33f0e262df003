"""Network: ingress by purpose, admin SSH only from the allowed CIDRs, explicit egress."""

from __future__ import annotations

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"


def rule_set(run, rule_type):
    return {(r.inputs["fromPort"], r.inputs["toPort"], r.inputs["ipProtocol"],
             r.inputs.get("cidrIpv4") or r.inputs.get("cidrIpv6")) for r in run.of_type(rule_type)}


def test_ingress_is_web_and_git_from_anywhere_and_admin_from_allowed_cidrs_only(example_run):
    assert rule_set(example_run, INGRESS) == {
        (80, 80, "tcp", "0.0.0.0/0"),
        (443, 443, "tcp", "0.0.0.0/0"),
        (22, 22, "tcp", "0.0.0.0/0"),
        (2222, 2222, "tcp", "203.0.113.0/24"),
        (2222, 2222, "tcp", "2001:db8::/32"),
    }


def test_ipv6_admin_cidrs_go_into_the_ipv6_field(example_run):
    admin = [r for r in example_run.of_type(INGRESS) if r.inputs["fromPort"] == 2222]
    assert {("cidrIpv4" in r.inputs, "cidrIpv6" in r.inputs) for r in admin} == {(True, False), (False, True)}


def test_custom_ports_move_the_rules(run_with):
    run = run_with(adminSshPort=40022, gitSshPort=2200, sshAllowedCidrs=["198.51.100.4/32"])
    assert rule_set(run, INGRESS) == {
        (80, 80, "tcp", "0.0.0.0/0"), (443, 443, "tcp", "0.0.0.0/0"), (2200, 2200, "tcp", "0.0.0.0/0"),
        (40022, 40022, "tcp", "198.51.100.4/32"),
    }


def test_egress_is_explicit(example_run):
    assert rule_set(example_run, EGRESS) == {
        (80, 80, "tcp", "0.0.0.0/0"), (443, 443, "tcp", "0.0.0.0/0"), (587, 587, "tcp", "0.0.0.0/0")}
    group = example_run.one("aws:ec2/securityGroup:SecurityGroup")
    assert "ingress" not in group.inputs and "egress" not in group.inputs


def test_every_rule_belongs_to_the_host_security_group(example_run):
    group = example_run.one("aws:ec2/securityGroup:SecurityGroup")
    for rule in example_run.of_type(INGRESS) + example_run.of_type(EGRESS):
        assert rule.property_dependencies["securityGroupId"] == [group.urn]


def test_public_subnet_routes_through_the_internet_gateway(example_run):
    subnet = example_run.one("aws:ec2/subnet:Subnet")
    vpc = example_run.one("aws:ec2/vpc:Vpc")
    assert subnet.inputs["availabilityZone"] == "eu-central-1a"  # first zone offering the type, sorted
    assert subnet.inputs["mapPublicIpOnLaunch"] is False
    assert subnet.property_dependencies["vpcId"] == [vpc.urn]
    assert "availabilityZone" in subnet.ignore_changes
    route = example_run.one("aws:ec2/route:Route")
    gateway = example_run.one("aws:ec2/internetGateway:InternetGateway")
    assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0"
    assert route.property_dependencies["gatewayId"] == [gateway.urn]
    association = example_run.one("aws:ec2/routeTableAssociation:RouteTableAssociation")
    assert association.property_dependencies["subnetId"] == [subnet.urn]
