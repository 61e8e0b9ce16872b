"""How operators see the delayed-task dispatcher in the Prefect UI, without millions of runs.

* one deployment, ``schedulemaster-delayed/dispatcher``;
* one long-lived flow run per dispatcher per hour (``<node>-<local time>``, Running while it
  dispatches, Completed with the hour's totals; a run left Running by a dispatcher that
  died is marked Crashed by the next one). Its log has a line a minute (fired, failed,
  lateness p50/p99, backlog) and a line for each notable callback: sent late, sent again
  after a crash, failed for good;
* a table artifact ``delayed-dispatcher`` per run (backlog by status, what falls due next, the
  last minute's rates and lateness), updated in place each minute (one card per run, not one a
  minute);
* events: ``schedulemaster.delayed.stats`` each minute, and ``schedulemaster.delayed.failed``
  / ``.recovered`` per task, so Prefect automations can page someone on a failed callback.
* "Run" on the deployment in the UI asks for a snapshot: the dispatcher completes that run
  with the current backlog as its artifact.

Everything here is best effort: the dispatcher keeps firing while Prefect is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow

from schedulemaster.dispatcher.delayed_dispatch import Dispatcher, Notice
from schedulemaster.store.delayed_store import STATUS_NAMES, STATUS_TEXT, DelayedStore

log = logging.getLogger("schedulemaster.delayed.report")

FLOW_NAME = "schedulemaster-delayed"
DEPLOYMENT_NAME = "dispatcher"
ARTIFACT_KEY = "delayed-dispatcher"
# seconds between reports; SM_DELAYED_REPORT_SECONDS overrides (the tests use a few seconds)
REPORT_EVERY = float(os.environ.get("SM_DELAYED_REPORT_SECONDS") or 60.0)
#: seconds after its start in which Prefect not answering yet is expected (`up` starts both at once)
STARTUP_GRACE = 60.0
ROLL_EVERY = 3600.0
NOTICES_PER_MINUTE = 200  # log lines and events beyond this (per report) are counted, not sent


@flow(name=FLOW_NAME, persist_result=False)
def dispatcher_flow() -> str:
    """The flow the dispatcher's runs belong to. The dispatcher is a process that runs
    continuously (``schedulemaster dispatcher``, started by ``up``); a run of this
    deployment started from the UI is answered by that process with a snapshot."""
    return "the delayed-task dispatcher answers runs of this deployment itself"


class Reporter:
    def __init__(self, client, dispatcher: Dispatcher, store: DelayedStore, name: str, tz: str):
        self.client = client
        self.d = dispatcher
        self.store = store
        self.name = name
        self.tz = ZoneInfo(tz)
        self.deployment_id = None
        self.run_id = None
        self.artifact_id = None  # this run's artifact, updated in place
        self.run_started = 0.0
        self.run_opened = datetime.now(self.tz)
        self.hour = {"fired": 0, "succeeded": 0, "final_failures": 0, "late": 0, "recovered": 0}
        self.dropped = 0

    # ---- setup ------------------------------------------------------------------------
    async def setup(self) -> None:
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType,
                                                    FlowRunFilterTags)
        from prefect.client.schemas.objects import StateType
        from prefect.exceptions import ObjectNotFound
        from prefect.states import Crashed

        try:
            dep = await self.client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT_NAME}")
            self.deployment_id = dep.id
        except ObjectNotFound:
            flow_id = await self.client.create_flow_from_name(FLOW_NAME)
            self.deployment_id = await self.client.create_deployment(
                flow_id=flow_id, name=DEPLOYMENT_NAME,
                entrypoint="schedulemaster.dispatcher.delayed_report:dispatcher_flow",
                tags=["schedulemaster", "delayed"], paused=False,
                description="ScheduleMaster delayed tasks (延时任务): one run per dispatcher per hour, with its "
                            "log, the `delayed-dispatcher` artifact and `schedulemaster.delayed.*` events. "
                            "Pending callbacks live in the project's own table, not as runs.")
        stale = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING])), tags=FlowRunFilterTags(all_=[f"dispatcher:{self.name}"])),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])), limit=50)
        for run in stale:
            await self.client.set_flow_run_state(run.id, Crashed(
                message="the dispatcher process ended without closing this run (killed or crashed)"), force=True)

    async def open_run(self) -> None:
        from prefect.states import Running

        stamp = datetime.now(self.tz).strftime("%Y-%m-%d %H:%M:%S")
        run = await self.client.create_flow_run_from_deployment(
            self.deployment_id, state=Running(), name=f"{self.name}-{stamp}",
            tags=["schedulemaster", "delayed", f"dispatcher:{self.name}"])
        self.run_id, self.run_started, self.run_opened = run.id, time.monotonic(), datetime.now(self.tz)
        self.artifact_id = None
        self.hour = dict.fromkeys(self.hour, 0)
        await self.logs([(logging.INFO, f"dispatcher {self.d.me} dispatching delayed tasks "
                                        f"(up to {self.d.max_held} held, {self.d.per_host} connections per receiver)")])

    async def close_run(self, why: str = "rolled over") -> None:
        from prefect.states import Completed

        if self.run_id is None:
            return
        h = self.hour
        await self.client.set_flow_run_state(self.run_id, Completed(
            message=f"{why}: fired {h['fired']}, succeeded {h['succeeded']}, failed for good {h['final_failures']}, "
                    f"late {h['late']}, re-sent after a crash {h['recovered']}"), force=True)
        self.run_id = None

    # ---- writing to Prefect ------------------------------------------------------------
    async def logs(self, lines: list[tuple[int, str]]) -> None:
        if self.run_id is None or not lines:
            return
        now = datetime.now(timezone.utc).isoformat()
        await self.client.create_logs([
            {"name": "schedulemaster.delayed", "level": level, "message": msg, "timestamp": now,
             "flow_run_id": str(self.run_id)} for level, msg in lines])

    async def events(self, notices: list[Notice]) -> None:
        from prefect.events import Event

        related = [{"prefect.resource.id": f"prefect.deployment.{self.deployment_id}",
                    "prefect.resource.role": "deployment"}]
        if self.run_id is not None:
            related.append({"prefect.resource.id": f"prefect.flow-run.{self.run_id}",
                            "prefect.resource.role": "flow-run"})
        payload = []
        for n in notices:
            resource = ({"prefect.resource.id": f"schedulemaster.delayed.{n.task_id}",
                         "prefect.resource.name": n.payload.get("content_key") or n.task_id}
                        if n.task_id else {"prefect.resource.id": f"schedulemaster.dispatcher.{self.name}"})
            payload.append(Event(event=n.event, resource=resource, related=related,
                                 payload={"message": n.message, **n.payload}).model_dump(mode="json"))
        if payload:
            await self.client.request("POST", "/events", json=payload)  # one call for the batch

    async def artifact(self, window: dict[str, Any], run_id=None) -> None:
        """This run's artifact: created at its first report, then updated in place; a snapshot
        run (``run_id``) gets its own."""
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
        from prefect.exceptions import PrefectHTTPStatusError

        counts = await asyncio.to_thread(self.store.counts)
        oldest = counts["oldest_due"]
        rows = [{"what": f"status {k} {STATUS_NAMES.get(k, '')} ({STATUS_TEXT.get(k, '')})", "value": v}
                for k, v in sorted(counts["by_status"].items())]
        rows += [{"what": "Ready and due within a minute", "value": counts["due_next_minute"]},
                 {"what": "oldest Ready due at (UTC)", "value": oldest.isoformat(sep=" ", timespec="seconds")
                  if oldest else "-"}]
        rows += [{"what": f"last {window.get('seconds', 0):.0f} s: {k.replace('_', ' ')}", "value": v}
                 for k, v in window.items() if k != "seconds"]
        rows += [{"what": f"this run (since {self.run_opened:%H:%M}): {k.replace('_', ' ')}", "value": v}
                 for k, v in self.hour.items()]
        description = f"Delayed tasks as seen by dispatcher {self.name} at {datetime.now(self.tz):%Y-%m-%d %H:%M:%S}"
        if run_id is None and self.artifact_id is not None:
            try:
                await self.client.update_artifact(self.artifact_id, ArtifactUpdate(data=rows, description=description))
                return
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                self.artifact_id = None  # deleted in the UI: make a new one
        created = await self.client.create_artifact(ArtifactCreate(
            key=ARTIFACT_KEY, type="table", data=rows, flow_run_id=run_id or self.run_id, description=description))
        if run_id is None:
            self.artifact_id = created.id

    async def answer_snapshot_requests(self) -> None:
        """Runs of the deployment started from the UI: complete each with a snapshot."""
        from prefect.states import Completed, Running

        runs = await self.client.get_scheduled_flow_runs_for_deployments([self.deployment_id])  # marks it Ready
        for run in runs:
            if run.next_scheduled_start_time and run.next_scheduled_start_time > datetime.now(timezone.utc):
                continue
            await self.client.set_flow_run_state(run.id, Running(), force=True)
            await self.artifact({"note": "snapshot requested from the UI"}, run_id=run.id)
            await self.client.set_flow_run_state(run.id, Completed(message="snapshot of the delayed tasks "
                                                                   "in the artifact delayed-dispatcher"), force=True)

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        began = time.monotonic()
        next_report = began + REPORT_EVERY
        next_ready = 0.0
        written = 0
        while True:
            await asyncio.sleep(1.0)
            try:
                if self.deployment_id is None:
                    await self.setup()
                if self.run_id is None:
                    await self.open_run()
                notices = []
                while not self.d.notices.empty():
                    notices.append(self.d.notices.get_nowait())
                kept = notices[:max(0, NOTICES_PER_MINUTE - written)]  # a storm of failures must not
                self.dropped += len(notices) - len(kept)               # become a storm of Prefect writes
                written += len(kept)
                await self.logs([(n.level, n.message) for n in kept])
                await self.events([n for n in kept if n.event])
                now = time.monotonic()
                if now >= next_ready:
                    next_ready = now + 30.0
                    await self.answer_snapshot_requests()
                if now >= next_report:
                    next_report, written = now + REPORT_EVERY, 0
                    await self.report()
                if now - self.run_started >= ROLL_EVERY:
                    await self.close_run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect away: the dispatcher goes on regardless
                # `up` starts the dispatcher beside the server: not reachable yet is not news
                starting = self.deployment_id is None and time.monotonic() - began < STARTUP_GRACE
                log.log(logging.DEBUG if starting else logging.WARNING, "reporting to Prefect failed: %s", exc)
                await asyncio.sleep(5.0)

    async def report(self) -> None:
        w = self.d.take_window()
        for k in self.hour:
            self.hour[k] += w.get(k, 0)
        extra = f", {self.dropped} notices over the limit (not logged, no event)" if self.dropped else ""
        self.dropped = 0
        if w["fired"]:
            line = (f"last {w['seconds']:.0f} s: fired {w['fired']}, succeeded {w['succeeded']}, failed attempts "
                    f"{w['failed_attempts']}, failed for good {w['final_failures']}, late {w['late']}, lateness "
                    f"p50 {w['lateness_p50']} s p99 {w['lateness_p99']} s max {w['lateness_max']} s, held {w['held']}")
        else:
            line = f"last {w['seconds']:.0f} s: nothing fell due, held {w['held']}"
        await self.logs([(logging.INFO, line + extra)])
        await self.artifact(w)
        await self.events([Notice(logging.INFO, "dispatcher stats", "schedulemaster.delayed.stats", None, w)])
