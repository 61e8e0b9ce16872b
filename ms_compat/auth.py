"""ms_auth_user / ms_auth_secret: secret = md5_hex(user + md5_hex(password) + user).

The secret is static and replayable by design of the original, so: compare it in constant
time, never log it, and slow down an address that keeps failing for a user.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import defaultdict, deque

from schedulemaster.ms_compat.store import Store, SystemUser, md5_hex

MAX_HEADER = 200
FAIL_WINDOW_S = 60.0
FREE_FAILURES = 5
MAX_DELAY_S = 2.0


def legacy_secret(user: str, password: str) -> str:
    """What a legacy client sends for ``user``/``password`` (admin/111111 -> 811a5c...)."""
    return md5_hex(user + md5_hex(password) + user)


class Authenticator:
    def __init__(self, store: Store):
        self.store = store
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    async def check(self, user: str | None, secret: str | None, address: str) -> SystemUser | None:
        key = (user or "", address)
        recent = self._failures.get(key)
        if recent:
            now = time.monotonic()
            while recent and now - recent[0] > FAIL_WINDOW_S:
                recent.popleft()
            if len(recent) > FREE_FAILURES:
                await asyncio.sleep(min(MAX_DELAY_S, 0.1 * (len(recent) - FREE_FAILURES)))
        found = self._verify(user, secret)
        if found is None:
            q = self._failures[key]
            q.append(time.monotonic())
            if len(q) > 1000:
                q.popleft()
            if len(self._failures) > 10000:  # bounded memory under a spray of names
                self._failures.clear()
        else:
            self._failures.pop(key, None)
        return found

    def _verify(self, user: str | None, secret: str | None) -> SystemUser | None:
        if not user or not secret or len(user) > MAX_HEADER or len(secret) > MAX_HEADER:
            return None
        row = self.store.user_by_name(user)
        if row is None or row.status != 1:
            return None
        expected = md5_hex(user + row.password + user)
        if not hmac.compare_digest(expected.encode(), secret.encode("utf-8", "replace")):
            return None
        return row
