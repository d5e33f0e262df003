"""Mail: SES sending for the stack's domain, authenticated so mail arrives (DKIM, SPF, DMARC).

Gitea and the host's notifications send through SES SMTP with a dedicated IAM user that may only
send, only from the domain. Its SMTP password (derived by pulumi-aws) goes to Secrets Manager.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from gitea_stack import iam_documents
from gitea_stack.secrets import store_secret
from gitea_stack.settings import Settings

DKIM_TOKEN_COUNT = 3  # SES Easy DKIM always issues three tokens
RECORD_TTL = 600
SMTP_PORT = 587
SPF_RECORD = "v=spf1 include:amazonses.com ~all"
# Quarantine what fails both DKIM and SPF alignment; everything this stack sends passes DKIM.
DMARC_RECORD = "v=DMARC1; p=quarantine; adkim=r; aspf=r"


def smtp_endpoint(region: str) -> str:
    return f"email-smtp.{region}.amazonaws.com"


class Mail(pulumi.ComponentResource):
    """SES domain identity, its DNS records, recipient identities and the send-only SMTP user."""

    def __init__(self, name: str, settings: Settings, zone_id: pulumi.Input[str], region: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("gitea-stack:mail:Mail", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        domain = settings.domain

        self.domain_identity = aws.sesv2.EmailIdentity(
            f"{name}-domain", email_identity=domain, tags=settings.tags, opts=child)
        tokens = self.domain_identity.dkim_signing_attributes.apply(lambda attributes: attributes.tokens)
        for index in range(DKIM_TOKEN_COUNT):
            token = tokens.apply(lambda values, i=index: values[i])
            self._record(f"{name}-dkim-{index}", zone_id, token.apply(lambda t: f"{t}._domainkey.{domain}"),
                         "CNAME", [token.apply(lambda t: f"{t}.dkim.amazonses.com")])

        aws.sesv2.EmailIdentityMailFromAttributes(
            f"{name}-mail-from", email_identity=self.domain_identity.email_identity,
            mail_from_domain=settings.mail_from_domain, behavior_on_mx_failure="USE_DEFAULT_VALUE", opts=child)
        self._record(f"{name}-mail-from-mx", zone_id, settings.mail_from_domain, "MX",
                     [f"10 feedback-smtp.{region}.amazonses.com"])
        self._record(f"{name}-mail-from-spf", zone_id, settings.mail_from_domain, "TXT", [SPF_RECORD])
        self._record(f"{name}-dmarc", zone_id, f"_dmarc.{domain}", "TXT", [DMARC_RECORD])

        # In the SES sandbox mail only reaches verified addresses: each alert address gets a
        # verification mail on first deploy.
        self.recipient_identities = [
            aws.sesv2.EmailIdentity(f"{name}-recipient-{index}", email_identity=address, tags=settings.tags,
                                    opts=child)
            for index, address in enumerate(settings.alert_emails)
        ]
        self.identity_arns = pulumi.Output.all(
            self.domain_identity.arn, *(identity.arn for identity in self.recipient_identities))

        smtp_user = aws.iam.User(f"{name}-smtp", path="/gitea-stack/", tags=settings.tags, opts=child)
        aws.iam.UserPolicy(
            f"{name}-smtp-send-only", user=smtp_user.name,
            policy=self.identity_arns.apply(
                lambda arns: json.dumps(iam_documents.send_mail_from_domain(list(arns), domain))),
            opts=child)
        access_key = aws.iam.AccessKey(f"{name}-smtp-key", user=smtp_user.name, opts=child)
        credentials = pulumi.Output.json_dumps({
            "host": smtp_endpoint(region),
            "port": SMTP_PORT,
            "username": access_key.id,
            "password": access_key.ses_smtp_password_v4,
        })
        # Not retained: the key dies with the IAM user on destroy, so a kept copy would be useless.
        self.smtp_secret = store_secret(f"{name}-smtp-credentials", "smtp-credentials", credentials, settings,
                                        parent=self, retain=False)

        self.register_outputs({"domain_identity_arn": self.domain_identity.arn,
                               "smtp_secret_name": self.smtp_secret.name})

    def _record(self, resource_name: str, zone_id: pulumi.Input[str], record_name: pulumi.Input[str],
                record_type: str, records: list) -> aws.route53.Record:
        return aws.route53.Record(resource_name, zone_id=zone_id, name=record_name, type=record_type,
                                  ttl=RECORD_TTL, records=records, opts=pulumi.ResourceOptions(parent=self))
