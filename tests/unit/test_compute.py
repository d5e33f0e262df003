"""Host: AMI by architecture, IMDSv2, encrypted volumes, retained data volume, least-privilege role."""

from __future__ import annotations

import json

import pytest
import yaml

INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"


def ami_lookup(run):
    (args,) = [args for token, args in run.calls if token == "aws:ec2/getAmi:getAmi"]
    return args


@pytest.mark.parametrize("instance_type, architecture, name_part", [
    ("t3.medium", "x86_64", "amd64"), ("t4g.large", "arm64", "arm64"), ("m7g.xlarge", "arm64", "arm64")])
def test_ami_is_ubuntu_2404_from_canonical_for_the_architecture(run_with, instance_type, architecture, name_part):
    run = run_with(instanceType=instance_type)
    lookup = ami_lookup(run)
    assert lookup["owners"] == ["099720109477"] and lookup["mostRecent"] is True
    filters = {f["name"]: f["values"] for f in lookup["filters"]}
    assert filters["architecture"] == [architecture]
    assert filters["name"] == [f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{name_part}-server-*"]
    instance = run.one(INSTANCE)
    assert instance.inputs["ami"] == f"ami-mock-{architecture}"
    assert instance.inputs["instanceType"] == instance_type


def test_a_new_ami_never_replaces_the_host(example_run):
    instance = example_run.one(INSTANCE)
    assert instance.ignore_changes == ("ami",)
    assert instance.delete_before_replace is True


def test_instance_requires_imdsv2_and_encrypts_its_root_volume(example_run):
    inputs = example_run.one(INSTANCE).inputs
    assert inputs["metadataOptions"] == {"httpTokens": "required", "httpEndpoint": "enabled",
                                         "httpPutResponseHopLimit": 1}
    root = inputs["rootBlockDevice"]
    assert (root["volumeType"], root["volumeSize"], root["encrypted"], root["deleteOnTermination"]) == (
        "gp3", 20, True, True)


def test_data_volume_is_separate_encrypted_and_in_the_subnet_zone(example_run):
    volume = example_run.one(VOLUME)
    subnet = example_run.one("aws:ec2/subnet:Subnet")
    assert (volume.inputs["type"], volume.inputs["size"], volume.inputs["encrypted"]) == ("gp3", 50, True)
    assert volume.property_dependencies["availabilityZone"] == [subnet.urn]
    attachment = example_run.one("aws:ec2/volumeAttachment:VolumeAttachment")
    assert attachment.inputs["deviceName"] == "/dev/sdf"
    assert set(attachment.property_dependencies["volumeId"]) == {volume.urn}
    assert set(attachment.property_dependencies["instanceId"]) == {example_run.one(INSTANCE).urn}


@pytest.mark.parametrize("retain", [True, False])
def test_data_volume_is_retained_on_destroy_when_configured(run_with, retain):
    volume = run_with(retainDataOnDestroy=retain, dataVolumeGiB=200).one(VOLUME)
    assert volume.retain_on_delete is retain
    assert volume.inputs["size"] == 200


def test_user_data_moves_sshd_and_mounts_the_data_volume(run_with):
    instance = run_with(adminSshPort=40022, gitSshPort=2200).one(INSTANCE)
    cloud_config = yaml.safe_load(instance.inputs["userData"])
    sshd = next(f for f in cloud_config["write_files"] if f["path"].startswith("/etc/ssh/sshd_config.d/"))
    assert "Port 40022\n" in sshd["content"]
    assert ["/usr/local/sbin/gitea-stack-mount-data", "vol-0123456789abcdef0", "/srv/gitea-stack"] in \
        cloud_config["runcmd"]
    assert instance.inputs["userDataReplaceOnChange"] is True


def test_key_pair_is_the_generated_ed25519_key(example_run):
    key = example_run.one("tls:index/privateKey:PrivateKey")
    assert key.inputs["algorithm"] == "ED25519"
    key_pair = example_run.one("aws:ec2/keyPair:KeyPair")
    assert key_pair.property_dependencies["publicKey"] == [key.urn]
    assert example_run.one(INSTANCE).property_dependencies["keyName"] == [key_pair.urn]


def role_policies(run):
    role = run.named("host-role")
    return {r.name.removeprefix("host-"): json.loads(r.inputs["policy"])
            for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.property_dependencies["role"] == [role.urn]}


def test_role_may_use_this_bucket_only(example_run):
    statements = role_policies(example_run)["backup-bucket"]["Statement"]
    arn = "arn:aws:s3:::gitea-stack-prod-backups-mock"
    assert {s["Resource"] for s in statements} == {arn, f"{arn}/*"}
    actions = {a for s in statements for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def test_role_may_read_this_stacks_secrets_only(example_run):
    (statement,) = role_policies(example_run)["read-secrets"]["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    stack_secrets = {r.name: r for r in example_run.of_type("aws:secretsmanager/secret:Secret")}
    expected = {f"arn:aws:secretsmanager:eu-central-1:123456789012:secret:{r.inputs['namePrefix']}MOCK"
                for r in stack_secrets.values()}
    assert set(statement["Resource"]) == expected and len(expected) == 10


def test_role_may_send_mail_only_from_the_domain(example_run):
    (statement,) = role_policies(example_run)["send-mail"]["Statement"]
    assert statement["Condition"] == {"StringLike": {"ses:FromAddress": "*@git.example.com"}}
    assert all(arn.startswith("arn:aws:ses:eu-central-1:123456789012:identity/") for arn in statement["Resource"])


def test_the_instance_runs_with_the_profile_of_the_role_that_holds_the_policies(example_run):
    role = example_run.named("host-role")
    profile = example_run.one("aws:iam/instanceProfile:InstanceProfile")
    instance = example_run.one(INSTANCE)
    assert profile.inputs["role"] == "host-role-mock" and profile.property_dependencies["role"] == [role.urn]
    assert instance.inputs["iamInstanceProfile"] == "host-profile-mock"
    assert instance.property_dependencies["iamInstanceProfile"] == [profile.urn]
    assert set(role_policies(example_run)) == {"backup-bucket", "read-secrets", "send-mail"}


def test_role_has_no_managed_policy_and_trusts_ec2_only(example_run):
    role = example_run.named("host-role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}]
    assert "managedPolicyArns" not in role.inputs
    # The only managed-policy attachment in the stack is the snapshot role's (DLM's service policy).
    attachments = example_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert [attachment.inputs["role"] for attachment in attachments] == ["snapshots-role-mock"]
    profile = example_run.one("aws:iam/instanceProfile:InstanceProfile")
    assert profile.property_dependencies["role"] == [role.urn]


def test_elastic_ip_and_auto_recovery_watch_the_instance(example_run):
    instance = example_run.one(INSTANCE)
    eip = example_run.one("aws:ec2/eip:Eip")
    assert eip.inputs["domain"] == "vpc" and eip.property_dependencies["instance"] == [instance.urn]
    alarm = example_run.one("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert alarm.inputs["metricName"] == "StatusCheckFailed_System"
    assert alarm.inputs["namespace"] == "AWS/EC2"
    assert alarm.inputs["alarmActions"] == ["arn:aws:automate:eu-central-1:ec2:recover"]
    assert alarm.inputs["dimensions"] == {"InstanceId": "i-0123456789abcdef0"}


def test_dns_points_the_domain_at_the_elastic_ip(example_run):
    record = example_run.named("dns-a")
    assert (record.inputs["name"], record.inputs["type"], record.inputs["records"]) == (
        "git.example.com", "A", ["198.51.100.7"])
    assert record.property_dependencies["records"] == [example_run.one("aws:ec2/eip:Eip").urn]


def test_every_taggable_resource_carries_the_stack_tags(example_run):
    tagged = [r for r in example_run.resources if r.custom and "tags" in r.inputs]
    assert len(tagged) >= 25
    for resource in tagged:
        assert {k: resource.inputs["tags"][k] for k in ("Project", "Stack", "ManagedBy")} == {
            "Project": "gitea-stack", "Stack": "prod", "ManagedBy": "pulumi"}
