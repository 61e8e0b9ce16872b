"""Global alarm channels: the ``Alarm_AppriseUrlsPwd`` setting, Apprise URLs.

Apprise (a dependency of Prefect's own notification blocks) speaks DingTalk (``dingtalk://``),
WeCom (``wecombot://``), Feishu (``feishu://``), Slack (``slack://``), a generic webhook
(``json://host/path``, ``jsons://`` with TLS) and a hundred more, so no channel is written here.
What is sent: a firing that failed (beside its keepers' mail), a Running task that no node can
fire, a node gone offline, a delayed task that failed for good. The setting ends in ``Pwd``
because webhook URLs carry their tokens: it is masked wherever settings are shown or audited,
and never logged. Sending never raises and never blocks the caller's loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

log = logging.getLogger("schedulemaster.alarms")

SETTING = "Alarm_AppriseUrlsPwd"
MAX_URLS = 20
CACHE_SECONDS = 5.0  # a burst of failures reads the setting once
#: one alarm per subject (a task, a node) in this long at most: a receiver down under 1,000
#: tasks must not send 1,000 alarms a minute; the rest are counted in the log
QUIET_SECONDS = 60.0
_SPLIT = re.compile(r"[\s,]+")
_cache: dict[int, tuple[float, list[str]]] = {}
_last_sent: dict[str, float] = {}


def urls_of(value: str) -> list[str]:
    return [u for u in _SPLIT.split(value or "") if u]


def check(value: str) -> bool:
    """Whether every URL of a value of the setting is one Apprise can send to (the setting's rule)."""
    import apprise

    urls = urls_of(value)
    if len(urls) > MAX_URLS or any(len(u) > 2000 for u in urls):
        return False
    return all(apprise.Apprise().add(u) for u in urls)


def _urls(store) -> list[str]:
    now = time.monotonic()
    hit = _cache.get(id(store))
    if hit is None or now - hit[0] > CACHE_SECONDS:
        hit = _cache[id(store)] = (now, urls_of(store.configs().get(SETTING, "")))
    return hit[1]


def configured(store) -> bool:
    """Whether any channel is set (read at most every CACHE_SECONDS)."""
    return bool(_urls(store))


def send_now(store, title: str, body: str, kind: str = "failure", subject: str | None = None) -> bool:
    """Send to every channel (blocking: call it from a thread); ``subject`` (a task or node id)
    is alarmed once per QUIET_SECONDS. True when every channel took it."""
    import apprise

    urls = _urls(store)
    if not urls:
        return False
    if subject is not None:
        now = time.monotonic()
        if now - _last_sent.get(subject, float("-inf")) < QUIET_SECONDS:
            log.info("alarm %r held back: one for %s was sent less than %.0f s ago", title[:80], subject,
                     QUIET_SECONDS)
            return False
        if len(_last_sent) > 10_000:
            _last_sent.clear()
        _last_sent[subject] = now
    box = apprise.Apprise()
    for u in urls:
        box.add(u)
    notify_type = apprise.NotifyType.FAILURE if kind == "failure" else apprise.NotifyType.WARNING
    try:
        ok = bool(box.notify(title=title[:250], body=body[:4000], notify_type=notify_type))
    except Exception as exc:  # a channel's own error: said, never raised (no URL in the log: tokens)
        log.warning("alarm %r not sent: %s", title[:80], type(exc).__name__)
        return False
    if not ok:
        log.warning("alarm %r not taken by every channel (%d configured)", title[:80], len(urls))
    return ok


async def send(store, title: str, body: str, kind: str = "failure", subject: str | None = None) -> bool:
    return await asyncio.to_thread(send_now, store, title, body, kind, subject)


__all__ = ["SETTING", "check", "configured", "send", "send_now", "urls_of"]
