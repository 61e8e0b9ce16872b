"""The import's ledger: what the last ``schedulemaster import`` wrote for each item, so that a
re-run can tell a change in the original from a change made here (ms_compat/import_target.py)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from pydantic import NaiveDatetime
from sqlmodel import Field, SQLModel

from schedulemaster.timeutil import utcnow_naive


class ImportLedger(SQLModel, table=True):
    """What the last import wrote for each item: fingerprints of the source row and of the
    target item right after the write, so a re-run can tell who changed what."""

    __tablename__ = "importledger"
    kind: str = Field(primary_key=True, max_length=10)   # task | user | setting
    key: str = Field(primary_key=True, max_length=100)   # task id, lowercased user name, setting key
    sourcefp: str = Field(max_length=64)
    targetfp: str = Field(max_length=64)
    targetid: Optional[str] = Field(default=None, max_length=64)
    importedat: NaiveDatetime = Field(default_factory=utcnow_naive)


def fingerprint(value: Any) -> str:
    """A short, stable digest of a JSON-able value (keys sorted): what the ledger compares."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
