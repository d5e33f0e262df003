"""An SMTP server that takes mail as SES's SMTP interface does: STARTTLS first, then AUTH PLAIN
with the SMTP user's name and password; every accepted message is kept in a Mailbox.

aiosmtpd offers PLAIN only: its LOGIN prompt ("User Name") is not the one SES and Alertmanager's
client use ("Username:").
"""

from __future__ import annotations

import email
import email.policy
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

Message = tuple[list[str], email.message.EmailMessage]


@dataclass
class Mailbox:
    """What the SMTP server accepted: one entry a message, with the envelope's recipients."""
    user: str
    password: str
    messages: list[Message] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (self.user, self.password))

    def about(self, subject_part: str) -> list[Message]:
        return [(recipients, message) for recipients, message in self.messages if subject_part in message["Subject"]]

    def wait_for(self, subject_part: str, count: int = 1, timeout: float = 30) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.about(subject_part)) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.about(subject_part)


class SesLikeSmtp:
    """`with SesLikeSmtp(host, port, cert_file, key_file, user, password) as smtp:` smtp.mailbox."""

    def __init__(self, host: str, port: int, cert_file: Path, key_file: Path, user: str, password: str):
        self.mailbox = Mailbox(user, password)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert_file, key_file)
        self.controller = Controller(
            self.mailbox, hostname=host, port=port, tls_context=tls, require_starttls=True,
            authenticator=self.mailbox.authenticate, auth_required=True, auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN"])

    def __enter__(self) -> SesLikeSmtp:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()
