"""Changing a running stack: what each change replaces, updates in place, or refuses; and adoption of
what a destroyed stack kept. Runs the program under mocks twice and compares what it registers."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile

import pulumi
import pytest

from gitea_stack import changes
from gitea_stack.changes import VolumeFacts
from gitea_stack.secrets import GENERATED_SECRETS, PLANE_SECRETS
from tests.harness.pulumi_mocks import REGION, FakeAws, StackRun, run_program

# Inputs of aws.ec2.Instance that make the provider replace it (user data because of
# user_data_replace_on_change); the AMI is ignored after creation.
INSTANCE_REPLACING_INPUTS = ("userData", "instanceType", "subnetId", "keyName", "iamInstanceProfile")
STACK = "prod"
DATA_VOLUME_NAME = f"gitea-stack-{STACK}-data"
OWN_TAGS = {"Project": "gitea-stack", "Stack": STACK}


def configured(example_config: dict[str, str], **changes_: object) -> dict[str, str]:
    config = dict(example_config)
    for key, value in changes_.items():
        config[f"gitea-stack:{key}"] = value if isinstance(value, str) else json.dumps(value)
    return config


def inputs_by_name(run: StackRun) -> dict[str, dict]:
    return {resource.name: resource.inputs for resource in run.resources}


def differing(before: StackRun, after: StackRun) -> set[str]:
    """Names of resources whose inputs differ between two runs (added or removed ones included)."""
    first, second = inputs_by_name(before), inputs_by_name(after)
    return {name for name in first.keys() | second.keys() if first.get(name) != second.get(name)}


def bundle_file(run: StackRun, path: str) -> str:
    payload = run.named("provision-copy-bundle").inputs["stdin"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(payload)))) as archive:
        return archive.extractfile(path).read().decode()


def refused(config: dict[str, str], mocks: FakeAws | None = None) -> str:
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config, mocks=mocks)
    assert caught.value.registered == [], "a refused change must register nothing"
    return str(caught.value)


# --- gitSshPort ----------------------------------------------------------------------------------------

def test_a_git_ssh_port_change_updates_the_rule_and_compose_and_keeps_the_instance(example_config, example_run):
    moved = run_program(configured(example_config, gitSshPort="2022"))
    instance_before = example_run.one("aws:ec2/instance:Instance").inputs
    instance_after = moved.one("aws:ec2/instance:Instance").inputs
    for key in INSTANCE_REPLACING_INPUTS:
        assert instance_after.get(key) == instance_before.get(key), f"{key} would replace the host"
    changed = differing(example_run, moved)
    assert "host-instance" not in changed
    assert "network-in-git-ssh" in changed
    assert moved.named("network-in-git-ssh").inputs["fromPort"] == 2022
    assert '- "2022:2222"' in bundle_file(moved, "docker-compose.yml")
    assert '- "22:2222"' in bundle_file(example_run, "docker-compose.yml")
    # Only the rule and the host's files (copied and converged again) change.
    assert changed == {"network-in-git-ssh", "provision-copy-bundle", "provision-converge"}


# --- dataVolumeGiB -------------------------------------------------------------------------------------

def test_a_larger_data_volume_is_an_in_place_size_change_and_a_new_converge(example_config, example_run):
    grown = run_program(configured(example_config, dataVolumeGiB="80"))
    assert grown.named("host-data").inputs["size"] == 80
    changed = differing(example_run, grown)
    # The volume itself changes size in place (EBS modifies it online); nothing else in AWS changes.
    assert "host-instance" not in changed and "host-data-attachment" not in changed
    assert {"host-data", "provision-converge"} <= changed
    assert "DATA_VOLUME_GIB=80" in bundle_file(grown, "settings.env")


def test_a_smaller_data_volume_is_refused_before_anything_changes(example_config):
    mocks = FakeAws(volumes={"vol-0aaaaaaaaaaaaaaaa": {
        "az": f"{REGION}a", "size": 100, "status": "in-use", "tags": {**OWN_TAGS, "Name": DATA_VOLUME_NAME}}})
    message = refused(configured(example_config, dataVolumeGiB="50"), mocks)
    assert "gitea-stack:dataVolumeGiB: expected 100 or more, got 50" in message
    assert "cannot shrink" in message


def test_the_running_volume_may_keep_its_size_or_grow(example_config):
    mocks = FakeAws(volumes={"vol-0aaaaaaaaaaaaaaaa": {
        "az": f"{REGION}a", "size": 50, "status": "in-use", "tags": {**OWN_TAGS, "Name": DATA_VOLUME_NAME}}})
    assert run_program(configured(example_config, dataVolumeGiB="50"), mocks=mocks).named("host-data")
    assert run_program(configured(example_config, dataVolumeGiB="60"), mocks=mocks).named("host-data")


def test_a_kept_volume_of_an_earlier_destroy_is_not_the_running_one():
    # Retained volumes are detached ("available"): only the attached one limits the size.
    assert changes.volume_shrink_problem(None, 10) is None
    assert changes.volume_shrink_problem(VolumeFacts("vol-1", "a", 20, True), 20) is None
    assert "expected 20 or more" in changes.volume_shrink_problem(VolumeFacts("vol-1", "a", 20, True), 19)


# --- architecture ----------------------------------------------------------------------------------------

def test_switching_the_architecture_of_a_running_host_is_refused_with_the_procedure(example_config):
    mocks = FakeAws(instances={"i-0running": "t3.medium"})
    message = refused(configured(example_config, instanceType="t4g.medium"), mocks)
    assert "gitea-stack:instanceType: expected a type for x86_64 like the running t3.medium" in message
    assert "got t4g.medium (arm64)" in message
    assert "pulumi destroy" in message and "gitea-stack:adopt" in message


def test_a_type_of_the_same_architecture_is_an_in_place_change(example_config, example_run):
    mocks = FakeAws(instances={"i-0running": "t3.medium"})
    larger = run_program(configured(example_config, instanceType="t3.large"), mocks=mocks)
    assert larger.one("aws:ec2/instance:Instance").inputs["instanceType"] == "t3.large"
    assert larger.one("aws:ec2/instance:Instance").inputs["userData"] == \
        example_run.one("aws:ec2/instance:Instance").inputs["userData"]


def test_a_first_deploy_may_choose_any_architecture(run_with):
    assert run_with(instanceType="t4g.medium").one("aws:ec2/instance:Instance").inputs["ami"] == "ami-mock-arm64"


# --- adoption ----------------------------------------------------------------------------------------------

KEPT_VOLUME = "vol-0bbbbbbbbbbbbbbbb"
KEPT_BUCKET = "gitea-stack-old-backups-20261101000000000000000001"


def kept_secrets(stack: str = "old") -> dict[str, str]:
    return {f"gitea-stack/{stack}/{key}-20261101000000000000000001": f"KEPT-{key}" for key in GENERATED_SECRETS}


def adopting_mocks(**overrides) -> FakeAws:
    account = {
        "volumes": {KEPT_VOLUME: {"az": f"{REGION}c", "size": 50, "status": "available",
                                  "tags": {"Project": "gitea-stack", "Stack": "old", "Name": "gitea-stack-old-data"}}},
        "kept_secrets": kept_secrets(),
        "buckets": {KEPT_BUCKET: REGION},
    }
    return FakeAws(**{**account, **overrides})


ADOPT_ALL = {"dataVolumeId": KEPT_VOLUME, "backupBucket": KEPT_BUCKET, "secretsFromStack": "old"}


@pytest.fixture(scope="module")
def adopted_run() -> StackRun:
    from tests.harness.pulumi_mocks import stack_file_config
    return run_program(configured(stack_file_config(), adopt=ADOPT_ALL), mocks=adopting_mocks())


def test_an_adopted_volume_is_attached_and_none_is_created(adopted_run):
    assert adopted_run.of_type("aws:ebs/volume:Volume") == []
    assert adopted_run.one("aws:ec2/volumeAttachment:VolumeAttachment").inputs["volumeId"] == KEPT_VOLUME
    # The instance lives where the volume is, and its first boot mounts that volume.
    assert adopted_run.one("aws:ec2/subnet:Subnet").inputs["availabilityZone"] == f"{REGION}c"
    assert KEPT_VOLUME in adopted_run.one("aws:ec2/instance:Instance").inputs["userData"]
    assert adopted_run.outputs["dataVolumeId"] == KEPT_VOLUME


def test_kept_secrets_are_used_and_only_the_planes_are_generated(adopted_run):
    generated = [r.name.removeprefix("secrets-") for r in adopted_run.of_type("random:index/randomPassword:RandomPassword")]
    assert sorted(generated) == sorted(PLANE_SECRETS)
    created = [s.inputs["namePrefix"] for s in adopted_run.of_type("aws:secretsmanager/secret:Secret")]
    # The new SMTP user's, and the observability plane's, which nothing stored depends on.
    assert sorted(created) == sorted([f"gitea-stack/{STACK}/smtp-credentials-",
                                      *(f"gitea-stack/{STACK}/{key}-" for key in PLANE_SECRETS)])
    facts = bundle_facts(adopted_run)
    for key in GENERATED_SECRETS:
        variable = f"SECRET_{key.upper().replace('-', '_')}"
        assert facts[variable] == f"gitea-stack/old/{key}-20261101000000000000000001"
    read_secrets = json.loads(adopted_run.named("host-read-secrets").inputs["policy"])
    resources = read_secrets["Statement"][0]["Resource"]
    assert all(any(f"gitea-stack/old/{key}-" in arn for arn in resources) for key in GENERATED_SECRETS)
    assert adopted_run.outputs["adminPassword"] == "KEPT-gitea-admin-password"
    assert "adminPassword" in adopted_run.secret_outputs


def bundle_facts(run: StackRun) -> dict[str, str]:
    text = bundle_file(run, "stack-facts.env")
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_an_adopted_bucket_is_used_and_none_is_created(adopted_run):
    assert adopted_run.of_type("aws:s3/bucket:Bucket") == []
    assert adopted_run.outputs["backupBucket"] == KEPT_BUCKET
    assert "accessLogBucket" not in adopted_run.outputs
    assert bundle_facts(adopted_run)["BACKUP_BUCKET"] == KEPT_BUCKET
    policy = json.dumps(json.loads(adopted_run.named("host-backup-bucket").inputs["policy"]))
    assert f"arn:aws:s3:::{KEPT_BUCKET}" in policy


def test_nothing_adopted_is_deleted_or_changed_by_this_stack(adopted_run):
    # Adopted resources appear only as ids and names in other resources' inputs: none is a resource here.
    for resource in adopted_run.resources:
        assert resource.inputs.get("volumeId") in (None, KEPT_VOLUME) or resource.type != "aws:ebs/volume:Volume"
    assert not [r for r in adopted_run.resources if r.type.startswith("aws:s3/")]


def test_adoption_problems_name_the_setting_and_register_nothing(example_config):
    missing = refused(configured(example_config, adopt={**ADOPT_ALL, "dataVolumeId": "vol-0cccccccccccccccc"}),
                      adopting_mocks())
    assert "gitea-stack:adopt: dataVolumeId vol-0cccccccccccccccc is no volume of this account" in missing
    resized = refused(configured(example_config, adopt=ADOPT_ALL, dataVolumeGiB="80"), adopting_mocks())
    assert "gitea-stack:dataVolumeGiB: expected 50, the size of the adopted volume" in resized
    twice = {**kept_secrets(), "gitea-stack/old/gitea-secret-key-20261102000000000000000002": "other"}
    ambiguous = refused(configured(example_config, adopt=ADOPT_ALL), adopting_mocks(kept_secrets=twice))
    assert "has 2 kept secrets gitea-secret-key" in ambiguous
    partial = {name: value for name, value in kept_secrets().items() if "restic-password" not in name}
    lacking = refused(configured(example_config, adopt=ADOPT_ALL), adopting_mocks(kept_secrets=partial))
    assert "has no kept secret restic-password" in lacking
    no_bucket = refused(configured(example_config, adopt=ADOPT_ALL), adopting_mocks(buckets={}))
    assert f"gitea-stack:adopt: backupBucket {KEPT_BUCKET} is no bucket of this account" in no_bucket


def test_an_unencrypted_or_misplaced_adopted_volume_is_refused():
    plain = VolumeFacts("vol-1", f"{REGION}a", 50, encrypted=False)
    assert "is not encrypted" in changes.adopted_volume_problems(plain, "vol-1", 50, [f"{REGION}a"])[0]
    elsewhere = VolumeFacts("vol-1", f"{REGION}c", 50, encrypted=True)
    assert "where the instance type is not offered" in changes.adopted_volume_problems(
        elsewhere, "vol-1", 50, [f"{REGION}a"])[0]
    assert changes.adopted_volume_problems(elsewhere, "vol-1", 50, [f"{REGION}c"]) == []


def test_kept_secret_names_pick_only_the_stacks_own_keys():
    names = [*kept_secrets("old"), *kept_secrets("older"), "gitea-stack/old/smtp-credentials-1"]
    chosen, problems = changes.kept_secret_names(names, "old", GENERATED_SECRETS)
    assert problems == []
    assert set(chosen) == set(GENERATED_SECRETS)
    assert all(name.startswith("gitea-stack/old/") for name in chosen.values())


def test_kept_secret_values_travel_nowhere(adopted_run):
    # The kept values are read only for the adminPassword output (a secret); nothing else carries them.
    from tests.unit.test_no_secret_leaks import leaks
    kept_values = {value for value in kept_secrets().values()}
    assert kept_values <= adopted_run.mock_secrets
    assert leaks(adopted_run) == []


def test_the_policy_pack_counts_the_adopted_bucket_among_the_stacks_own(adopted_run):
    # The role writes its backups to the adopted bucket, which no resource of this stack creates: the
    # pack knows it from gitea-stack:adopt (read from the stack file), and without that it objects.
    import rules

    from tests.unit.test_policy_on_the_program import as_policy_resources
    resources = as_policy_resources(adopted_run)
    assert [v.rule for v in rules.evaluate(resources)] == ["s3-writes-only-to-own-buckets"]
    assert rules.evaluate(resources, {"adopt": ADOPT_ALL}) == []
