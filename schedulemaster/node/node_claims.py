"""The node's side of firing claims (schedulemaster/store/claims.py): claim ahead, answer at fire time.

Claiming each firing at its instant would put a round trip to the master in front of every
firing; instead the firing loop claims, in one call, every firing due within ``AHEAD``
seconds, and the timer finds the answer waiting. A firing that was not claimed ahead (a
child, a claim call that failed) is claimed before it runs, in the node's next call: calls
go one at a time and carry every firing waiting. The same calls report the firings that
ran, which ends their claims, and tell the master the process is alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Iterable
from uuid import UUID

from schedulemaster.coordination.wire import ClaimItem, ClaimRequest, DoneItem

log = logging.getLogger("schedulemaster.node")

AHEAD = 2.0  # seconds: firings due this soon are claimed in the next batch
FORGET_AFTER = timedelta(minutes=2)
CHUNK = 500  # claims per call: the master takes up to 1,000 (a node taking over 150 tasks
             # catches up to 60 instants of each: one call of 9,000 was refused, and the node died)
SLOW_CLAIM = 1.0  # seconds: a claim call slower than this means the master is overloaded
KEEPALIVE = 5.0  # seconds: with nothing to claim, an empty claim call this often tells the
                 # master this process is alive (deployments/coordination_api.NodeActivity)


class Superseded(Exception):
    """Another process registered under this node's name: this one must stop firing."""


class Claimer:
    """``master``: a MasterClient (schedulemaster/coordination/client.py) holding this node's token."""

    def __init__(self, master, node: str, incarnation: str):
        self.master = master
        self.node = node
        self.incarnation = incarnation
        self.won: dict[str, datetime] = {}   # claimed by us, not fired yet
        self.lost: dict[str, datetime] = {}  # claimed by another node
        self.superseded = False  # another process took this node's name: it must stop
        self.on_superseded = lambda: None  # the node's stop, called once when that happens
        self.last_call = 0.0  # monotonic time of the last claim call that got an answer
        self.latency = 0.0  # seconds the last claim call took
        self.done: dict[str, bool] = {}  # fired, not reported yet: firing id -> ok
        # Firings that need their claim now (not claimed ahead), for the next call. One call
        # at a time per node, carrying all of them: with a slow master, a call per firing
        # was hundreds of requests at once, and both the node's connection pool and the
        # master choked on them (claims took minutes; bench/soak.py).
        self.wanted: dict[str, tuple[str, UUID, datetime]] = {}
        self._calling = asyncio.Lock()

    def fired(self, fid: str, ok: bool) -> None:
        """The firing ran: reported with the next claim call, which ends its claim (so a
        failover does not run it again, however far its record in Prefect lags)."""
        self.done[fid] = ok

    @property
    def master_busy(self) -> bool:
        """Claims answer slowly: the master is short of CPU (the recorder then holds back)."""
        return self.latency > SLOW_CLAIM

    def known(self, fid: str) -> bool:
        return fid in self.won or fid in self.lost

    async def claim(self, items: Iterable[tuple[str, UUID, datetime]], keepalive: bool = False) -> None:
        """Claim (firing id, task id, instant), CHUNK per call, and report the firings that
        ran; raises when the master cannot answer. With ``keepalive`` and nothing to say, an
        empty call is made when the last one is KEEPALIVE seconds old."""
        async with self._calling:
            await self._call(list(items), keepalive)

    async def _call(self, items: list[tuple[str, UUID, datetime]], keepalive: bool) -> None:
        items = list({i[0]: i for i in [*items, *self.wanted.values()] if not self.known(i[0])}.values())
        done = list(self.done.items())
        if not items and not done and not (keepalive and time.monotonic() - self.last_call >= KEEPALIVE):
            return
        for start in range(0, max(len(items), len(done), 1), CHUNK):
            chunk, reported = items[start:start + CHUNK], done[start:start + CHUNK]
            request = self._request(chunk)
            request.done = [DoneItem(firing_id=fid, ok=ok) for fid, ok in reported]
            sent = time.monotonic()
            answer = await self.master.claim(request)
            self.last_call = time.monotonic()
            self.latency = self.last_call - sent
            if self.latency > 2 * SLOW_CLAIM:
                log.warning("a claim call took %.1f s (%d claims, %d reports)", self.latency, len(chunk),
                            len(reported))
            for fid, _ok in reported:
                self.done.pop(fid, None)
            if answer.superseded:
                if not self.superseded:
                    self.superseded = True
                    log.error("another process registered as node %s: this process stops firing", self.node)
                    self.on_superseded()
                raise Superseded(f"another process registered as node {self.node}")
            won = set(answer.won)
            for fid, _tid, at in chunk:
                (self.won if fid in won else self.lost)[fid] = at
                self.wanted.pop(fid, None)

    async def take(self, fid: str, task_id: UUID, at: datetime) -> bool:
        """Whether this node runs the firing: its claim, made now (with every other firing
        waiting for one) if not made ahead; raises when the master cannot answer."""
        if not self.known(fid):
            self.wanted[fid] = (fid, task_id, at)
            async with self._calling:
                if not self.known(fid):  # else the call this one waited for answered it: no
                    await self._call([], False)  # call of its own (under load each waiting
                    # firing made one to report what ran, and the calls queued up for a minute)
        return self.won.pop(fid, None) is not None

    def forget(self, fid: str) -> None:
        """A firing given up on (a misfire): not claimed later."""
        self.wanted.pop(fid, None)

    async def release(self, fids: list[str]) -> None:
        """Give back claims this node won and will not fire (the answer is not needed)."""
        for f in fids:
            self.won.pop(f, None)
        if not fids:
            return
        try:
            for start in range(0, len(fids), CHUNK):
                await self.master.release(self._request(
                    [(f, UUID(int=0), datetime.now(timezone.utc)) for f in fids[start:start + CHUNK]]))
        except Exception as exc:  # the failover service would re-run them; say so
            log.warning("could not release %d claims (%s): they may be re-run if this node dies", len(fids), exc)

    def stale(self, now: datetime) -> list[str]:
        """Won claims whose instant passed long ago without being fired (their task went)."""
        for fid, at in list(self.lost.items()):
            if now - at > FORGET_AFTER:
                del self.lost[fid]
        return [fid for fid, at in self.won.items() if now - at > timedelta(seconds=10)]

    def _request(self, items) -> ClaimRequest:
        return ClaimRequest(node=self.node, incarnation=self.incarnation,
                            firings=[ClaimItem(firing_id=fid, task_id=tid, scheduled=at) for fid, tid, at in items])
