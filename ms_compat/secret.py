"""The legacy API's credentials: ``ms_auth_secret = md5_hex(user + md5_hex(password) + user)``.

A module of its own, with nothing heavier than hashlib, so the CLI can compute a secret
without importing the store (sqlmodel, SQLAlchemy: a third of a second per command).
"""

from __future__ import annotations

import hashlib


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def legacy_secret(user: str, password: str) -> str:
    """What a legacy client sends for ``user``/``password`` (admin/111111 -> 811a5c...)."""
    return md5_hex(user + md5_hex(password) + user)
