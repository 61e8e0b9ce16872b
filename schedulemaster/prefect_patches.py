"""The one change this project makes to Prefect's behaviour inside its own processes.

Prefect 3.8.8 validates every schedule's time zone against ``get_timezones()``, which lists
the whole tz database from disk on each call (``zoneinfo.available_timezones()``: 5 ms
here, more under load). Every deployment read validates its schedules, several times
(ORM row, server schema, response, client schema), so with task deployments carrying a
schedule the master spent most of its CPU walking /usr/share/zoneinfo (seen with py-spy
during the sustained benchmark: Creates took 3-20 s). The list does not change while a
process runs, so it is computed once.
"""

from __future__ import annotations

import functools


def apply() -> None:
    from prefect._internal.schemas import validators
    from prefect.types import _datetime

    if getattr(_datetime.get_timezones, "_schedulemaster_cached", False):
        return
    cached = functools.lru_cache(maxsize=1)(_datetime.get_timezones)
    cached._schedulemaster_cached = True  # type: ignore[attr-defined]
    _datetime.get_timezones = cached
    validators.get_timezones = cached
