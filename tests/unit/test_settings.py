"""The stack-config contract: defaults, normalisation and every problem reported at once."""

from __future__ import annotations

import pytest

from gitea_stack.settings import ENCRYPTED_PASSWORD, KEY_NAMES, SettingsError, parse_settings
from gitea_stack.versions import DEFAULT_IMAGES

MINIMAL = {
    "domain": "git.example.com",
    "acmeEmail": "ops@example.com",
    "alertEmails": '["ops@example.com"]',
    "sshAllowedCidrs": '["203.0.113.0/24"]',
}


def parse(**changes):
    raw = {**MINIMAL, **changes}
    return parse_settings({key: value for key, value in raw.items() if value is not None}, "prod")


def problems_of(**changes) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(**changes)
    return caught.value.problems


def test_minimal_config_gets_the_documented_defaults():
    settings = parse()
    assert settings.hosted_zone == "example.com"
    assert settings.admin_username == "gitea-admin"
    assert settings.admin_email == "ops@example.com"
    assert (settings.admin_ssh_port, settings.git_ssh_port) == (2222, 22)
    assert settings.instance_type == "t3.medium"
    assert (settings.root_volume_gib, settings.data_volume_gib) == (20, 50)
    assert settings.backup_retention_days == 30
    assert settings.retain_data_on_destroy is True
    assert settings.secret_recovery_window_days == 0
    assert dict(settings.images) == DEFAULT_IMAGES
    assert settings.acme_server == "https://acme-v02.api.letsencrypt.org/directory"
    assert settings.aws_endpoint_url == ""


def test_values_arrive_as_engine_strings_or_python_values():
    from_strings = parse(adminSshPort="2200", retainDataOnDestroy="false", images='{"nginx": "nginx:1.28.1"}')
    from_values = parse(adminSshPort=2200, retainDataOnDestroy=False, images={"nginx": "nginx:1.28.1"})
    assert from_strings == from_values
    assert from_values.admin_ssh_port == 2200 and from_values.retain_data_on_destroy is False
    assert from_values.images["nginx"] == "nginx:1.28.1"
    assert from_values.images["gitea"] == DEFAULT_IMAGES["gitea"]


def test_names_are_normalised():
    settings = parse(domain="Git.Example.COM.", alertEmails=["ops@example.com", "ops@Example.com"])
    assert settings.domain == "git.example.com"
    assert settings.alert_emails == ("ops@example.com",)


def test_apex_domain_is_its_own_zone():
    assert parse(domain="example.org").hosted_zone == "example.org"


def test_settings_are_frozen():
    settings = parse()
    with pytest.raises(AttributeError):
        settings.domain = "other.example.com"
    with pytest.raises(TypeError):
        settings.images["gitea"] = "gitea/gitea:latest"


def test_extra_egress_ports_are_sorted_and_default_to_none():
    assert parse().extra_egress_ports == ()
    assert parse(extraEgressPorts="[9418, 22]").extra_egress_ports == (22, 9418)
    assert parse(extraEgressPorts=[]).extra_egress_ports == ()


def test_audit_log_retention_defaults_to_a_year():
    assert parse().audit_log_retention_days == 365
    assert parse(auditLogRetentionDays="90").audit_log_retention_days == 90


@pytest.mark.parametrize("stack", ["prod", "e2e", "eu-west-1", "a", "team-forge-2026x"])
def test_stack_names_aws_accepts(stack):
    assert parse_settings(MINIMAL, stack).stack == stack


@pytest.mark.parametrize("stack", ["Prod", "prod_eu", "dev.1", "-prod", "prod-", "team-forge-2026xy", "org/prod"])
def test_stack_names_aws_would_reject_are_refused_with_the_rule(stack):
    with pytest.raises(SettingsError) as caught:
        parse_settings(MINIMAL, stack)
    (problem,) = caught.value.problems
    assert problem.startswith("stack name: expected 1 to 16 lowercase letters, digits and hyphens")
    assert repr(stack) in problem and "gitea-stack-<stack>-backups-" in problem


def test_clone_urls_follow_the_git_port():
    assert parse().ssh_clone_url("team", "app") == "git@git.example.com:team/app.git"
    assert parse(gitSshPort=2200).ssh_clone_url("team", "app") == "ssh://git@git.example.com:2200/team/app.git"
    assert parse().https_clone_url("team", "app") == "https://git.example.com/team/app.git"


# Each case: config changes -> the key the message must name, and words it must contain.
BAD_INPUT = {
    "domain missing": ({"domain": None}, "domain", "required"),
    "domain not a name": ({"domain": "git_example"}, "domain", "fully qualified domain name"),
    "domain single label": ({"domain": "localhost"}, "domain", "fully qualified"),
    "domain is an IP": ({"domain": "10.0.0.1"}, "domain", "not an IP address"),
    "domain label too long": ({"domain": "a" * 64 + ".example.com"}, "domain", "fully qualified"),
    "zone does not hold domain": ({"hostedZone": "example.org"}, "hostedZone", "holds git.example.com"),
    "zone not a name": ({"hostedZone": "-bad-.com"}, "hostedZone", "fully qualified"),
    "acme email bad": ({"acmeEmail": "ops.example.com"}, "acmeEmail", "e-mail address"),
    "acme email missing": ({"acmeEmail": None}, "acmeEmail", "required"),
    "alert emails empty": ({"alertEmails": "[]"}, "alertEmails", "non-empty list"),
    "alert emails not a list": ({"alertEmails": "ops@example.com"}, "alertEmails", "non-empty list"),
    "alert email bad": ({"alertEmails": ["ops@example.com", "nobody"]}, "alertEmails", "'nobody' is not one"),
    "admin email bad": ({"adminEmail": "admin@"}, "adminEmail", "e-mail address"),
    "admin user reserved": ({"adminUsername": "admin"}, "adminUsername", "reserved"),
    "admin user bad chars": ({"adminUsername": "gitea admin"}, "adminUsername", "Gitea user name"),
    "cidrs empty": ({"sshAllowedCidrs": []}, "sshAllowedCidrs", "non-empty list"),
    "cidr not a cidr": ({"sshAllowedCidrs": ["203.0.113.0/33"]}, "sshAllowedCidrs", "not one"),
    "cidr host bits": ({"sshAllowedCidrs": ["203.0.113.7/24"]}, "sshAllowedCidrs", "did you mean 203.0.113.0/24"),
    "cidr without prefix": ({"sshAllowedCidrs": ["203.0.113.7"]}, "sshAllowedCidrs", "/32"),
    "cidr whole ipv4 internet": ({"sshAllowedCidrs": ["0.0.0.0/0"]}, "sshAllowedCidrs", "open admin SSH to everyone"),
    "cidr whole ipv6 internet": ({"sshAllowedCidrs": ["::/0"]}, "sshAllowedCidrs", "open admin SSH to everyone"),
    "cidr bad ipv6": ({"sshAllowedCidrs": ["2001:db8::g/32"]}, "sshAllowedCidrs", "not one"),
    "admin port too high": ({"adminSshPort": 70000}, "adminSshPort", "from 1 to 65535"),
    "admin port not a number": ({"adminSshPort": "ssh"}, "adminSshPort", "from 1 to 65535"),
    "git port zero": ({"gitSshPort": 0}, "gitSshPort", "from 1 to 65535"),
    "ports equal": ({"gitSshPort": 2222}, "gitSshPort", "different from gitea-stack:adminSshPort"),
    "port taken by https": ({"adminSshPort": 443}, "adminSshPort", "other than 80 and 443"),
    "instance type shape": ({"instanceType": "medium"}, "instanceType", "family.size"),
    "instance type size": ({"instanceType": "t3.huge"}, "instanceType", "family.size"),
    "root volume too small": ({"rootVolumeGiB": 4}, "rootVolumeGiB", "from 8"),
    "data volume zero": ({"dataVolumeGiB": 0}, "dataVolumeGiB", "from 1"),
    "data volume negative": ({"dataVolumeGiB": "-5"}, "dataVolumeGiB", "from 1"),
    "retention zero days": ({"backupRetentionDays": 0}, "backupRetentionDays", "number of days"),
    "retain not a bool": ({"retainDataOnDestroy": "yes"}, "retainDataOnDestroy", "true or false"),
    "recovery window 3": ({"secretRecoveryWindowDays": 3}, "secretRecoveryWindowDays", "from 7 to 30"),
    "recovery window 31": ({"secretRecoveryWindowDays": 31}, "secretRecoveryWindowDays", "from 7 to 30"),
    "image unknown service": ({"images": {"gitlab": "gitlab/gitlab-ce:17.0.0-ce.0"}}, "images", "'gitlab' is not one"),
    "image latest": ({"images": {"nginx": "nginx:latest"}}, "images", "pin a release"),
    "image untagged": ({"images": {"gitea": "docker.gitea.com/gitea"}}, "images", "untagged"),
    "images not a map": ({"images": '["nginx:1.28.0"]'}, "images", "map of service name"),
    "acme server not https": ({"acmeServer": "http://acme.example.com/dir"}, "acmeServer", "https URL"),
    "aws endpoint with credentials": ({"awsEndpointUrl": "http://key:secret@127.0.0.1:5000"}, "awsEndpointUrl",
                                      "without credentials"),
    "aws endpoint not a url": ({"awsEndpointUrl": "localhost:5000"}, "awsEndpointUrl", "http(s) URL"),
    "unknown key": ({"adminSshPrt": 2222}, "adminSshPrt", "did you mean gitea-stack:adminSshPort"),
    "egress port already open": ({"extraEgressPorts": [22, 443]}, "extraEgressPorts", "443 is always open"),
    "egress port twice": ({"extraEgressPorts": [22, 22]}, "extraEgressPorts", "22 is listed twice"),
    "egress port out of range": ({"extraEgressPorts": [70000]}, "extraEgressPorts", "70000 is not a port"),
    "egress ports not a list": ({"extraEgressPorts": "22"}, "extraEgressPorts", "a list of up to 40 TCP ports"),
    "egress ports too many": ({"extraEgressPorts": list(range(1000, 1041))}, "extraEgressPorts", "up to 40"),
    "audit retention not accepted": ({"auditLogRetentionDays": 100}, "auditLogRetentionDays",
                                     "the nearest are 90 and 120"),
    "audit retention zero": ({"auditLogRetentionDays": 0}, "auditLogRetentionDays", "CloudWatch Logs accepts"),
    "restore not a map": ({"restoreFrom": "gitea-stack-old-backups-1"}, "restoreFrom", "a map {bucket"),
    "restore unknown field": ({"restoreFrom": {"bucket": "old-backups", "passwordSecret": "x", "prefix": "a"}},
                              "restoreFrom.prefix", "unknown field"),
    "restore bucket missing": ({"restoreFrom": {"passwordSecret": "x"}}, "restoreFrom.bucket", "got nothing"),
    "restore bucket uppercase": ({"restoreFrom": {"bucket": "Old_Backups", "passwordSecret": "x"}},
                                 "restoreFrom.bucket", "an S3 bucket name"),
    "restore bucket an IP": ({"restoreFrom": {"bucket": "192.168.5.4", "passwordSecret": "x"}},
                             "restoreFrom.bucket", "not an IP address"),
    "restore bucket too long": ({"restoreFrom": {"bucket": "b" * 64, "passwordSecret": "x"}},
                                "restoreFrom.bucket", "3-63"),
    "restore bucket reserved suffix": ({"restoreFrom": {"bucket": "old-backups-s3alias", "passwordSecret": "x"}},
                                       "restoreFrom.bucket", "an S3 bucket name"),
    "restore no password": ({"restoreFrom": {"bucket": "old-backups"}}, "restoreFrom.passwordSecret", "exactly one of"),
    "restore both passwords": ({"restoreFrom": {"bucket": "old-backups", "passwordSecret": "x", "password": "y"}},
                               "restoreFrom.passwordSecret", "exactly one of"),
    "restore secret not an arn": ({"restoreFrom": {"bucket": "old-backups", "passwordSecret": "gitea-stack/old/restic"}},
                                  "restoreFrom.passwordSecret", "a Secrets Manager secret ARN"),
    "restore secret of another service": ({"restoreFrom": {
        "bucket": "old-backups", "passwordSecret": "arn:aws:ssm:eu-west-1:123456789012:parameter/restic"}},
        "restoreFrom.passwordSecret", "a Secrets Manager secret ARN"),
    "restore secret short account": ({"restoreFrom": {
        "bucket": "old-backups", "passwordSecret": "arn:aws:secretsmanager:eu-west-1:1234:secret:restic-AbCdEf"}},
        "restoreFrom.passwordSecret", "a Secrets Manager secret ARN"),
    "restore password empty": ({"restoreFrom": {"bucket": "old-backups", "password": ""}}, "restoreFrom.password",
                               "non-empty secret config value"),
    "restore region bad": ({"restoreFrom": {"bucket": "old-backups", "password": "p", "region": "Frankfurt"}},
                           "restoreFrom.region", "an AWS region name"),
    "restore with an adopted volume": ({"restoreFrom": {"bucket": "old-backups", "password": "p"}, "adopt": {
        "dataVolumeId": "vol-0123456789abcdef0", "secretsFromStack": "old"}}, "restoreFrom",
        "an adopted volume already holds a forge"),
    "restore from own bucket": ({"restoreFrom": {"bucket": "gitea-stack-prod-backups-20260101abcdef", "password": "p"}},
                                "restoreFrom.bucket", "this stack's own backup bucket"),
    "restore from adopted bucket": ({"restoreFrom": {"bucket": "gitea-stack-old-backups-1", "password": "p"},
                                     "adopt": {"backupBucket": "gitea-stack-old-backups-1"}},
                                    "restoreFrom.bucket", "writes its own backups to"),
}


@pytest.mark.parametrize("changes, key, words", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_names_its_key_and_what_was_expected(changes, key, words):
    problems = problems_of(**changes)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"gitea-stack:{key}: "), problems[0]
    assert words in problems[0], problems[0]


def test_every_problem_is_reported_at_once():
    problems = problems_of(domain="nope", acmeEmail="x", adminSshPort=0, instanceType="big",
                           secretRecoveryWindowDays=5, typo="1")
    keys = sorted(problem.split(": ")[0] for problem in problems)
    assert keys == sorted(f"gitea-stack:{k}" for k in
                          ("domain", "acmeEmail", "adminSshPort", "instanceType", "secretRecoveryWindowDays", "typo"))


def test_the_error_message_lists_each_problem_on_its_own_line():
    with pytest.raises(SettingsError) as caught:
        parse(domain=None, acmeEmail=None)
    message = str(caught.value)
    assert message.startswith("the stack config has 2 problems:")
    assert "\n  - gitea-stack:domain: required" in message
    assert "\n  - gitea-stack:acmeEmail: required" in message


def test_every_documented_key_is_known():
    documented = {"domain", "hostedZone", "acmeEmail", "alertEmails", "adminUsername", "adminEmail",
                  "sshAllowedCidrs", "adminSshPort", "gitSshPort", "instanceType", "rootVolumeGiB",
                  "dataVolumeGiB", "backupRetentionDays", "retainDataOnDestroy", "secretRecoveryWindowDays",
                  "images", "acmeServer", "awsEndpointUrl", "extraEgressPorts", "auditLogRetentionDays",
                  "adopt", "snapshotRetentionDays", "backupSchedule", "restoreFrom",
                  "metricsRetentionDays", "logsRetentionDays"}
    assert set(KEY_NAMES) == documented


OLD_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gitea-stack/old/restic-password-AbCdEf"


def test_no_restore_by_default():
    assert parse().restore_from is None


def test_restore_from_a_password_secret_reads_in_the_arns_region():
    source = parse(restoreFrom={"bucket": "gitea-stack-old-backups-1", "passwordSecret": OLD_SECRET_ARN}).restore_from
    assert (source.bucket, source.password_secret_arn, source.password) == (
        "gitea-stack-old-backups-1", OLD_SECRET_ARN, "")
    assert source.region == "eu-west-1" and source.region_or("eu-central-1") == "eu-west-1"


def test_restore_from_a_password_reads_in_the_stacks_region_unless_told():
    source = parse(restoreFrom='{"bucket": "gitea-stack-old-backups-1", "password": "old restic password"}').restore_from
    assert source.password == "old restic password" and source.password_secret_arn == ""
    assert source.region_or("eu-central-1") == "eu-central-1"
    told = parse(restoreFrom={"bucket": "gitea-stack-old-backups-1", "password": "p", "region": "us-gov-west-1"})
    assert told.restore_from.region_or("eu-central-1") == "us-gov-west-1"


def test_an_explicit_region_wins_over_the_arns():
    source = parse(restoreFrom={"bucket": "old-backups", "passwordSecret": OLD_SECRET_ARN, "region": "eu-north-1"})
    assert source.restore_from.region == "eu-north-1"


@pytest.mark.parametrize("arn", [
    OLD_SECRET_ARN,
    "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:restic-AbCdEf",
    "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:a/b_c+d=e.f@g-h",
])
def test_secret_arns_of_every_partition(arn):
    assert parse(restoreFrom={"bucket": "old-backups", "passwordSecret": arn}).restore_from.password_secret_arn == arn


def test_the_restore_password_is_never_shown():
    password = "canary-restic-password-8d1f"
    settings = parse(restoreFrom={"bucket": "old-backups", "password": password})
    assert password not in repr(settings)
    for bad in ({"bucket": "Bad_Bucket", "password": password}, {"bucket": "old-backups", "password": password,
                                                                 "region": "nowhere"},
                {"bucket": "old-backups", "password": password, "passwordSecret": "x"},
                {"bucket": "old-backups", "password": password, "pasword": password}):
        assert password not in "\n".join(problems_of(restoreFrom=bad))


def test_a_password_still_encrypted_in_the_stack_file_is_accepted_outside_the_engine():
    # preflight and render read the stack file, where a secret config value is ciphertext.
    source = parse(restoreFrom={"bucket": "old-backups", "password": {"secure": "v1:AAABBB"}}).restore_from
    assert source.password == ENCRYPTED_PASSWORD
