"""Status: `python -m gitea_stack status --stack prod` answers "is my forge all right?" from the
operator's machine: SES (domain, DKIM, MAIL FROM, sandbox, alert addresses), the latest backup and EBS
snapshot, the instance's status checks and auto-recovery alarm, the live site's certificate, and the
secrets the host needs. Read-only: it never reads a secret's value.

Each `judge_*` function turns AWS's answer (plain data) into a `StatusResult`; the `check_*`
functions only ask AWS (boto3 clients, which honour AWS_ENDPOINT_URL) or the site, then judge.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from gitea_stack.checks import (
    AWS_CLIENT_CONFIG,
    FAIL,
    OK,
    SES_PRODUCTION_ACCESS_URL,
    WARN,
    CheckResult,
    aws_error_result,
    error_code,
    format_table_with_verdicts,
    stack_session,
    summarise,
)
from gitea_stack.cli import StackFileProblem, read_stack, stack_region
from gitea_stack.schedules import longest_gap
from gitea_stack.settings import Settings
from gitea_stack.stack_outputs import OutputsProblem, outputs_from_pulumi, read_outputs_file, require_outputs

# What the checks need from `pulumi stack output --json`, and its type.
REQUIRED_OUTPUTS: Mapping[str, type] = {
    "backupBucket": str, "instanceId": str, "dataVolumeId": str, "recoveryAlarmName": str, "secretNames": dict,
}
BACKUP_STATUS_KEY = "status/backup.json"  # where backup.sh puts its status JSON (STATUS_KEY)
# A schedule `longest_gap` does not understand is assumed daily: a backup older than two days fails.
FALLBACK_BACKUP_GAP = timedelta(days=1)
# DLM snapshots the data volume once a day (03:00 UTC, started within the hour): two days is one missed.
SNAPSHOT_MAX_AGE = timedelta(days=2)
CERTIFICATE_FAIL_DAYS = 14
# host:port to connect to instead of the domain's port 443; the certificate is still verified for
# the domain (tests point it at a loopback server; SSL_CERT_FILE names the CA to trust).
HTTPS_ADDRESS_VARIABLE = "GITEA_STACK_STATUS_HTTPS_ADDRESS"
TLS_TIMEOUT_SECONDS = 10
HOST_SCRIPTS = "/opt/gitea-stack/scripts"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StatusResult(CheckResult):
    action: str = ""  # what to do first, for a line that is not OK


def not_checked(check: str, call: str, error: Exception) -> StatusResult:
    """An AWS call that failed: a FAIL for refused credentials, else a WARN "could not check"."""
    result = aws_error_result(check, call, error)
    action = ("renew or fix the AWS credentials for the stack's account (aws sso login, aws configure)"
              if result.status == FAIL else f"make sure your credentials may call {call} (read-only)")
    return StatusResult(result.check, result.status, result.detail, action)


@dataclass(frozen=True)
class ForgeFacts:
    """What the checks need to know of one deployed stack: its settings and outputs."""
    stack: str
    region: str
    domain: str
    mail_from_domain: str
    alert_emails: tuple[str, ...]
    backup_schedule: str
    backup_bucket: str
    instance_id: str
    data_volume_id: str
    recovery_alarm_name: str
    secret_names: Mapping[str, str]
    snapshot_policy_id: str = ""

    @classmethod
    def of_stack(cls, settings: Settings, outputs: Mapping[str, Any], region: str) -> ForgeFacts:
        return cls(stack=settings.stack, region=region, domain=settings.domain,
                   mail_from_domain=settings.mail_from_domain, alert_emails=tuple(settings.alert_emails),
                   backup_schedule=settings.backup_schedule, backup_bucket=outputs["backupBucket"],
                   instance_id=outputs["instanceId"], data_volume_id=outputs["dataVolumeId"],
                   recovery_alarm_name=outputs["recoveryAlarmName"], secret_names=dict(outputs["secretNames"]),
                   snapshot_policy_id=str(outputs.get("snapshotPolicyId") or ""))


# --- wording ------------------------------------------------------------------------------------------

def human_duration(duration: timedelta) -> str:
    minutes = max(int(duration.total_seconds() // 60), 0)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else "under a minute"


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (backup.sh writes 2026-12-02T07:00:00Z), or a datetime boto3 parsed; None if neither."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- SES --------------------------------------------------------------------------------------------------

def find_identity(sesv2: Any, identity: str) -> dict[str, Any] | None:
    """sesv2:GetEmailIdentity, or None when SES has no such identity (other errors propagate)."""
    try:
        return sesv2.get_email_identity(EmailIdentity=identity)
    except ClientError as error:
        if error_code(error) == "NotFoundException":
            return None
        raise


def judge_domain_identity(domain: str, identity: Mapping[str, Any] | None) -> StatusResult:
    check = "SES domain"
    if identity is None:
        return StatusResult(check, FAIL, f"SES has no identity {domain}: the forge cannot send mail",
                            "run `pulumi up`: it creates the identity and its DNS records again")
    if identity.get("VerifiedForSendingStatus"):
        return StatusResult(check, OK, f"{domain} verified for sending")
    state = identity.get("VerificationStatus") or "not verified"
    return StatusResult(check, FAIL, f"{domain} is not verified for sending ({state}): SES sends no mail from it",
                        f"SES verifies the domain through its DKIM records: check that the three CNAME records "
                        f"<token>._domainkey.{domain} resolve (dig +short CNAME ...); `pulumi up` puts back "
                        "records that were removed")


def judge_dkim(domain: str, identity: Mapping[str, Any] | None) -> StatusResult:
    check = "SES DKIM"
    if identity is None:
        return StatusResult(check, FAIL, f"no SES identity {domain}, so no DKIM", "run `pulumi up`")
    dkim = identity.get("DkimAttributes") or {}
    state = dkim.get("Status", "NOT_STARTED")
    if not dkim.get("SigningEnabled", False):
        return StatusResult(check, FAIL, f"DKIM signing is off for {domain} (status {state}): receivers may "
                                         "reject or file the forge's mail as spam (DMARC p=quarantine)",
                            f"aws sesv2 put-email-identity-dkim-attributes --email-identity {domain} --signing-enabled")
    if state == "SUCCESS":
        return StatusResult(check, OK, "DKIM signing on, status SUCCESS")
    if state == "PENDING":
        return StatusResult(check, WARN, "DKIM status PENDING: SES is still looking for the CNAME records (it "
                                         "tries for up to 72 hours after they were created)",
                            f"wait; if it lasts, check the CNAME records <token>._domainkey.{domain}")
    return StatusResult(check, FAIL, f"DKIM status {state}: SES found no valid DKIM records for {domain}",
                        f"check the three CNAME records <token>._domainkey.{domain} in the hosted zone (`pulumi up` "
                        "puts them back); SES looks again once they resolve")


def judge_mail_from(mail_from_domain: str, region: str, identity: Mapping[str, Any] | None) -> StatusResult:
    check = "SES MAIL FROM"
    attributes = (identity or {}).get("MailFromAttributes") or {}
    configured = attributes.get("MailFromDomain", "")
    if configured != mail_from_domain:
        found = f"it is {configured}" if configured else "there is none"
        return StatusResult(check, FAIL, f"expected the custom MAIL FROM domain {mail_from_domain}; {found}, so "
                                         "SPF does not align with the forge's domain",
                            "run `pulumi up`: it sets the MAIL FROM domain and its MX and SPF records")
    state = attributes.get("MailFromDomainStatus", "")
    if state == "SUCCESS":
        return StatusResult(check, OK, f"{mail_from_domain}, status SUCCESS")
    records = (f"the MX record {mail_from_domain} -> 10 feedback-smtp.{region}.amazonses.com and its SPF TXT record "
               "(dig +short MX / TXT)")
    if state in ("PENDING", "TEMPORARY_FAILURE"):
        return StatusResult(check, WARN, f"{mail_from_domain}, status {state}: SES has not confirmed its MX "
                                         "record yet", f"wait; if it lasts, check {records}")
    return StatusResult(check, FAIL, f"{mail_from_domain}, status {state or 'unknown'}: SES sends with its own "
                                     "MAIL FROM (amazonses.com) meanwhile, so SPF does not align",
                        f"check {records}")


def production_access_command(region: str, domain: str) -> str:
    return (f"aws sesv2 put-account-details --region {region} --production-access-enabled --mail-type "
            f"TRANSACTIONAL --website-url https://{domain}/ --use-case-description 'notifications and password "
            f"resets of our Gitea forge' (or the SES console's Get set up page; see {SES_PRODUCTION_ACCESS_URL})")


def judge_ses_account(account: Mapping[str, Any], region: str, domain: str) -> StatusResult:
    check = "SES account"
    if account.get("SendingEnabled") is False or account.get("EnforcementStatus") == "SHUTDOWN":
        return StatusResult(check, FAIL, f"AWS has paused SES sending for this account in {region} (enforcement "
                                         f"status {account.get('EnforcementStatus', 'unknown')}): no mail leaves",
                            "read AWS's mail to the account and the SES console's Reputation metrics page; "
                            "ask AWS Support to re-enable sending once the cause is fixed")
    if not account.get("ProductionAccessEnabled", False):
        review = (account.get("Details") or {}).get("ReviewDetails") or {}
        if review.get("Status") == "PENDING":
            return StatusResult(check, WARN, f"in the SES sandbox in {region}; production access requested "
                                             f"(case {review.get('CaseId', '?')}), AWS's review pending",
                                "wait for AWS's answer; until then only verified addresses receive mail")
        return StatusResult(check, FAIL, f"in the SES sandbox in {region}: mail reaches only verified addresses "
                                         "(the alert addresses), not the forge's users",
                            f"request production access: {production_access_command(region, domain)}")
    if account.get("EnforcementStatus") == "PROBATION":
        return StatusResult(check, WARN, f"production access in {region}, but AWS put the account on probation "
                                         "(bounces or complaints)", "see the SES console's Reputation metrics page")
    return StatusResult(check, OK, f"production access in {region}, sending enabled")


def judge_alert_address(address: str, identity: Mapping[str, Any] | None, in_sandbox: bool | None) -> StatusResult:
    check = f"alert {address}"
    if identity and identity.get("VerifiedForSendingStatus"):
        return StatusResult(check, OK, "verified")
    what = "not verified" if identity else "no SES identity"
    if in_sandbox is False:
        return StatusResult(check, OK, f"{what}, which production access does not need")
    action = (f"click the link in AWS's verification mail to {address}; to have it sent again: aws ses "
              f"verify-email-identity --email-address {address}" if identity
              else "run `pulumi up`: it creates the identity and AWS mails the address a verification link")
    if in_sandbox is None:
        return StatusResult(check, WARN, f"{what}; whether that matters depends on the SES sandbox, which could "
                                         "not be checked", action)
    return StatusResult(check, FAIL, f"{what}: in the SES sandbox mail reaches only verified addresses, so alerts "
                                     "to it are lost", action)


def check_ses(sesv2: Any, facts: ForgeFacts, progress: Progress) -> list[StatusResult]:
    progress(f"asking SES about {facts.domain} in {facts.region}")
    try:
        identity = find_identity(sesv2, facts.domain)
        results = [judge_domain_identity(facts.domain, identity), judge_dkim(facts.domain, identity),
                   judge_mail_from(facts.mail_from_domain, facts.region, identity)]
    except (BotoCoreError, ClientError) as error:
        results = [not_checked(check, "sesv2:GetEmailIdentity", error)
                   for check in ("SES domain", "SES DKIM", "SES MAIL FROM")]
    progress("asking SES about the account (sandbox)")
    in_sandbox: bool | None = None
    try:
        account = sesv2.get_account()
        in_sandbox = not account.get("ProductionAccessEnabled", False)
        results.append(judge_ses_account(account, facts.region, facts.domain))
    except (BotoCoreError, ClientError) as error:
        results.append(not_checked("SES account", "sesv2:GetAccount", error))
    except NotImplementedError as error:  # in-process AWS stand-ins (moto) lack GetAccount
        results.append(StatusResult("SES account", WARN, f"could not check: this AWS endpoint does not implement "
                                                         f"sesv2:GetAccount ({error})"))
    for address in facts.alert_emails:
        try:
            results.append(judge_alert_address(address, find_identity(sesv2, address), in_sandbox))
        except (BotoCoreError, ClientError) as error:
            results.append(not_checked(f"alert {address}", "sesv2:GetEmailIdentity", error))
    return results


# --- backups and snapshots -----------------------------------------------------------------------------

def backup_bound(schedule: str) -> tuple[timedelta, str]:
    """How old the last successful backup may be (twice the schedule's longest gap), and why."""
    gap = longest_gap(schedule)
    if gap is None:
        return 2 * FALLBACK_BACKUP_GAP, (f"backupSchedule {schedule!r} is not a form this check reads, so it "
                                         f"assumes daily: {human_duration(2 * FALLBACK_BACKUP_GAP)}")
    return 2 * gap, f"twice the schedule's {human_duration(gap)} ({schedule})"


def judge_backup(status: Mapping[str, Any] | None, schedule: str, now: datetime, bucket: str) -> StatusResult:
    """`status` is backup.sh's status JSON (backup-support.py write-status), None when there is none."""
    check = "latest backup"
    on_host = (f"on the host (adminSshCommand): journalctl -u gitea-stack-backup.service -n 200, fix what it "
               f"names, then sudo {HOST_SCRIPTS}/backup.sh")
    if status is None:
        return StatusResult(check, FAIL, f"no s3://{bucket}/{BACKUP_STATUS_KEY}: no backup run has finished",
                            f"is the timer there? systemctl list-timers gitea-stack-backup.timer; then {on_host}")
    last_success = parse_time(status.get("last_success"))
    since = f"{human_duration(now - last_success)} ago ({stamp(last_success)})" if last_success else "never"
    if status.get("state") != "ok":
        finished = parse_time(status.get("finished"))
        when = f" at {stamp(finished)}" if finished else ""
        return StatusResult(check, FAIL, f"the last run failed{when}: {status.get('message') or 'no message'}; "
                                         f"last success: {since}", on_host)
    if last_success is None:
        return StatusResult(check, FAIL, "the status names no successful backup", on_host)
    bound, reason = backup_bound(schedule)
    added = status.get("bytes_added")
    size = f", {human_bytes(added)} added" if isinstance(added, int) else ""
    if now - last_success > bound:
        return StatusResult(check, FAIL, f"the last successful backup finished {since}: older than "
                                         f"{human_duration(bound)}, {reason}",
                            f"is the timer running? systemctl list-timers gitea-stack-backup.timer; {on_host}")
    return StatusResult(check, OK, f"finished {since}{size}; due within {human_duration(bound)}, {reason}")


def read_backup_status(s3: Any, bucket: str) -> dict[str, Any] | None:
    """backup.sh's status object; None when the bucket has none. ValueError when it is not a JSON object."""
    try:
        body = s3.get_object(Bucket=bucket, Key=BACKUP_STATUS_KEY)["Body"].read()
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    status = json.loads(body)
    if not isinstance(status, dict):
        raise ValueError(f"a JSON {type(status).__name__}, not an object")
    return status


def check_backup(s3: Any, facts: ForgeFacts, now: datetime) -> StatusResult:
    try:
        status = read_backup_status(s3, facts.backup_bucket)
    except (BotoCoreError, ClientError) as error:
        return not_checked("latest backup", "s3:GetObject", error)
    except ValueError as error:
        return StatusResult("latest backup", FAIL, f"s3://{facts.backup_bucket}/{BACKUP_STATUS_KEY} is not "
                                                   f"backup.sh's status JSON ({error})",
                            f"run sudo {HOST_SCRIPTS}/backup.sh on the host: it writes the object again")
    return judge_backup(status, facts.backup_schedule, now, facts.backup_bucket)


def judge_snapshots(volume_id: str, snapshots: Sequence[Mapping[str, Any]], volume_created: datetime | None,
                    now: datetime, policy_hint: str) -> StatusResult:
    """`snapshots` as ec2:DescribeSnapshots lists them for the volume."""
    check = "latest snapshot"
    action = f"check the DLM policy: {policy_hint} (ENABLED, and the data volume still carries its target tag)"
    newest_first = sorted(snapshots, key=lambda snapshot: snapshot["StartTime"], reverse=True)
    if newest_first and newest_first[0].get("State") == "error":
        failed = newest_first[0]
        return StatusResult(check, FAIL, f"the newest snapshot of {volume_id}, {failed['SnapshotId']} (started "
                                         f"{stamp(failed['StartTime'])}), failed: {failed.get('StateMessage', '')}",
                            action)
    completed = [snapshot for snapshot in newest_first if snapshot.get("State") == "completed"]
    in_progress = " (a newer one is in progress)" if newest_first and newest_first[0].get("State") == "pending" else ""
    if not completed:
        if volume_created and now - volume_created < SNAPSHOT_MAX_AGE:
            return StatusResult(check, WARN, f"no snapshot of {volume_id} yet{in_progress}: DLM takes the first one "
                                             "at 03:00-04:00 UTC after the deploy", "none: check again tomorrow")
        return StatusResult(check, FAIL, f"no completed snapshot of {volume_id}{in_progress}", action)
    latest = completed[0]
    age = now - latest["StartTime"]
    detail = f"{latest['SnapshotId']}, started {human_duration(age)} ago ({stamp(latest['StartTime'])}){in_progress}"
    if age > SNAPSHOT_MAX_AGE:
        return StatusResult(check, FAIL, f"{detail}: older than {human_duration(SNAPSHOT_MAX_AGE)}, while DLM "
                                         "takes one daily", action)
    return StatusResult(check, OK, detail)


def check_snapshot(ec2: Any, facts: ForgeFacts, now: datetime) -> StatusResult:
    check, volume_id = "latest snapshot", facts.data_volume_id
    try:
        volumes = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}])
        snapshots = [snapshot for page in pages for snapshot in page["Snapshots"]]
    except (BotoCoreError, ClientError) as error:
        return not_checked(check, "ec2:DescribeVolumes/DescribeSnapshots", error)
    if not volumes:
        return StatusResult(check, FAIL, f"the data volume {volume_id} does not exist",
                            "see `pulumi refresh --preview-only`: the forge's data lives on that volume; restore "
                            "it from its latest snapshot or the backups (docs/runbooks)")
    policy = f"aws dlm get-lifecycle-policy --region {facts.region} --policy-id {facts.snapshot_policy_id or '<snapshotPolicyId>'}"
    return judge_snapshots(volume_id, snapshots, parse_time(volumes[0].get("CreateTime")), now, policy)


# --- the instance -----------------------------------------------------------------------------------------

def judge_instance_status(instance_id: str, region: str, statuses: Sequence[Mapping[str, Any]]) -> StatusResult:
    """`statuses` as ec2:DescribeInstanceStatus (IncludeAllInstances) lists them for the instance."""
    check = "instance status"
    if not statuses:
        return StatusResult(check, FAIL, f"no instance {instance_id} in {region}",
                            "see `pulumi refresh --preview-only`, then `pulumi up` to create the host again (the "
                            "data volume is kept)")
    status = statuses[0]
    state = status.get("InstanceState", {}).get("Name", "unknown")
    if state != "running":
        verdict = WARN if state == "pending" else FAIL
        action = ("wait a minute: it is starting" if state == "pending"
                  else f"aws ec2 start-instances --region {region} --instance-ids {instance_id}"
                  if state in ("stopped", "stopping") else "`pulumi up` creates the host again (the data volume is kept)")
        return StatusResult(check, verdict, f"{instance_id} is {state}", action)
    system = status.get("SystemStatus", {}).get("Status", "unknown")
    instance = status.get("InstanceStatus", {}).get("Status", "unknown")
    detail = f"{instance_id} running; system check {system}, instance check {instance}"
    if system == "impaired":
        return StatusResult(check, FAIL, f"{detail}: AWS's hardware or network under the host has a problem",
                            "the auto-recovery alarm moves the host to healthy hardware within minutes; if it "
                            f"does not, stop and start it: aws ec2 stop-instances --instance-ids {instance_id}, "
                            "then start-instances")
    if instance == "impaired":
        return StatusResult(check, FAIL, f"{detail}: the operating system does not answer (memory, disk, kernel)",
                            f"read the console: aws ec2 get-console-output --latest --region {region} --instance-id "
                            f"{instance_id}; then reboot it: aws ec2 reboot-instances --instance-ids {instance_id}")
    events = [f"{event.get('Code')} not before {stamp(parse_time(event['NotBefore']))}" if event.get("NotBefore")
              else str(event.get("Code")) for event in status.get("Events", [])
              if not str(event.get("Description", "")).startswith("[Completed]")]
    if events:
        return StatusResult(check, WARN, f"{detail}; AWS scheduled: {', '.join(events)}",
                            "plan for it: stop and start the instance in a quiet hour to move it before then")
    if (system, instance) != ("ok", "ok"):
        return StatusResult(check, WARN, f"{detail}: not ok yet (normal for minutes after a start)",
                            "check again in a few minutes")
    return StatusResult(check, OK, detail)


def check_instance(ec2: Any, facts: ForgeFacts) -> StatusResult:
    try:
        statuses = ec2.describe_instance_status(InstanceIds=[facts.instance_id],
                                                IncludeAllInstances=True)["InstanceStatuses"]
    except ClientError as error:
        if error_code(error) == "InvalidInstanceID.NotFound":
            statuses = []
        else:
            return not_checked("instance status", "ec2:DescribeInstanceStatus", error)
    except BotoCoreError as error:
        return not_checked("instance status", "ec2:DescribeInstanceStatus", error)
    return judge_instance_status(facts.instance_id, facts.region, statuses)


def judge_recovery_alarm(alarm_name: str, alarms: Sequence[Mapping[str, Any]]) -> StatusResult:
    """`alarms` as cloudwatch:DescribeAlarms lists the metric alarms of that name."""
    check = "recovery alarm"
    if not alarms:
        return StatusResult(check, FAIL, f"no alarm {alarm_name}: nothing recovers the host when its hardware fails",
                            "run `pulumi up`: it creates the alarm again")
    alarm = alarms[0]
    state, reason = alarm.get("StateValue", "unknown"), alarm.get("StateReason", "")
    since = parse_time(alarm.get("StateUpdatedTimestamp"))
    detail = f"{alarm_name} {state}" + (f" since {stamp(since)}" if since else "")
    if not alarm.get("ActionsEnabled", True):
        return StatusResult(check, FAIL, f"{detail}, but its actions are disabled: it would not recover the host",
                            f"aws cloudwatch enable-alarm-actions --alarm-names {alarm_name}")
    if state == "OK":
        return StatusResult(check, OK, detail)
    if state == "ALARM":
        return StatusResult(check, FAIL, f"{detail}: the system status check failed and EC2 is recovering the host "
                                         f"({reason})", "see the instance status line; if the host is not back within "
                                                        "15 minutes, stop and start the instance")
    # INSUFFICIENT_DATA: normal for minutes after the alarm or instance was created or started, and
    # while the instance is stopped (which the instance status line reports as a failure). It is no
    # outage, but while it lasts the alarm cannot recover the host: worth a warning, not a failure.
    return StatusResult(check, WARN, f"{detail}: no status-check data, so it could not recover the host now "
                                     f"({reason})", "normal for minutes after a start; if it lasts with the "
                                                    "instance running, check the alarm's InstanceId dimension")


def check_recovery_alarm(cloudwatch: Any, facts: ForgeFacts) -> StatusResult:
    try:
        alarms = cloudwatch.describe_alarms(AlarmNames=[facts.recovery_alarm_name],
                                            AlarmTypes=["MetricAlarm"])["MetricAlarms"]
    except (BotoCoreError, ClientError) as error:
        return not_checked("recovery alarm", "cloudwatch:DescribeAlarms", error)
    return judge_recovery_alarm(facts.recovery_alarm_name, alarms)


# --- the live site's certificate ----------------------------------------------------------------------

def judge_certificate(domain: str, not_before: datetime, not_after: datetime, issuer: str,
                      now: datetime) -> StatusResult:
    check = "certificate"
    left = not_after - now
    detail = f"https://{domain}/ valid until {stamp(not_after)} ({human_duration(left)} left), issued by {issuer}"
    renew = ("on the host: journalctl -u gitea-stack-certbot-renew.service -n 100 says why certbot did not renew; "
             "fix it (DNS A record, port 80 reachable), then systemctl start gitea-stack-certbot-renew.service")
    if left < timedelta(days=CERTIFICATE_FAIL_DAYS):
        return StatusResult(check, FAIL, f"{detail}: under {CERTIFICATE_FAIL_DAYS} days", renew)
    # Renewal is due with a third of the lifetime left (30 days of Let's Encrypt's 90): later, it is late.
    if left < (not_after - not_before) / 3:
        return StatusResult(check, WARN, f"{detail}: less than a third of its lifetime left, so renewal is late",
                            renew)
    return StatusResult(check, OK, detail)


def read_certificate(domain: str, address: tuple[str, int]) -> dict[str, Any]:
    """The verified peer certificate (ssl's dict form) of a TLS connection to `address` for `domain`."""
    context = ssl.create_default_context()  # the system's CAs; SSL_CERT_FILE replaces them
    with socket.create_connection(address, timeout=TLS_TIMEOUT_SECONDS) as connection:
        with context.wrap_socket(connection, server_hostname=domain) as tls:
            return tls.getpeercert()


def certificate_issuer(certificate: Mapping[str, Any]) -> str:
    fields = dict(pair for entry in certificate.get("issuer", ()) for pair in entry)
    return " ".join(part for part in (fields.get("organizationName"), fields.get("commonName")) if part) or "?"


def check_certificate(domain: str, address: tuple[str, int], now: datetime) -> StatusResult:
    check = "certificate"
    where = f"{address[0]}:{address[1]}"
    try:
        certificate = read_certificate(domain, address)
    except ssl.SSLCertVerificationError as error:
        return StatusResult(check, FAIL, f"https://{domain}/ ({where}) serves a certificate that does not verify: "
                                         f"{error.verify_message}",
                            "on the host: journalctl -u gitea-stack-certbot-renew.service -n 100; then "
                            "systemctl start gitea-stack-certbot-renew.service")
    except (OSError, ssl.SSLError) as error:
        return StatusResult(check, FAIL, f"no TLS answer from {where} for https://{domain}/: {error}",
                            "see the instance status line; on the host: docker compose ps (nginx running?) and "
                            f"dig +short {domain} (the Elastic IP, publicIp?)")
    not_before = datetime.fromtimestamp(ssl.cert_time_to_seconds(certificate["notBefore"]), timezone.utc)
    not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(certificate["notAfter"]), timezone.utc)
    return judge_certificate(domain, not_before, not_after, certificate_issuer(certificate), now)


def https_address(domain: str, override: str | None) -> tuple[str, int]:
    """Where the site is asked: the domain's port 443, or HOST:PORT from the environment (ValueError if bad)."""
    if not override:
        return domain, 443
    host, _, port = override.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{HTTPS_ADDRESS_VARIABLE}={override!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


# --- secrets ------------------------------------------------------------------------------------------

def judge_secret(key: str, name: str, described: Mapping[str, Any] | None, region: str) -> StatusResult:
    """`described` as secretsmanager:DescribeSecret answers (never the value), None when there is no secret."""
    check = f"secret {key}"
    if described is None:
        return StatusResult(check, FAIL, f"no secret {name}: the host cannot read it at its next converge",
                            "run `pulumi refresh`, then `pulumi up`, which stores it again (a new value: see the "
                            "README's table of what the converge does with each secret)")
    if described.get("DeletedDate"):
        return StatusResult(check, FAIL, f"{name} is scheduled for deletion ({stamp(parse_time(described['DeletedDate']))})",
                            f"aws secretsmanager restore-secret --region {region} --secret-id {name}")
    current = [version for version, stages in (described.get("VersionIdsToStages") or {}).items()
               if "AWSCURRENT" in stages]
    if not current:
        return StatusResult(check, FAIL, f"{name} has no current version (AWSCURRENT)",
                            "run `pulumi up`: it stores the value again")
    changed = parse_time(described.get("LastChangedDate"))
    return StatusResult(check, OK, f"{name}, current version" + (f" of {stamp(changed)}" if changed else ""))


def check_secrets(secretsmanager: Any, facts: ForgeFacts) -> list[StatusResult]:
    results = []
    for key, name in sorted(facts.secret_names.items()):
        try:
            described: Mapping[str, Any] | None = secretsmanager.describe_secret(SecretId=name)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                results.append(not_checked(f"secret {key}", "secretsmanager:DescribeSecret", error))
                continue
            described = None
        except BotoCoreError as error:
            results.append(not_checked(f"secret {key}", "secretsmanager:DescribeSecret", error))
            continue
        results.append(judge_secret(key, name, described, facts.region))
    return results


# --- all of it ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AwsClients:
    sesv2: Any
    s3: Any
    ec2: Any
    cloudwatch: Any
    secretsmanager: Any


def aws_clients(session: boto3.Session, region: str) -> AwsClients:
    def client(service: str) -> Any:
        return session.client(service, region_name=region, config=AWS_CLIENT_CONFIG)
    return AwsClients(client("sesv2"), client("s3"), client("ec2"), client("cloudwatch"), client("secretsmanager"))


def run_checks(facts: ForgeFacts, clients: AwsClients, address: tuple[str, int], now: datetime,
               progress: Progress) -> list[StatusResult]:
    results = check_ses(clients.sesv2, facts, progress)
    progress(f"reading s3://{facts.backup_bucket}/{BACKUP_STATUS_KEY}")
    results.append(check_backup(clients.s3, facts, now))
    progress(f"looking for snapshots of {facts.data_volume_id}")
    results.append(check_snapshot(clients.ec2, facts, now))
    progress(f"asking EC2 about {facts.instance_id} and CloudWatch about {facts.recovery_alarm_name}")
    results.append(check_instance(clients.ec2, facts))
    results.append(check_recovery_alarm(clients.cloudwatch, facts))
    progress(f"reading the certificate of https://{facts.domain}/ at {address[0]}:{address[1]}")
    results.append(check_certificate(facts.domain, address, now))
    progress(f"looking up {len(facts.secret_names)} secrets (never their values)")
    results.extend(check_secrets(clients.secretsmanager, facts))
    return results


def format_table(results: Sequence[StatusResult]) -> str:
    return format_table_with_verdicts(results, "the forge is all right (see any WARN lines)",
                                      "something needs attention: do what the FAIL lines say")


def json_document(facts: ForgeFacts, now: datetime, results: Sequence[StatusResult]) -> str:
    return json.dumps({"stack": facts.stack, "region": facts.region, "checked_at": now.isoformat(timespec="seconds"),
                       "checks": [asdict(result) for result in results], "summary": summarise(results)}, indent=2)


# --- the command ---------------------------------------------------------------------------------------

def status_command(args: argparse.Namespace) -> int:
    """`status`: 0 when nothing failed (warnings allowed), 1 when something needs attention, 2 for bad
    usage, a bad stack file or unreadable outputs."""
    def progress(message: str) -> None:
        print(f"status: {message}", file=sys.stderr, flush=True)

    def bad_usage(message: object) -> int:
        print(f"status: {message}", file=sys.stderr)
        return 2

    try:
        stack_file, settings = read_stack(args.project_dir, args.stack)
    except StackFileProblem as problem:
        return bad_usage(problem)
    try:
        if args.outputs:
            outputs, source = read_outputs_file(args.outputs), f"--outputs {args.outputs}"
        else:
            progress(f"running `pulumi stack output --json --stack {args.stack}`")
            outputs, source = outputs_from_pulumi(args.stack, args.project_dir), "the stack's outputs"
        require_outputs(outputs, REQUIRED_OUTPUTS, source)
    except OutputsProblem as problem:
        return bad_usage(problem)
    # The region the stack was deployed to, when it says; else the stack file's or the environment's.
    region = outputs.get("region") or stack_region(stack_file)
    if not region:
        return bad_usage(f"no region: the outputs name none; set aws:region in {stack_file} or AWS_REGION")
    facts = ForgeFacts.of_stack(settings, outputs, region)
    try:
        address = https_address(facts.domain, os.environ.get(HTTPS_ADDRESS_VARIABLE))
        session = stack_session(stack_file, region)
    except (ValueError, BotoCoreError) as error:
        return bad_usage(error)

    now = datetime.now(timezone.utc)
    results = run_checks(facts, aws_clients(session, region), address, now, progress)
    print(json_document(facts, now, results) if args.json else format_table(results))
    return 0 if summarise(results)["passed"] else 1
