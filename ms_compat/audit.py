"""The audit trail: who changed what through the legacy API, from where, and how it ended.

Every change an account makes (tasks, delayed tasks' console actions, accounts, settings,
nodes, plugin uploads), and every call its role refused, is a row of ``sm_audit``
(schedulemaster/store/audit.py; answered by ``GET /api/System/QueryAudit``) and a Prefect event ``schedulemaster.audit.<kind>.<action>``
with the account as its ``actor`` related resource, so it shows on the UI's Events page and
can drive automations. Secrets never reach either: fields whose names say password, secret,
token or header are masked, and so are the ``*Pwd`` settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from datetime import datetime, timezone
from typing import Any

from schedulemaster.store.audit import AuditEntry, insert

log = logging.getLogger("schedulemaster.audit")

MASK = "******"
_SECRET = re.compile(r"pwd|password|secret|token|header|authorization", re.IGNORECASE)
MAX_VALUE = 200  # characters of a field value kept in the trail

#: legacy path -> (kind, action, the form field holding the resource's id or name)
AUDITED: dict[str, tuple[str, str, str | None]] = {
    **{f"/api/task/{a}": ("task", a, "id") for a in ("start", "pause", "resume", "stop", "runonce", "delete")},
    "/api/task/create": ("task", "create", None), "/api/task/edit": ("task", "edit", "Id"),
    "/api/task/uploadplugin": ("plugin", "upload", None),
    **{f"/api/delaytask/{p}": ("delayed", a, "id") for p, a in (
        ("void", "void"), ("stop", "void"), ("execute", "execute"), ("reset", "reset"), ("start", "reset"))},
    "/api/account/create": ("user", "create", "UserName"), "/api/account/edit": ("user", "edit", "Id"),
    **{f"/api/account/{a}": ("user", a, "id") for a in ("enable", "disable", "delete", "resetpwd")},
    "/api/account/changepwd": ("user", "changepwd", None),
    "/api/system/saveconfig": ("setting", "save", None),
    **{f"/api/node/{a}": ("node", a, "name") for a in ("enable", "disable", "edit", "delete")},
}


def masked(fields: dict[str, Any]) -> dict[str, Any]:
    """The submitted fields worth keeping: set ones only, secrets masked, long values cut."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None or value == "" or value == []:
            continue
        if _SECRET.search(key):
            out[key] = MASK
            continue
        if isinstance(value, (datetime, uuid.UUID)):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v)[:MAX_VALUE] for v in value[:50]]
        elif isinstance(value, str) and len(value) > MAX_VALUE:
            value = value[:MAX_VALUE] + "…"
        out[key] = value
    return out


class AuditTrail:
    """Writes entries (in a thread: the store is synchronous) and publishes their events."""

    def __init__(self, engine):
        self.engine = engine
        self._pending: set[asyncio.Task] = set()

    async def record(self, *, actor: str, role: str, address: str, path: str, fields: dict[str, Any],
                     outcome: str, message: str = "", resource: str | None = None) -> AuditEntry | None:
        what = AUDITED.get(path)
        if what is None:
            return None
        kind, action, id_field = what
        if resource is None and id_field is not None:
            resource = str(fields.get(id_field) or "")
        changes = masked({k: v for k, v in fields.items() if k != id_field})
        entry = AuditEntry(at=datetime.now(timezone.utc), actor=actor[:50], role=role, address=address[:64],
                           kind=kind, action=action, resource=(resource or "")[:100], outcome=outcome,
                           message=message[:500], changes=json.dumps(changes, ensure_ascii=False, default=str))
        try:
            await asyncio.to_thread(insert, self.engine, entry)
        except Exception:  # the action happened; losing its trail is logged, not answered as a failure
            log.exception("audit entry not written: %s %s %s by %s", kind, action, resource, actor)
        task = asyncio.create_task(self._publish(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return entry

    async def _publish(self, entry: AuditEntry) -> None:
        """A Prefect event, published in process as Prefect's own orchestration does."""
        try:
            from prefect.server.events.clients import PrefectServerEventsClient
            from prefect.server.events.schemas.events import Event

            related = [{"prefect.resource.id": f"schedulemaster.user.{entry.actor}",
                        "prefect.resource.role": "actor", "prefect.resource.name": entry.actor}]
            if entry.kind == "task" and _is_uuid(entry.resource):  # shows on the deployment's events too
                related.append({"prefect.resource.id": f"prefect.deployment.{entry.resource}",
                                "prefect.resource.role": "deployment"})
            event = Event(
                occurred=entry.at, event=f"schedulemaster.audit.{entry.kind}.{entry.action}",
                resource={"prefect.resource.id": f"schedulemaster.{entry.kind}.{entry.resource or '-'}",
                          "prefect.resource.name": entry.resource or entry.kind},
                related=related,
                payload={"outcome": entry.outcome, "message": entry.message, "address": entry.address,
                         "role": entry.role, "changes": json.loads(entry.changes)},
                id=uuid.uuid4())
            async with PrefectServerEventsClient() as client:
                await client.emit(event)
        except Exception as exc:
            log.warning("audit event %s.%s not published: %s", entry.kind, entry.action, exc)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False
