"""Backup bucket: the restic repository's home. Private, encrypted, versioned, TLS-only."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from gitea_stack import iam_documents
from gitea_stack.settings import Settings

ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS = 7


class BackupBucket(pulumi.ComponentResource):
    """S3 bucket for backups.

    With `retainDataOnDestroy` (the default) `pulumi destroy` leaves the bucket and every backup in
    it; without it the bucket is emptied (all versions) and deleted.
    """

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:storage:BackupBucket", name, None, opts)
        retain = settings.retain_data_on_destroy

        self.bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket_prefix=f"gitea-stack-{settings.stack}-backups-",
            force_destroy=not retain,
            tags=settings.tags,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=retain),
        )
        # The bucket's settings are separate resources in pulumi-aws 7. They are retained with the
        # bucket, so a destroy never strips protection from a bucket that stays behind.
        keep = pulumi.ResourceOptions(parent=self, retain_on_delete=retain)
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access-block", bucket=self.bucket.id, block_public_acls=True,
            block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True, opts=keep)
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership", bucket=self.bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"}, opts=keep)
        aws.s3.BucketVersioning(
            f"{name}-versioning", bucket=self.bucket.id,
            versioning_configuration={"status": "Enabled"}, opts=keep)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", bucket=self.bucket.id,
            # SSE-S3: free, no KMS request charges on restic's many small objects. restic also
            # encrypts every object client-side with the repository password.
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"},
                    "bucket_key_enabled": True}],
            opts=keep)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=self.bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": settings.backup_retention_days},
                },
                {
                    "id": "abort-incomplete-multipart-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {
                        "days_after_initiation": ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS},
                },
            ],
            opts=keep)
        aws.s3.BucketPolicy(
            f"{name}-tls-only", bucket=self.bucket.id,
            policy=self.bucket.arn.apply(lambda arn: json.dumps(iam_documents.deny_insecure_transport(arn))),
            # S3 rejects a bucket policy while the public-access block is still being applied.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=retain, depends_on=[self.public_access_block]))

        self.register_outputs({"bucket_name": self.bucket.bucket, "bucket_arn": self.bucket.arn})
