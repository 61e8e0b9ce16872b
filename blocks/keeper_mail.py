"""``keeper-mail``: a Prefect notification block that mails a fixed list of addresses.

Keepers are accounts (each with its own email); a team's distribution list or an on-call
address is not an account. Attach this block to a task (``NotifyBlocks=keeper-mail/oncall``)
and every failure is mailed there too, with the same subject and content as the keepers'
mail. It is a regular Prefect block: created in the UI's Blocks page or from code, its
password kept as a secret.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.utils import formataddr

from prefect.blocks.abstract import NotificationBlock
from pydantic import Field, SecretStr

from schedulemaster.mail import smtp_send

class KeeperMail(NotificationBlock):
    """Mail a fixed list of addresses when a ScheduleMaster task fails."""

    _block_type_name = "Keeper Mail"
    _block_type_slug = "keeper-mail"
    _description = "Mails ScheduleMaster task failures to fixed addresses (a team list, on-call)."

    to: list[str] = Field(..., min_length=1, description="Recipient addresses.")
    smtp_server: str = Field(..., description="SMTP host.")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="465 = implicit TLS; others STARTTLS when offered.")
    from_account: str = Field(..., description="Sender address (and login).")
    password: SecretStr | None = Field(default=None, description="SMTP password, if the server wants one.")

    async def notify(self, body: str, subject: str | None = None) -> None:
        msg = EmailMessage()
        msg["Subject"] = subject or "ScheduleMaster"
        msg["From"] = formataddr(("ScheduleMaster", self.from_account))
        msg["To"] = ", ".join(self.to)
        if body.lstrip().startswith("<"):  # the keepers' HTML content
            msg.set_content("ScheduleMaster: see the HTML part of this mail.")
            msg.add_alternative(body, subtype="html")
        else:
            msg.set_content(body)
        password = self.password.get_secret_value() if self.password else ""
        await asyncio.to_thread(smtp_send, self.smtp_server, self.smtp_port, self.from_account, password, msg)
