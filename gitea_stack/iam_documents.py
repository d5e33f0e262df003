"""IAM policy documents as plain data (pure), so least privilege can be read and tested directly.

Each function takes the ARNs of this stack's own resources; nothing here grants `*` on `*`.
"""

from __future__ import annotations

from typing import Any

Document = dict[str, Any]


def _document(*statements: dict[str, Any]) -> Document:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def ec2_assume_role() -> Document:
    return _document({
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    })


def backup_bucket_access(bucket_arn: str) -> Document:
    """What restic needs on its repository: list, read, write and delete (prune, locks). Nothing else."""
    return _document(
        {
            "Sid": "ListBackupBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": bucket_arn,
        },
        {
            "Sid": "ReadWriteBackupObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": f"{bucket_arn}/*",
        },
    )


def read_restore_source(bucket_arn: str, password_secret_arn: str) -> Document:
    """What a restore (`restoreFrom`) needs of the old stack: read its bucket and its restic password.

    Read only: the old backups must come out of a restore exactly as they went in, so nothing
    here writes or deletes (restic reads them with --no-lock, which writes no lock object).
    """
    return _document(
        {
            "Sid": "ListRestoreSourceBucket",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
        },
        {
            "Sid": "ReadRestoreSourceObjects",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{bucket_arn}/*",
        },
        {
            "Sid": "ReadRestoreSourcePassword",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": password_secret_arn,
        },
    )


def read_secrets(secret_arns: list[str]) -> Document:
    """Read access to exactly this stack's secrets, listed one by one."""
    return _document({
        "Sid": "ReadStackSecrets",
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
        "Resource": sorted(secret_arns),
    })


def send_mail_from_domain(identity_arns: list[str], domain: str) -> Document:
    """Sending through SES, only from addresses in the stack's domain.

    The resources are the stack's own identities: the domain, plus the verified recipient
    addresses, because in the SES sandbox a send is authorised against the recipients too.
    """
    return _document({
        "Sid": "SendAsStackDomain",
        "Effect": "Allow",
        "Action": ["ses:SendEmail", "ses:SendRawEmail"],
        "Resource": sorted(identity_arns),
        "Condition": {"StringLike": {"ses:FromAddress": f"*@{domain}"}},
    })


def deny_insecure_transport(bucket_arn: str) -> Document:
    """Bucket policy: refuse every request that does not use TLS."""
    return _document({
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })


def bucket_policy(*statement_groups: Document) -> Document:
    """One bucket policy made of the statements of several documents (S3 takes one policy per bucket)."""
    return _document(*(statement for group in statement_groups for statement in group["Statement"]))


def access_log_delivery(log_bucket_arn: str, prefix: str, source_bucket_arn: str, account_id: str) -> Document:
    """Lets S3's logging service write the source bucket's access logs below `prefix` of the log bucket.

    With ACLs disabled (BucketOwnerEnforced), S3 server access logging is granted by bucket policy.
    """
    return _document({
        "Sid": "S3ServerAccessLogsDelivery",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": f"{log_bucket_arn}/{prefix}*",
        "Condition": {
            "ArnLike": {"aws:SourceArn": source_bucket_arn},
            "StringEquals": {"aws:SourceAccount": account_id},
        },
    })


def flow_logs_assume_role(account_id: str, partition: str, region: str) -> Document:
    """VPC Flow Logs may assume the delivery role, for this account's flow logs only (confused deputy)."""
    return _document({
        "Effect": "Allow",
        "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {
            "StringEquals": {"aws:SourceAccount": account_id},
            "ArnLike": {"aws:SourceArn": f"arn:{partition}:ec2:{region}:{account_id}:vpc-flow-log/*"},
        },
    })


def flow_logs_delivery(log_group_arn: str) -> Document:
    """What VPC Flow Logs needs to write into its (existing) log group, as AWS documents it. Nothing else."""
    return _document(
        {
            "Sid": "WriteFlowLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            "Resource": [log_group_arn, f"{log_group_arn}:log-stream:*"],
        },
        {
            # The delivery looks its group up by listing; a listing names no single resource.
            "Sid": "FindTheLogGroup",
            "Effect": "Allow",
            "Action": "logs:DescribeLogGroups",
            "Resource": "*",
        },
    )


def log_group_key_policy(account_id: str, partition: str, logs_principal: str, log_group_arn: str) -> Document:
    """KMS key policy: the account administers the key; CloudWatch Logs uses it for one log group only."""
    return _document(
        {
            # Without this statement no IAM policy could ever manage the key again (AWS's default).
            "Sid": "AccountAdministersTheKey",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "CloudWatchLogsEncryptsOneLogGroup",
            "Effect": "Allow",
            "Principal": {"Service": logs_principal},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*",
            "Condition": {"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": log_group_arn}},
        },
    )


def dlm_assume_role(account_id: str) -> Document:
    """Data Lifecycle Manager may assume the snapshot role, for this account only (confused deputy)."""
    return _document({
        "Effect": "Allow",
        "Principal": {"Service": "dlm.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
    })


def dlm_service_policy_arn(partition: str) -> str:
    """AWS's policy for DLM's EBS snapshot policies: create, tag and delete snapshots, nothing else."""
    return f"arn:{partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
