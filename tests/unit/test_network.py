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
    rules = example_run.of_type(INGRESS) + example_run.of_type(EGRESS)
    assert rules
    for rule in rules:
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


def test_extra_egress_ports_open_outbound_only(run_with):
    run = run_with(extraEgressPorts=[22, 9418])
    assert rule_set(run, EGRESS) == {
        (80, 80, "tcp", "0.0.0.0/0"), (443, 443, "tcp", "0.0.0.0/0"), (587, 587, "tcp", "0.0.0.0/0"),
        (22, 22, "tcp", "0.0.0.0/0"), (9418, 9418, "tcp", "0.0.0.0/0")}
    assert rule_set(run, INGRESS) == rule_set(run_with(), INGRESS)
    assert {r.name for r in run.of_type(EGRESS)} >= {"network-out-tcp-22", "network-out-tcp-9418"}


def test_the_default_security_group_is_closed(example_run):
    group = example_run.one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert group.inputs["ingress"] == [] and group.inputs["egress"] == []
    assert group.property_dependencies["vpcId"] == [example_run.one("aws:ec2/vpc:Vpc").urn]


def test_flow_logs_record_all_traffic_into_an_encrypted_expiring_log_group(run_with):
    import json
    run = run_with(auditLogRetentionDays=90)
    flow_log = run.one("aws:ec2/flowLog:FlowLog")
    group = run.one("aws:cloudwatch/logGroup:LogGroup")
    key = run.one("aws:kms/key:Key")
    role = run.named("network-flow-logs-role")
    assert flow_log.property_dependencies["vpcId"] == [run.one("aws:ec2/vpc:Vpc").urn]
    assert (flow_log.inputs["trafficType"], flow_log.inputs["logDestinationType"]) == ("ALL", "cloud-watch-logs")
    assert flow_log.property_dependencies["logDestination"] == [group.urn]
    assert flow_log.property_dependencies["iamRoleArn"] == [role.urn]
    assert run.named("network-flow-logs-delivery").urn in flow_log.dependencies
    assert (group.inputs["name"], group.inputs["retentionInDays"]) == ("/gitea-stack/prod/vpc-flow-logs", 90)
    assert group.property_dependencies["kmsKeyId"] == [key.urn]
    assert key.inputs["enableKeyRotation"] is True
    group_arn = "arn:aws:logs:eu-central-1:123456789012:log-group:/gitea-stack/prod/vpc-flow-logs"
    logs_use = json.loads(key.inputs["policy"])["Statement"][1]
    assert logs_use["Principal"] == {"Service": "logs.eu-central-1.amazonaws.com"}
    assert logs_use["Condition"] == {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": group_arn}}
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    assert trust["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}
    delivery, find = json.loads(run.named("network-flow-logs-delivery").inputs["policy"])["Statement"]
    assert delivery["Resource"] == [group_arn, f"{group_arn}:log-stream:*"]
    assert delivery["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    assert (find["Action"], find["Resource"]) == ("logs:DescribeLogGroups", "*")  # a listing, nothing more
