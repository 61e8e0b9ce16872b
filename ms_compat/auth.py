"""ms_auth_user / ms_auth_secret: secret = md5_hex(user + md5_hex(password) + user).

The secret is static and replayable by design of the original, so: compare it in constant
time, never log it, and slow down an address that keeps failing for a user. The address is the
TCP peer's; ``X-Forwarded-For`` counts only from a proxy listed in ``SM_TRUSTED_PROXIES``
(schedulemaster/master/process.py), or rotating it would give each guess a fresh budget.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import defaultdict, deque

from schedulemaster.ms_compat.secret import legacy_secret, md5_hex  # noqa: F401  (legacy_secret re-exported)
from schedulemaster.store.db import Store, SystemUser

MAX_HEADER = 200
FAIL_WINDOW_S = 60.0
FREE_FAILURES = 5
MAX_DELAY_S = 2.0


USER_CACHE_SECONDS = 1.0


class Authenticator:
    def __init__(self, store: Store):
        self.store = store
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # user name -> (row, when read, store's user version): a busy client (1,000 creates
        # a second) must not cost one users query per request. An account changed through
        # this process is re-read at once; one changed elsewhere within a second.
        self._users: dict[str, tuple[SystemUser | None, float, int]] = {}

    async def _user(self, name: str) -> SystemUser | None:
        hit = self._users.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[1] < USER_CACHE_SECONDS and hit[2] == self.store.user_version:
            return hit[0]
        # the store is synchronous and this loop is the Prefect server's too: read in a thread
        row = await asyncio.to_thread(self.store.user_by_name, name)
        if len(self._users) > 10_000:
            self._users.clear()
        self._users[name] = (row, now, self.store.user_version)
        return row

    async def check(self, user: str | None, secret: str | None, address: str) -> SystemUser | None:
        """The account these headers sign in as, or None. Attempts for one (user name, client
        address) take turns: parallel guesses would otherwise all be judged before the first
        failure was counted. A turn is short (a cached account, or one store read a second per
        user) unless the key has recent failures, so a busy, well-behaved client is not slowed."""
        key = (user or "", address)
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) > 10_000:  # bounded memory under a spray of names
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            recent = self._failures.get(key)
            if recent:
                now = time.monotonic()
                while recent and now - recent[0] > FAIL_WINDOW_S:
                    recent.popleft()
                if len(recent) >= FREE_FAILURES:
                    await asyncio.sleep(min(MAX_DELAY_S, 0.1 * (len(recent) - FREE_FAILURES + 1)))
            found = await self._verify(user, secret)
            if found is None:
                q = self._failures[key]
                q.append(time.monotonic())
                if len(q) > 1000:
                    q.popleft()
                if len(self._failures) > 10000:
                    self._failures = defaultdict(deque, {k: v for k, v in self._failures.items() if len(v) > FREE_FAILURES})
            else:
                self._failures.pop(key, None)
            return found

    async def _verify(self, user: str | None, secret: str | None) -> SystemUser | None:
        if not user or not secret or len(user) > MAX_HEADER or len(secret) > MAX_HEADER:
            return None
        row = await self._user(user)
        if row is None or row.status != 1:
            return None
        expected = md5_hex(user + row.password + user)
        if not hmac.compare_digest(expected.encode(), secret.encode("utf-8", "replace")):
            return None
        return row
