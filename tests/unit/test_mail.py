"""Mail: SES domain identity with DKIM, custom MAIL FROM, SPF, DMARC, recipients and a send-only SMTP user."""

from __future__ import annotations

import json

from tests.harness.pulumi_mocks import DKIM_TOKENS

RECORD = "aws:route53/record:Record"
IDENTITY = "aws:sesv2/emailIdentity:EmailIdentity"


def records(run):
    return {(r.inputs["name"], r.inputs["type"]): r.inputs["records"] for r in run.of_type(RECORD)}


def test_dns_records_authenticate_the_domain(example_run):
    found = records(example_run)
    for token in DKIM_TOKENS:
        assert found[(f"{token}._domainkey.git.example.com", "CNAME")] == [f"{token}.dkim.amazonses.com"]
    assert found[("mail.git.example.com", "MX")] == ["10 feedback-smtp.eu-central-1.amazonses.com"]
    assert found[("mail.git.example.com", "TXT")] == ["v=spf1 include:amazonses.com ~all"]
    assert found[("_dmarc.git.example.com", "TXT")] == ["v=DMARC1; p=quarantine; adkim=r; aspf=r"]
    assert all(r.inputs["zoneId"] == "Z0MOCKZONE" for r in example_run.of_type(RECORD))


def test_identities_cover_the_domain_and_every_alert_address(example_run):
    assert {r.inputs["emailIdentity"] for r in example_run.of_type(IDENTITY)} == {
        "git.example.com", "ops@example.com", "oncall@example.com"}
    mail_from = example_run.one("aws:sesv2/emailIdentityMailFromAttributes:EmailIdentityMailFromAttributes")
    assert mail_from.inputs["mailFromDomain"] == "mail.git.example.com"
    assert mail_from.inputs["behaviorOnMxFailure"] == "USE_DEFAULT_VALUE"


def test_smtp_user_may_only_send_and_only_from_the_domain(example_run):
    (statement,) = json.loads(example_run.one("aws:iam/userPolicy:UserPolicy").inputs["policy"])["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["ses:SendEmail", "ses:SendRawEmail"]
    assert statement["Condition"] == {"StringLike": {"ses:FromAddress": "*@git.example.com"}}
    arn = "arn:aws:ses:eu-central-1:123456789012:identity/"
    assert statement["Resource"] == sorted(f"{arn}{i}" for i in ("git.example.com", "ops@example.com",
                                                                  "oncall@example.com"))
    assert not example_run.of_type("aws:iam/userPolicyAttachment:UserPolicyAttachment")


def test_smtp_credentials_are_stored_as_a_secret_with_the_endpoint(example_run):
    version = example_run.named("mail-smtp-credentials-value")
    credentials = json.loads(version.inputs["secretString"])
    assert credentials == {"host": "email-smtp.eu-central-1.amazonaws.com", "port": 587,
                           "username": "AKIAMOCKSMTPUSER0001", "password": "MOCK-SMTP-PASSWORD"}
    assert example_run.named("mail-smtp-key").urn in version.property_dependencies["secretString"]
