"""Prefect's UI switches, followed for tasks: a deployment's pause switch and its schedule's.

The UI pauses a deployment with ``PATCH /api/deployments/{id}`` (``paused``) and switches a
schedule with ``PATCH /api/deployments/{id}/schedules/{schedule id}`` (``active``), as Prefect's
client and CLI do; its older ``/deployments/{id}/pause_deployment`` and ``resume_deployment``
endpoints do the same. For a task they
all mean one thing, whether it runs, so after Prefect's own handler has answered 2xx (the
caller passed Prefect's credential) the rest is made to agree, before the answer goes out: the schedule's switch, the
pause flag and the status word among the tags (``TaskRepository.follow_ui_switch``). Any other
request passes untouched.
"""

from __future__ import annotations

import logging
import re
import uuid

from schedulemaster.deployments.tasks import TaskRepository

log = logging.getLogger("schedulemaster.ui_switches")

_PATH = re.compile(r"/deployments/([0-9a-fA-F-]{36})(/schedules/[0-9a-fA-F-]{36})?/?$")
#: Prefect's older pause and resume endpoints
_POST_PATH = re.compile(r"/deployments/([0-9a-fA-F-]{36})/(?:pause|resume)_deployment/?$")


class FollowUiSwitches:
    """ASGI middleware around Prefect's app in the master."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        method, path = scope.get("method"), scope.get("path", "")
        match = None
        if scope.get("type") == "http":
            match = _PATH.search(path) if method == "PATCH" else _POST_PATH.search(path) if method == "POST" else None
        if match is None:
            return await self.app(scope, receive, send)
        # The answer is held until the rest agrees: a caller that reads the task right after
        # the 2xx must see it whole (sent first, a read could see the pause flag but not the
        # status word). These answers are a few bytes.
        held: list[dict] = []

        async def hold(message):
            held.append(message)

        await self.app(scope, receive, hold)
        status = next((m["status"] for m in held if m["type"] == "http.response.start"), None)
        if status is not None and 200 <= status < 300:
            try:
                schedule_switched = match.re is _PATH and bool(match.group(2))
                await TaskRepository().follow_ui_switch(uuid.UUID(match.group(1)), schedule_switched)
            except Exception:  # the UI's own change stands; the next switch or API call mends it
                log.exception("following a UI switch of deployment %s failed", match.group(1))
        for message in held:
            await send(message)
