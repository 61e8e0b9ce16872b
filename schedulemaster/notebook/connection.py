"""Which running system the Python API talks to: ``schedulemaster.connect()``.

One connection holds a ``LegacyClient`` (tasks, delayed tasks, accounts: the same door and
the same rules every other client goes through) and, opened on first use, Prefect's own
synchronous client for what Prefect holds (runs, their logs, the executor nodes, task
specs). Given only the legacy API's URL it asks ``/api/System/Info`` where Prefect's API is
and which zone cron runs in, so a notebook needs one URL, or none next to ``./sm up``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from schedulemaster.credentials import basic_auth, client_auth_string
from schedulemaster.notebook.legacy_client import DEFAULT_URL, LegacyClient, LegacyUnavailable

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1", ""}


class PrefectUnavailable(ConnectionError):
    """Prefect's API (runs, logs, nodes) could not be reached or refused the request."""


@contextmanager
def prefect_errors(url: str) -> Iterator[None]:
    """Turn the Prefect client's HTTP errors into ``PrefectUnavailable`` saying where and why,
    so a notebook sees one exception type, not httpx's."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as exc:
        detail = exc.response.text[:300] if exc.response is not None else ""
        raise PrefectUnavailable(f"Prefect's API at {url} answered HTTP {exc.response.status_code}: {detail}") from None
    except httpx.HTTPError as exc:
        raise PrefectUnavailable(f"cannot reach Prefect's API at {url}: {exc}") from None


@dataclass
class Connection:
    legacy: LegacyClient
    prefect_url: str
    timezone: str
    work_pool: str
    version: str = "unknown"
    prefect_auth: str | None = field(default=None, repr=False)  # Prefect's auth string
    _prefect: Any = field(default=None, repr=False)
    _master: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.legacy.url

    def prefect(self):
        """Prefect's ``SyncPrefectClient`` for this system (opened once, reused)."""
        if self._prefect is None:
            from prefect.client.orchestration import SyncPrefectClient

            client = SyncPrefectClient(self.prefect_url, auth_string=self.prefect_auth,
                                       api_key=os.environ.get("PREFECT_API_KEY"))
            with prefect_errors(self.prefect_url):
                client.__enter__()
            self._prefect = client
        return self._prefect

    def master_post(self, path: str, body: dict) -> bytes:
        """POST to one of the master's own endpoints beside Prefect's API (``/schedulemaster/…``,
        coordination/wire.py), with Prefect's credential, and return the answer's body. Plain
        httpx, as Prefect's client sends it: importing that client costs a notebook's first
        ``sm.tasks()`` half a second it does not need."""
        import httpx

        if self._master is None:
            headers = {}
            if self.prefect_auth:
                headers["Authorization"] = basic_auth(self.prefect_auth)
            elif key := os.environ.get("PREFECT_API_KEY"):
                headers["Authorization"] = f"Bearer {key}"
            self._master = httpx.Client(base_url=self.prefect_url, headers=headers, timeout=self.legacy.timeout)
        with prefect_errors(self.prefect_url):
            response = self._master.post(path, json=body)
            response.raise_for_status()
        return response.content

    def close(self) -> None:
        if self._prefect is not None:
            self._prefect.__exit__(None, None, None)
            self._prefect = None
        if self._master is not None:
            self._master.close()
            self._master = None
        self.legacy.close()

    def __repr__(self) -> str:
        return (f"<schedulemaster connection {self.url} as {self.legacy.user!r}, Prefect {self.prefect_url}, "
                f"cron in {self.timezone}>")


_current: Connection | None = None


def _reachable_prefect(advertised: str, legacy_url: str) -> str:
    """The master advertises Prefect's URL as it binds it (often 127.0.0.1); a client that
    reached the legacy API under another host name reaches Prefect under that name too."""
    parts = urlsplit(advertised)
    host = urlsplit(legacy_url).hostname or ""
    if (parts.hostname or "") in _LOCAL_HOSTS and host not in _LOCAL_HOSTS:
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return advertised


def connect(url: str | None = None, user: str | None = None, password: str | None = None, *,
            prefect_url: str | None = None, prefect_auth: str | None = None,
            timeout: float = 120.0) -> Connection:
    """Connect to a running system and make it the one every other call uses.

    ``url`` is the legacy API (default ``$SM_API`` or http://127.0.0.1:30000, where ``./sm up``
    puts it); ``user`` / ``password`` default to ``$SM_USER`` / ``$SM_PASSWORD`` or the
    original's admin / 111111. Raises ``LegacyUnavailable`` when nothing answers there and
    ``LegacyAuthError`` for a wrong password. ``prefect_auth`` is the credential of Prefect's
    API (default ``$PREFECT_API_AUTH_STRING``, else the one a system on this machine keeps in its
    data directory: ``$SM_DATA_DIR``, or ``.schedulemaster`` in this directory or above).
    """
    global _current
    url = url or os.environ.get("SM_API") or DEFAULT_URL
    legacy = LegacyClient(url, user or os.environ.get("SM_USER") or "admin",
                          password or os.environ.get("SM_PASSWORD") or "111111", timeout=timeout)
    try:
        info = legacy.info()
    except LegacyUnavailable as exc:
        legacy.close()
        raise LegacyUnavailable(f"{exc} (is the system up? `./sm up` starts it)") from None
    except Exception:
        legacy.close()
        raise
    prefect = (prefect_url or os.environ.get("SM_PREFECT_API_URL")
               or _reachable_prefect(info.get("PrefectApiUrl") or "", url))
    # the connection this replaces stays open: code may still hold it (``conn=`` arguments)
    _current = Connection(legacy, prefect.rstrip("/"), info.get("TimeZone") or "UTC",
                          info.get("WorkPool") or "schedulemaster", info.get("Version") or "unknown",
                          prefect_auth or client_auth_string())
    return _current


def current() -> Connection:
    """The connection in use; the default one (``connect()``) when none was made yet."""
    return _current if _current is not None else connect()
