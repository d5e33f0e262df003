"""The whole program under mocks: what Pulumi.prod.yaml registers, how it is wired, what it exports."""

from __future__ import annotations

import pulumi
import pytest

from tests.harness.pulumi_mocks import ELASTIC_IP, REGION, FakeAws, run_program

COMPONENTS = {
    "gitea-stack:network:Network": "network",
    "gitea-stack:storage:BackupBucket": "backups",
    "gitea-stack:secrets:StackSecrets": "secrets",
    "gitea-stack:mail:Mail": "mail",
    "gitea-stack:compute:GiteaHost": "host",
    "gitea-stack:dns:ForgeDns": "dns",
    "gitea-stack:provision:Provisioning": "provision",
    "gitea-stack:snapshots:VolumeSnapshots": "snapshots",
}
# Components inside components: type -> (name, parent component's type).
NESTED_COMPONENTS = {
    "gitea-stack:network:FlowLogs": ("network-flow-logs", "gitea-stack:network:Network"),
    "gitea-stack:storage:AccessLogBucket": ("backups-access-logs", "gitea-stack:storage:BackupBucket"),
}

# What one example stack must hold: type -> count.
EXPECTED_ESTATE = {
    "aws:ec2/vpc:Vpc": 1,
    "aws:ec2/subnet:Subnet": 1,
    "aws:ec2/internetGateway:InternetGateway": 1,
    "aws:ec2/routeTable:RouteTable": 1,
    "aws:ec2/route:Route": 1,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": 1,
    "aws:ec2/securityGroup:SecurityGroup": 1,
    "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": 1,
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": 5,  # http, https, git, 2 admin CIDRs
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": 3,
    "aws:ec2/flowLog:FlowLog": 1,
    "aws:cloudwatch/logGroup:LogGroup": 1,
    "aws:kms/key:Key": 1,
    "aws:kms/alias:Alias": 1,
    "aws:s3/bucket:Bucket": 2,  # backups, and their access logs
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 2,
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 2,
    "aws:s3/bucketVersioning:BucketVersioning": 2,
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": 2,
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": 2,
    "aws:s3/bucketPolicy:BucketPolicy": 2,
    "aws:s3/bucketLogging:BucketLogging": 1,
    "random:index/randomPassword:RandomPassword": 9,
    "aws:secretsmanager/secret:Secret": 10,  # 7 generated + 2 of the observability plane + SMTP credentials
    "aws:secretsmanager/secretVersion:SecretVersion": 10,
    "aws:sesv2/emailIdentity:EmailIdentity": 3,  # domain + 2 alert addresses
    "aws:sesv2/emailIdentityMailFromAttributes:EmailIdentityMailFromAttributes": 1,
    "aws:route53/record:Record": 7,  # 3 DKIM, MX, SPF, DMARC, A
    "aws:iam/user:User": 1,
    "aws:iam/userPolicy:UserPolicy": 1,
    "aws:iam/accessKey:AccessKey": 1,
    "tls:index/privateKey:PrivateKey": 1,
    "aws:ec2/keyPair:KeyPair": 1,
    "aws:iam/role:Role": 3,  # the host's, flow-log delivery, and snapshots (DLM)
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": 1,  # DLM's service policy on its role
    "aws:dlm/lifecyclePolicy:LifecyclePolicy": 1,
    "aws:iam/rolePolicy:RolePolicy": 4,
    "aws:iam/instanceProfile:InstanceProfile": 1,
    "aws:ebs/volume:Volume": 1,
    "aws:ec2/instance:Instance": 1,
    "aws:ec2/volumeAttachment:VolumeAttachment": 1,
    "aws:ec2/eip:Eip": 1,
    "aws:cloudwatch/metricAlarm:MetricAlarm": 1,
    "command:remote:Command": 4,  # wait for the host, install Docker, copy the bundle, converge
}


def test_example_stack_registers_the_whole_estate(example_run):
    counts: dict[str, int] = {}
    for resource in example_run.resources:
        counts[resource.type] = counts.get(resource.type, 0) + 1
    expected = {**EXPECTED_ESTATE, **{token: 1 for token in [*COMPONENTS, *NESTED_COMPONENTS]}}
    assert counts == expected


def test_components_sit_under_the_stack_and_every_resource_under_a_component(example_run):
    stack_urn = "urn:pulumi:prod::gitea-stack::pulumi:pulumi:Stack::gitea-stack-prod"
    components = {r.type: r for r in example_run.resources if r.type in COMPONENTS}
    for token, name in COMPONENTS.items():
        assert components[token].name == name
        assert components[token].parent == stack_urn
    nested = {r.type: r for r in example_run.resources if r.type in NESTED_COMPONENTS}
    for token, (name, parent_type) in NESTED_COMPONENTS.items():
        assert nested[token].name == name
        assert nested[token].parent == components[parent_type].urn
    for resource in example_run.resources:
        if resource.type not in COMPONENTS:
            parent = example_run.by_urn(resource.parent)
            assert parent.type in {**COMPONENTS, **NESTED_COMPONENTS}, f"{resource.name} is parented to {resource.parent}"
            assert resource.name.startswith(parent.name + "-") or resource.name == parent.name


def test_resource_names_are_unique(example_run):
    names = [r.name for r in example_run.resources]
    assert len(names) == len(set(names))


def test_outputs_tell_an_operator_where_everything_is(example_run):
    outputs = example_run.outputs
    assert outputs["url"] == "https://git.example.com/"
    assert outputs["publicIp"] == ELASTIC_IP
    assert outputs["adminSshCommand"] == f"ssh -i gitea-stack-prod.key -p 2222 ubuntu@{ELASTIC_IP}"
    assert outputs["gitCloneHttps"] == "https://git.example.com/OWNER/REPOSITORY.git"
    assert outputs["gitCloneSsh"] == "git@git.example.com:OWNER/REPOSITORY.git"
    assert outputs["backupBucket"].startswith("gitea-stack-prod-backups-")
    assert outputs["accessLogBucket"].startswith("gitea-stack-prod-logs-")
    assert outputs["flowLogGroup"] == "/gitea-stack/prod/vpc-flow-logs"
    assert set(outputs["secretNames"]) == {
        "postgres-password", "gitea-admin-password", "gitea-secret-key", "gitea-internal-token",
        "runner-registration-token", "metrics-token", "restic-password", "smtp-credentials",
        "grafana-admin-password", "postgres-exporter-password"}
    assert outputs["grafanaUrl"] == "https://git.example.com/grafana/"
    assert all(name.startswith("gitea-stack/prod/") for name in outputs["secretNames"].values())
    assert outputs["instanceId"] == "i-0123456789abcdef0"
    assert outputs["dataVolumeId"] == "vol-0123456789abcdef0"
    assert outputs["recoveryAlarmName"] == "host-auto-recover-mock"
    assert outputs["region"] == REGION
    assert outputs["provisioningPrivateKey"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_only_the_private_key_and_admin_password_outputs_are_secret_and_they_are(example_run):
    assert example_run.secret_outputs == {"provisioningPrivateKey", "adminPassword"}
    assert example_run.outputs["adminPassword"] == "MOCK-SECRET-secrets-gitea-admin-password-Zq7"
    assert example_run.outputs["adminUsername"] == "gitea-admin"


def test_bad_config_fails_naming_the_keys_and_registers_nothing(example_config):
    config = {**example_config, "gitea-stack:adminSshPort": "22", "gitea-stack:sshAllowedCidrs": '["0.0.0.0/0"]'}
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config)
    message = str(caught.value)
    assert "gitea-stack:gitSshPort: expected a port different from gitea-stack:adminSshPort" in message
    assert "gitea-stack:sshAllowedCidrs:" in message
    assert caught.value.registered == []


def test_a_typo_in_a_key_is_caught_before_anything_is_registered(example_config):
    config = {**example_config, "gitea-stack:retainDataOnDestory": "false"}
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config)
    assert "gitea-stack:retainDataOnDestory: unknown key; did you mean gitea-stack:retainDataOnDestroy?" in str(
        caught.value)
    assert caught.value.registered == []


def test_an_instance_type_the_region_does_not_sell_is_reported(example_config):
    with pytest.raises(pulumi.RunError) as caught:
        run_program(example_config, mocks=FakeAws(zones=()))
    assert "gitea-stack:instanceType: t3.medium is not offered in any availability zone" in str(caught.value)
    assert caught.value.registered == []


@pytest.mark.parametrize("instance_type, words", [
    ("t3.micro", "t3.micro has 1024 MiB of memory; expected at least 2048 MiB"),
    ("mac2.metal", "mac2.metal runs arm64_mac; expected an instance type for x86_64 or arm64"),
    ("t9.medium", "t9.medium is not offered in any availability zone of eu-central-1"),
])
def test_an_instance_type_that_cannot_run_the_forge_is_refused_naming_the_key(example_config, instance_type, words):
    with pytest.raises(pulumi.RunError) as caught:
        run_program({**example_config, "gitea-stack:instanceType": instance_type})
    assert f"gitea-stack:instanceType: {words}" in str(caught.value)
    assert caught.value.registered == []


@pytest.mark.parametrize("instance_type, architecture, memory_limit", [
    ("t3.medium", "x86_64", "1497m"), ("t4g.large", "arm64", "3340m")])
def test_architecture_and_memory_limits_come_from_aws(run_with, instance_type, architecture, memory_limit):
    import base64
    import gzip
    import io
    import tarfile
    run = run_with(instanceType=instance_type)
    assert run.one("aws:ec2/instance:Instance").inputs["ami"] == f"ami-mock-{architecture}"
    payload = run.named("provision-copy-bundle").inputs["stdin"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(payload)))) as archive:
        compose = archive.extractfile("docker-compose.yml").read().decode()
    assert f"mem_limit: {memory_limit}\n" in compose  # gitea: 45 % of (memory - 768 MiB)


def test_config_of_other_namespaces_is_left_alone(example_config):
    run = run_program({**example_config, "aws:profile": "ops", "other:setting": "x"})
    assert run.outputs["url"] == "https://git.example.com/"


def test_the_program_looks_up_region_zone_ami_and_offerings(example_run):
    tokens = {token for token, _ in example_run.calls}
    assert tokens == {"aws:index/getRegion:getRegion", "aws:index/getPartition:getPartition",
                      "aws:index/getCallerIdentity:getCallerIdentity", "aws:route53/getZones:getZones",
                      "aws:route53/getZone:getZone", "aws:ec2/getInstanceType:getInstanceType",
                      "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings", "aws:ec2/getAmi:getAmi",
                      # what the stack already has: a running data volume and host (none on a first up)
                      "aws:ebs/getEbsVolumes:getEbsVolumes", "aws:ec2/getInstances:getInstances"}
    zone_lookups = [args for token, args in example_run.calls if token == "aws:route53/getZone:getZone"]
    assert zone_lookups == [{"zoneId": "Z0MOCKZONE"}, {"zoneId": "Z0PRIVATE"}]
    assert example_run.one("aws:route53/record:Record", "dns-a").inputs["zoneId"] == "Z0MOCKZONE"
