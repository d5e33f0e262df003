"""Backup bucket and its access-log bucket: private, encrypted, versioned, TLS-only, expiring, every
request to the backups logged where the host cannot reach, and both kept on destroy by default."""

from __future__ import annotations

import json

import pytest

BUCKET = "aws:s3/bucket:Bucket"
SETTINGS_TYPES = (
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
    "aws:s3/bucketVersioning:BucketVersioning",
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
    "aws:s3/bucketPolicy:BucketPolicy",
)
LOGGING = "aws:s3/bucketLogging:BucketLogging"
BUCKETS = {"backups": "gitea-stack-prod-backups-", "backups-access-logs": "gitea-stack-prod-logs-"}


def configuration(run, bucket_name, settings_type):
    bucket = run.named(f"{bucket_name}-bucket")
    (found,) = [r for r in run.of_type(settings_type) if r.property_dependencies.get("bucket") == [bucket.urn]]
    return found


@pytest.mark.parametrize("name", BUCKETS)
def test_each_bucket_is_private_encrypted_and_versioned(example_run, name):
    bucket = example_run.named(f"{name}-bucket")
    assert bucket.inputs["bucketPrefix"] == BUCKETS[name]
    assert configuration(example_run, name, SETTINGS_TYPES[0]).inputs == {
        "bucket": f"{BUCKETS[name]}mock", "blockPublicAcls": True, "blockPublicPolicy": True,
        "ignorePublicAcls": True, "restrictPublicBuckets": True}
    assert configuration(example_run, name, SETTINGS_TYPES[1]).inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    assert configuration(example_run, name, SETTINGS_TYPES[2]).inputs["versioningConfiguration"] == {"status": "Enabled"}
    encryption = configuration(example_run, name, SETTINGS_TYPES[3]).inputs["rules"][0]
    # SSE-S3: the only encryption S3 server access-log delivery writes into.
    assert encryption["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}


def test_backup_lifecycle_follows_backup_retention(run_with):
    rules = configuration(run_with(backupRetentionDays=45), "backups", SETTINGS_TYPES[4]).inputs["rules"]
    by_id = {rule["id"]: rule for rule in rules}
    assert set(by_id) == {"expire-noncurrent-versions", "abort-incomplete-multipart-uploads"}
    assert by_id["expire-noncurrent-versions"]["noncurrentVersionExpiration"] == {"noncurrentDays": 45}
    assert by_id["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": 7}
    assert all(rule["status"] == "Enabled" for rule in rules)


def test_access_logs_expire_after_the_audit_retention(run_with):
    rules = configuration(run_with(auditLogRetentionDays=365), "backups-access-logs", SETTINGS_TYPES[4]).inputs["rules"]
    by_id = {rule["id"]: rule for rule in rules}
    assert by_id["expire-access-logs"]["expiration"] == {"days": 365}
    assert by_id["expire-noncurrent-versions"]["noncurrentVersionExpiration"] == {"noncurrentDays": 30}


def tls_deny(arn):
    return {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def test_backup_bucket_policy_denies_every_request_without_tls(example_run):
    policy = configuration(example_run, "backups", SETTINGS_TYPES[5])
    assert json.loads(policy.inputs["policy"])["Statement"] == [tls_deny("arn:aws:s3:::gitea-stack-prod-backups-mock")]
    assert configuration(example_run, "backups", SETTINGS_TYPES[0]).urn in policy.dependencies


def test_only_s3_logging_of_the_backup_bucket_may_write_access_logs(example_run):
    policy = configuration(example_run, "backups-access-logs", SETTINGS_TYPES[5])
    logs_arn = "arn:aws:s3:::gitea-stack-prod-logs-mock"
    assert json.loads(policy.inputs["policy"])["Statement"] == [tls_deny(logs_arn), {
        "Sid": "S3ServerAccessLogsDelivery", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject", "Resource": f"{logs_arn}/backup-bucket/*",
        "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::gitea-stack-prod-backups-mock"},
                      "StringEquals": {"aws:SourceAccount": "123456789012"}}}]


def test_every_backup_bucket_request_is_logged_to_the_log_bucket(example_run):
    logging = example_run.one(LOGGING)
    assert logging.property_dependencies["bucket"] == [example_run.named("backups-bucket").urn]
    assert logging.property_dependencies["targetBucket"] == [example_run.named("backups-access-logs-bucket").urn]
    assert logging.inputs["targetPrefix"] == "backup-bucket/"
    assert logging.inputs["targetObjectKeyFormat"] == {"partitionedPrefix": {"partitionDateSource": "EventTime"}}
    # Delivery needs the log bucket's policy in place first.
    assert configuration(example_run, "backups-access-logs", SETTINGS_TYPES[5]).urn in logging.dependencies


def test_the_host_cannot_touch_the_access_logs(example_run):
    host_policies = [r.inputs["policy"] for r in example_run.of_type("aws:iam/rolePolicy:RolePolicy")
                     if r.name.startswith("host-")]
    assert host_policies and not any("gitea-stack-prod-logs-" in policy for policy in host_policies)


@pytest.mark.parametrize("retain", [True, False])
def test_destroy_keeps_or_deletes_both_buckets_as_configured(run_with, retain):
    run = run_with(retainDataOnDestroy=retain)
    for name in BUCKETS:
        bucket = run.named(f"{name}-bucket")
        assert bucket.retain_on_delete is retain
        assert bucket.inputs["forceDestroy"] is (not retain)
        assert all(configuration(run, name, t).retain_on_delete is retain for t in SETTINGS_TYPES)
        assert not bucket.protect  # protect would make `pulumi destroy` fail instead of leaving the bucket
    assert run.one(LOGGING).retain_on_delete is retain
