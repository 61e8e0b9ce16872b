"""Keepers: the users mailed when a task's run fails (docs/legacy-behaviour.md, Keepers), and the creator
mailed when a delayed task fails for good (the dispatcher sends that one).

The master sees every task failure: firings reach it through the recording endpoint and
worker-path runs report theirs (flows/task_flow.py). Mail goes out from a queue on the
master's loop, on a thread (smtplib blocks), so a slow or unreachable SMTP server never
fails or delays a run. Besides mail, a task may name Prefect notification blocks
(``NotifyBlocks``: Slack, Teams, a webhook... any block with ``notify``) as extra channels,
and the global alarm channels (schedulemaster/alarms.py) are told too.
"""

from __future__ import annotations

import asyncio
import html
import logging
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

from schedulemaster import alarms
from schedulemaster.deployments.spec import TaskSpec
from schedulemaster.mail import smtp_send

log = logging.getLogger("schedulemaster.keepers")

QUEUE_LIMIT = 10_000


@dataclass
class Failure:
    task_id: str
    title: str
    keepers: list[int]
    notify_blocks: list[str]
    when: datetime
    message: str
    detail: str = ""
    run_id: str | None = None


def subject_of(f: Failure) -> str:
    return f"任务运行异常 — {f.title}"


def content_of(f: Failure) -> str:
    """The HTML body: task, time, error and its stack trace, as GetErrorEmailContent wrote."""
    e = html.escape
    rows = [("任务名称", e(f.title)), ("任务ID", e(f.task_id)), ("运行时间", e(f.when.strftime("%Y-%m-%d %H:%M:%S"))),
            ("异常信息", e(f.message))]
    if f.run_id:
        rows.append(("Prefect 运行", e(f.run_id)))
    table = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
    trace = f"<pre>{e(f.detail)}</pre>" if f.detail else ""
    return f"<h3>任务运行异常</h3><table>{table}</table>{trace}"


class KeeperMailer:
    def __init__(self, store):
        self.store = store
        self.queue: asyncio.Queue[Failure] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self.sent = 0
        self.failed = 0

    def task_failed(self, spec: TaskSpec, when: datetime, message: str, detail: str = "",
                    run_id: str | None = None) -> None:
        """What the recording endpoint calls for each failed run of a task."""
        from zoneinfo import ZoneInfo

        if when.tzinfo is not None:  # the mail says the time in the task's zone, as the original did
            when = when.astimezone(ZoneInfo(spec.TimeZone))
        self.failure(Failure(spec.Id, spec.Title, list(spec.Keepers), list(spec.NotifyBlocks), when,
                             message, detail, run_id))

    def failure(self, f: Failure) -> None:
        """Queue a failure's notifications; never blocks, never raises."""
        if not f.keepers and not f.notify_blocks and not alarms.configured(self.store):
            return
        try:
            self.queue.put_nowait(f)
        except asyncio.QueueFull:
            log.error("keeper notification queue full: failure of %s [%s] not notified", f.task_id, f.title)

    async def run(self) -> None:
        while True:
            f = await self.queue.get()
            try:
                if f.keepers:
                    await asyncio.to_thread(self.send_mail, f)
                for name in f.notify_blocks:
                    await self.notify_block(name, f)
                if alarms.configured(self.store):
                    await alarms.send(self.store, subject_of(f), f"{f.when:%Y-%m-%d %H:%M:%S} {f.message}\n"
                                      f"{f.detail}".strip(), subject=f"task {f.task_id}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged, never raised into a run
                self.failed += 1
                log.error("notifying the keepers of %s [%s] failed: %s", f.task_id, f.title, exc)

    def recipients(self, keepers: list[int]) -> list[tuple[str, str]]:
        """(RealName, Email) of the keepers who have an email; others get nothing."""
        return [(u.realname, u.email) for u in self.store.users_by_ids(keepers)
                if u.email and u.status != -1]

    def send_mail(self, f: Failure) -> None:
        to = self.recipients(f.keepers)
        if not to:
            return
        if send_html(self.store, to, subject_of(f), content_of(f), "任务运行异常，请查看 HTML 内容。",
                     f"task {f.task_id}"):
            self.sent += 1
            log.info("failure of %s [%s] mailed to %s", f.task_id, f.title, ", ".join(e for _, e in to))

    async def notify_block(self, name: str, f: Failure) -> None:
        """A Prefect notification block (``type-slug/name``) as an extra failure channel."""
        from prefect.blocks.core import Block

        block: Any = await Block.aload(name)
        text = f"{subject_of(f)}\n{f.when:%Y-%m-%d %H:%M:%S} {f.message}"
        if getattr(block, "_block_type_slug", None) == "keeper-mail":
            text = content_of(f)  # a mail: the same HTML body as the keepers'
        result = block.notify(text, subject=subject_of(f))
        if asyncio.iscoroutine(result):
            await result


def send_html(store, to: list[tuple[str, str]], subject: str, html_body: str, text: str, what: str) -> bool:
    """Mail through the ``Email_*`` settings; False (and a warning) when they are not set."""
    cfg = store.configs()
    server, account = cfg.get("Email_SmtpServer", "").strip(), cfg.get("Email_FromAccount", "").strip()
    if not server or not account:
        log.warning("%s failed but no mail was sent: Email_SmtpServer / Email_FromAccount are not set", what)
        return False
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = formataddr(("ScheduleMaster", account))
    msg["To"] = ", ".join(formataddr(pair) for pair in to)
    msg.set_content(text)
    msg.add_alternative(html_body, subtype="html")
    smtp_send(server, int(cfg.get("Email_SmtpPort") or 25), account, cfg.get("Email_FromAccountPwd", ""), msg)
    return True


def mail_delayed_failure(store, task: dict[str, Any], error: str | None, when: datetime) -> bool:
    """A delayed task failed for good: its creator is told, if the creator has an email."""
    user = store.user_by_name(task["createusername"] or "")
    if user is None or not user.email or user.status == -1:
        return False
    e = html.escape
    rows = [("任务ID", task["id"]), ("来源", task["sourceapp"]), ("主题", task["topic"]),
            ("业务关键字", task["contentkey"]), ("回调地址", task["notifyurl"]),
            ("时间", when.strftime("%Y-%m-%d %H:%M:%S")), ("失败原因", error or ""), ("备注", task.get("remark") or "")]
    table = "".join(f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in rows)
    return send_html(store, [(user.realname, user.email)], f"延时任务执行失败 — {task['topic']}/{task['contentkey']}",
                     f"<h3>延时任务执行失败</h3><table>{table}</table>", "延时任务执行失败，请查看 HTML 内容。",
                     f"delayed task {task['id']}")
