"""Roles on legacy accounts (an extension: the original let every account do everything).

- **viewer** reads tasks, runs, logs, delayed tasks and nodes, and changes its own password;
- **operator** also runs the day: tasks (create, edit, start, pause, stop, run once, delete),
  delayed tasks (create, void, execute, reset), nodes (enable, disable);
- **admin** also holds the keys: accounts, settings (the SMTP server and its password), plugin
  uploads (code that runs on the nodes), node edit and delete, and the audit trail.

A path not listed below needs admin: a new endpoint is closed until someone decides otherwise.
"""

from __future__ import annotations

ADMIN, OPERATOR, VIEWER = "admin", "operator", "viewer"
ROLES = (VIEWER, OPERATOR, ADMIN)  # each may do what the ones before it may
_RANK = {role: i for i, role in enumerate(ROLES)}

#: the seeded admin and accounts created before roles existed: full rights, as they had
DEFAULT_EXISTING = ADMIN
#: an account created without a role
DEFAULT_NEW = OPERATOR

_VIEWER_PATHS = {
    "/api/task/querylist", "/api/task/querytaskdetail", "/api/task/querytraces", "/api/task/querytracelogs",
    "/api/system/querylogs", "/api/system/info",
    "/api/delaytask/querylist", "/api/delaytask/querydetail",
    "/api/node/querylist",
    "/api/account/changepwd",  # one's own password
}
_OPERATOR_PATHS = {
    *(f"/api/task/{a}" for a in ("create", "edit", "start", "pause", "resume", "stop", "runonce", "delete")),
    *(f"/api/delaytask/{a}" for a in ("create", "createbatch", "void", "stop", "execute", "reset", "start")),
    "/api/node/enable", "/api/node/disable",
}


def required(path: str) -> str:
    """The least role that may call ``path`` (lowercased, as the legacy pipeline routes it)."""
    if path in _VIEWER_PATHS:
        return VIEWER
    if path in _OPERATOR_PATHS:
        return OPERATOR
    return ADMIN


def may(role: str | None, path: str) -> bool:
    return _RANK.get(role or "", -1) >= _RANK[required(path)]


def parse(value: str | None) -> str | None:
    """A role name from a form or a CLI (case-insensitive), or None when it is not one."""
    v = (value or "").strip().lower()
    return v if v in _RANK else None
