#!/usr/bin/env python3
"""Mails an alert to the stack's alert addresses through SES (the instance role may send from the domain).

Usage: send-mail.py --subject TEXT < BODY
  The body comes on stdin; a footer names the stack, the host and the time. The mail goes
  From "gitea-stack <STACK>" <gitea-stack@DOMAIN> To every address of ALERT_EMAILS (comma-separated),
  with the subject prefixed "[gitea-stack STACK] ".
Environment (settings.env and stack-facts.env, which the host scripts load): STACK, DOMAIN,
  ALERT_EMAILS, AWS_REGION; AWS_ENDPOINT_URL, when set, points boto3 elsewhere.
Exit codes: 0 sent; 1 not sent (the reason on stderr); 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="send-mail.py", description=__doc__.strip().splitlines()[0],
                                     epilog="Exit codes: 0 sent; 1 not sent; 2 bad usage or settings.")
    parser.add_argument("--subject", required=True, help="what broke, in a few words")
    arguments = parser.parse_args(argv[1:])
    stack, domain = os.environ.get("STACK", ""), os.environ.get("DOMAIN", "")
    recipients = [address.strip() for address in os.environ.get("ALERT_EMAILS", "").split(",") if address.strip()]
    missing = [name for name, value in (("STACK", stack), ("DOMAIN", domain), ("ALERT_EMAILS", recipients)) if not value]
    if missing:
        print(f"send-mail.py: {', '.join(missing)} not set (settings.env); no mail was sent", file=sys.stderr)
        return 2
    body = sys.stdin.read().rstrip("\n")
    footer = (f"\n\n--\ngitea-stack {stack} ({domain}), host {socket.gethostname()}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
    client = boto3.client("sesv2", region_name=os.environ.get("AWS_REGION") or None,
                          endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        client.send_email(
            FromEmailAddress=f'"gitea-stack {stack}" <gitea-stack@{domain}>',
            Destination={"ToAddresses": recipients},
            Content={"Simple": {"Subject": {"Data": f"[gitea-stack {stack}] {arguments.subject}"},
                                "Body": {"Text": {"Data": body + footer}}}})
    except (BotoCoreError, ClientError) as error:
        print(f"send-mail.py: SES did not take the mail: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
