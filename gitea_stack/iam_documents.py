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
