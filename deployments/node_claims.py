"""The node's side of firing claims (deployments/claims.py): claim ahead, answer at fire time.

Claiming each firing at its instant would put a round trip to the master in front of every
firing; instead the firing loop claims, in one call, every firing due within ``AHEAD``
seconds, and the timer finds the answer waiting. A firing that was not claimed ahead (a
catch-up, a child, a claim call that failed) is claimed on its own before it runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Iterable
from uuid import UUID

log = logging.getLogger("schedulemaster.node")

AHEAD = 2.0  # seconds: firings due this soon are claimed in the next batch
CLAIMS_PATH = "/schedulemaster/claims"
FORGET_AFTER = timedelta(minutes=2)


class Superseded(Exception):
    """Another process registered under this node's name: this one must stop firing."""


class Claimer:
    def __init__(self, client, node: str, incarnation: str):
        self.client = client
        self.node = node
        self.incarnation = incarnation
        self.won: dict[str, datetime] = {}   # claimed by us, not fired yet
        self.lost: dict[str, datetime] = {}  # claimed by another node
        self.superseded = False  # another process took this node's name: it must stop
        self.on_superseded = lambda: None  # the node's stop, called once when that happens

    def known(self, fid: str) -> bool:
        return fid in self.won or fid in self.lost

    async def claim(self, items: Iterable[tuple[str, UUID, datetime]]) -> None:
        """Claim (firing id, task id, instant) in one call; raises when the master cannot answer."""
        items = [i for i in items if not self.known(i[0])]
        if not items:
            return
        resp = await self.client._client.post(CLAIMS_PATH, json=self._body(items))
        answer = resp.json()
        if answer.get("superseded"):
            if not self.superseded:
                self.superseded = True
                log.error("another process registered as node %s: this process stops firing", self.node)
                self.on_superseded()
            raise Superseded(f"another process registered as node {self.node}")
        won = set(answer.get("won") or [])
        for fid, _tid, at in items:
            (self.won if fid in won else self.lost)[fid] = at

    async def take(self, fid: str, task_id: UUID, at: datetime) -> bool:
        """Whether this node runs the firing: its claim, made now if not made ahead."""
        if not self.known(fid):
            await self.claim([(fid, task_id, at)])
        return self.won.pop(fid, None) is not None

    async def release(self, fids: list[str]) -> None:
        """Give back claims this node won and will not fire (the answer is not needed)."""
        for f in fids:
            self.won.pop(f, None)
        if not fids:
            return
        try:
            await self.client._client.post(CLAIMS_PATH + "/release", json=self._body(
                [(f, UUID(int=0), datetime.now(timezone.utc)) for f in fids]))
        except Exception as exc:  # the failover service would re-run them; say so
            log.warning("could not release %d claims (%s): they may be re-run if this node dies", len(fids), exc)

    def stale(self, now: datetime) -> list[str]:
        """Won claims whose instant passed long ago without being fired (their task went)."""
        for fid, at in list(self.lost.items()):
            if now - at > FORGET_AFTER:
                del self.lost[fid]
        return [fid for fid, at in self.won.items() if now - at > timedelta(seconds=10)]

    def _body(self, items) -> dict:
        return {"node": self.node, "incarnation": self.incarnation,
                "firings": [{"firing_id": fid, "task_id": str(tid), "scheduled": at.isoformat()}
                            for fid, tid, at in items]}
