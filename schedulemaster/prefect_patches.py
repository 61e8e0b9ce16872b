"""The two changes this project makes to Prefect's behaviour inside its own processes.

1. Prefect 3.8.8 validates every schedule's time zone against ``get_timezones()``, which lists
the whole tz database from disk on each call (``zoneinfo.available_timezones()``: 5 ms
here, more under load). Every deployment read validates its schedules, several times
(ORM row, server schema, response, client schema), so with task deployments carrying a
schedule the master spent most of its CPU walking /usr/share/zoneinfo (seen with py-spy
during the sustained benchmark: Creates took 3-20 s). The list does not change while a
process runs, so it is computed once.

2. On SQLite, Prefect's server lets at most 100 requests in at once (``RequestLimitMiddleware``,
a guard against concurrent SQLite writes). Node coordination (firing claims, the nodes
table: schedulemaster/master/coordination_api.py) never touches Prefect's database, yet it queued
behind requests waiting up to 60 s for SQLite's write lock: claims took 37 s and every
firing of those seconds was late. Those paths skip the limiter; everything else keeps it.
"""

from __future__ import annotations

import functools


UNLIMITED_PREFIXES = ("/api/schedulemaster/claims", "/api/schedulemaster/nodes")


def apply() -> None:
    _cache_timezones()
    _exempt_coordination_from_request_limit()


def _exempt_coordination_from_request_limit() -> None:
    from prefect.server.api import server

    limited = server.RequestLimitMiddleware
    if getattr(limited, "_schedulemaster_exempt", False):
        return
    original = limited.__call__

    async def call(self, scope, receive, send):
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith(UNLIMITED_PREFIXES):
            return await self.app(scope, receive, send)
        return await original(self, scope, receive, send)

    limited.__call__ = call
    limited._schedulemaster_exempt = True


def _cache_timezones() -> None:
    from prefect._internal.schemas import validators
    from prefect.types import _datetime

    if getattr(_datetime.get_timezones, "_schedulemaster_cached", False):
        return
    cached = functools.lru_cache(maxsize=1)(_datetime.get_timezones)
    cached._schedulemaster_cached = True  # type: ignore[attr-defined]
    _datetime.get_timezones = cached
    validators.get_timezones = cached
