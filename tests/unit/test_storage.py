"""Backup bucket: private, encrypted, versioned, TLS-only, expiring, and kept on destroy by default."""

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


def test_bucket_settings(example_run):
    bucket = example_run.one(BUCKET)
    assert bucket.inputs["bucketPrefix"] == "gitea-stack-prod-backups-"
    assert example_run.one(SETTINGS_TYPES[0]).inputs == {
        "bucket": "gitea-stack-prod-backups-mock", "blockPublicAcls": True, "blockPublicPolicy": True,
        "ignorePublicAcls": True, "restrictPublicBuckets": True}
    assert example_run.one(SETTINGS_TYPES[1]).inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    assert example_run.one(SETTINGS_TYPES[2]).inputs["versioningConfiguration"] == {"status": "Enabled"}
    encryption = example_run.one(SETTINGS_TYPES[3]).inputs["rules"][0]
    assert encryption["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    for settings_type in SETTINGS_TYPES:
        assert example_run.one(settings_type).property_dependencies["bucket"] == [bucket.urn]


def test_lifecycle_follows_backup_retention(run_with):
    rules = run_with(backupRetentionDays=45).one(SETTINGS_TYPES[4]).inputs["rules"]
    by_id = {rule["id"]: rule for rule in rules}
    assert by_id["expire-noncurrent-versions"]["noncurrentVersionExpiration"] == {"noncurrentDays": 45}
    assert by_id["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": 7}
    assert all(rule["status"] == "Enabled" for rule in rules)


def test_policy_denies_every_request_without_tls(example_run):
    policy = json.loads(example_run.one(SETTINGS_TYPES[5]).inputs["policy"])
    (statement,) = policy["Statement"]
    arn = "arn:aws:s3:::gitea-stack-prod-backups-mock"
    assert statement == {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                         "Resource": [arn, f"{arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    public_access_block = example_run.one(SETTINGS_TYPES[0])
    assert public_access_block.urn in example_run.one(SETTINGS_TYPES[5]).dependencies


@pytest.mark.parametrize("retain", [True, False])
def test_destroy_keeps_or_deletes_the_bucket_as_configured(run_with, retain):
    run = run_with(retainDataOnDestroy=retain)
    bucket = run.one(BUCKET)
    assert bucket.retain_on_delete is retain
    assert bucket.inputs["forceDestroy"] is (not retain)
    assert all(run.one(t).retain_on_delete is retain for t in SETTINGS_TYPES)
    assert not bucket.protect  # protect would make `pulumi destroy` fail instead of leaving the bucket
