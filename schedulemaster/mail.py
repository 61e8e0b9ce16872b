"""Sending one mail over SMTP, as the original's MailKit did: keepers' failure mail (the
master), the keeper-mail block (any process Prefect runs it in), delayed tasks' final failure."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

SMTP_TIMEOUT = 10  # seconds, as MailKit's in the original


def smtp_send(server: str, port: int, account: str, password: str, msg: EmailMessage) -> None:
    """Send one message as the original's MailKit did with SecureSocketOptions.Auto:
    implicit TLS on 465, STARTTLS where the server offers it, else plain; log in when a
    password is set and the server offers AUTH."""
    if port == 465:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(server, port, timeout=SMTP_TIMEOUT,
                                             context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(server, port, timeout=SMTP_TIMEOUT)
    with smtp:
        smtp.ehlo()
        if port != 465 and smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if password and smtp.has_extn("auth"):
            smtp.login(account, password)
        smtp.send_message(msg)
