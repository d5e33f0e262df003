"""Backup bucket: the restic repository's home. Private, encrypted, versioned, TLS-only, and its
every request logged to a separate access-log bucket the host cannot touch, so a compromised host
that deletes backups leaves a record it cannot erase."""

from __future__ import annotations

import json
from collections.abc import Callable

import pulumi
import pulumi_aws as aws

from gitea_stack import iam_documents
from gitea_stack.settings import Settings, own_backup_bucket_prefix

ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS = 7
# Overwritten or deleted log objects stay this long (versioning), beyond the retention of live ones.
ACCESS_LOG_NONCURRENT_DAYS = 30
ACCESS_LOG_PREFIX = "backup-bucket/"

# Builds the bucket policy document from the bucket's ARN (an Output: the bucket is new).
PolicyDocument = Callable[[pulumi.Output[str]], pulumi.Output[iam_documents.Document]]


def _private_bucket(component: pulumi.ComponentResource, name: str, prefix: str, settings: Settings,
                    lifecycle_rules: list[dict], policy: PolicyDocument) -> tuple[aws.s3.Bucket, aws.s3.BucketPolicy]:
    """A bucket with every protection this stack gives its buckets: all public access blocked,
    ACLs off, versioning, default encryption, a lifecycle and a TLS-only bucket policy.

    With `retainDataOnDestroy` (the default) `pulumi destroy` leaves the bucket with its contents and
    its settings; without it the bucket is emptied (all versions) and deleted.
    """
    retain = settings.retain_data_on_destroy
    bucket = aws.s3.Bucket(
        f"{name}-bucket", bucket_prefix=prefix, force_destroy=not retain, tags=settings.tags,
        opts=pulumi.ResourceOptions(parent=component, retain_on_delete=retain))
    # The bucket's settings are separate resources in pulumi-aws 7. They are retained with the
    # bucket, so a destroy never strips protection from a bucket that stays behind.
    keep = pulumi.ResourceOptions(parent=component, retain_on_delete=retain)
    public_access_block = aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access-block", bucket=bucket.id, block_public_acls=True,
        block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True, opts=keep)
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=keep)
    aws.s3.BucketVersioning(
        f"{name}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=keep)
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption", bucket=bucket.id,
        # SSE-S3: free, no KMS request charges on restic's many small objects (restic also encrypts
        # every object client-side), and the only encryption S3 access-log delivery supports.
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
        opts=keep)
    aws.s3.BucketLifecycleConfiguration(
        f"{name}-lifecycle", bucket=bucket.id,
        rules=[*lifecycle_rules, {
            "id": "abort-incomplete-multipart-uploads",
            "status": "Enabled",
            "filter": {},
            "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS},
        }],
        opts=keep)
    bucket_policy = aws.s3.BucketPolicy(
        f"{name}-policy", bucket=bucket.id, policy=policy(bucket.arn).apply(json.dumps),
        # S3 rejects a bucket policy while the public-access block is still being applied.
        opts=pulumi.ResourceOptions(parent=component, retain_on_delete=retain, depends_on=[public_access_block]))
    return bucket, bucket_policy


def _expire_noncurrent(days: int) -> dict:
    return {"id": "expire-noncurrent-versions", "status": "Enabled", "filter": {},
            "noncurrent_version_expiration": {"noncurrent_days": days}}


class AccessLogBucket(pulumi.ComponentResource):
    """Where S3 writes the backup bucket's server access logs, kept for `auditLogRetentionDays`.

    Nothing on the host can read or write it: the instance role names only the backup bucket.
    """

    def __init__(self, name: str, settings: Settings, account_id: str, source_bucket_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:storage:AccessLogBucket", name, None, opts)

        def policy(log_bucket_arn: pulumi.Output[str]) -> pulumi.Output[iam_documents.Document]:
            return pulumi.Output.all(log_bucket_arn, source_bucket_arn).apply(lambda arns: iam_documents.bucket_policy(
                iam_documents.deny_insecure_transport(arns[0]),
                iam_documents.access_log_delivery(arns[0], ACCESS_LOG_PREFIX, arns[1], account_id)))

        self.bucket, self.policy = _private_bucket(
            self, name, f"gitea-stack-{settings.stack}-logs-", settings,
            lifecycle_rules=[
                {"id": "expire-access-logs", "status": "Enabled", "filter": {},
                 "expiration": {"days": settings.audit_log_retention_days}},
                _expire_noncurrent(ACCESS_LOG_NONCURRENT_DAYS),
            ],
            policy=policy)
        self.register_outputs({"bucket_name": self.bucket.bucket})


class BackupBucket(pulumi.ComponentResource):
    """S3 bucket for backups, with its access logs in a bucket of their own (`access_logs`)."""

    def __init__(self, name: str, settings: Settings, account_id: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:storage:BackupBucket", name, None, opts)
        self.bucket, _ = _private_bucket(
            self, name, own_backup_bucket_prefix(settings.stack), settings,
            lifecycle_rules=[_expire_noncurrent(settings.backup_retention_days)],
            policy=lambda arn: arn.apply(iam_documents.deny_insecure_transport))
        self.access_logs = AccessLogBucket(f"{name}-access-logs", settings, account_id, self.bucket.arn,
                                           opts=pulumi.ResourceOptions(parent=self))
        aws.s3.BucketLogging(
            f"{name}-access-logging", bucket=self.bucket.id, target_bucket=self.access_logs.bucket.id,
            target_prefix=ACCESS_LOG_PREFIX,
            # Date-partitioned keys, so a day's requests can be found (and queried) without a scan.
            target_object_key_format={"partitioned_prefix": {"partition_date_source": "EventTime"}},
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=settings.retain_data_on_destroy,
                                        depends_on=[self.access_logs.policy]))
        self.register_outputs({"bucket_name": self.bucket.bucket, "bucket_arn": self.bucket.arn})
