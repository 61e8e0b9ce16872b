"""Plugin packages: a zip or wheel of Python code named ``<AssemblyName>.zip`` / ``.whl``.

The original kept uploaded zips in the master's ``wwwroot/plugins/`` and each worker
downloaded one at Start and unzipped it into ``wwwroot/plugins/<taskId>/`` (behaviour
docs/legacy-behaviour.md, Plugin tasks). Here too: the master stores the package (``PackageStore``), nodes fetch it
from the master at Start (no shared file system) and unpack it into the task's own
directory. Both sides check the archive the same way (``check_archive``), so a hostile
archive is refused at upload and could not escape its directory at a node anyway.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

MAX_PACKAGE_BYTES = int(os.environ.get("SM_PLUGIN_MAX_BYTES", 50 * 1024 * 1024))
MAX_UNPACKED_BYTES = 4 * MAX_PACKAGE_BYTES
MAX_FILES = 5000
EXTENSIONS = (".zip", ".whl")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class PackageError(ValueError):
    """The archive or its name is not acceptable; the message says why."""


@dataclass
class PackageInfo:
    name: str
    filename: str
    sha256: str
    size: int
    uploaded: datetime


def check_name(filename: str) -> tuple[str, str]:
    """``Orders.Sync.zip`` -> (``Orders.Sync``, ``.zip``); the stem must be an importable name."""
    base = PurePosixPath(filename.replace("\\", "/")).name
    for ext in EXTENSIONS:
        if base.lower().endswith(ext):
            stem = base[: -len(ext)]
            if len(stem) > 200 or not NAME.match(stem):
                raise PackageError(f"the package name {stem[:200]!r} is not an importable module name "
                                   "(the file must be named <AssemblyName>.zip or .whl)")
            return stem, ext
    raise PackageError("a plugin package must be a .zip or .whl file named <AssemblyName>.zip / .whl")


def check_archive(path: Path) -> list[zipfile.ZipInfo]:
    """The archive's members, or PackageError: not a zip, absolute or ``..`` paths, links,
    too many files, or more than MAX_UNPACKED_BYTES once unpacked (a zip bomb)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"not a zip archive: {exc}") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_FILES:
            raise PackageError(f"too many files in the archive ({len(members)} > {MAX_FILES})")
        total = 0
        for m in members:
            name = m.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                raise PackageError(f"refused path in the archive: {m.filename[:200]!r} (outside its directory)")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise PackageError(f"refused symbolic link in the archive: {m.filename[:200]!r}")
            total += m.file_size
            if total > MAX_UNPACKED_BYTES:
                raise PackageError(f"the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        if not any(m.filename.endswith(".py") for m in members):
            raise PackageError("the archive holds no Python module (.py)")
        return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack into ``dest`` (replaced whole), member by member inside it, never following links."""
    members = check_archive(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        root = tmp.resolve()
        with zipfile.ZipFile(archive) as zf:
            for m in members:
                target = (root / m.filename.replace("\\", "/")).resolve()
                if root != target and root not in target.parents:
                    raise PackageError(f"refused path in the archive: {m.filename[:200]!r}")
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class PackageStore:
    """The master's copy of every uploaded package (``<data dir>/plugins``)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, filename: str, data: bytes) -> PackageInfo:
        name, ext = check_name(filename)
        if len(data) > MAX_PACKAGE_BYTES:
            raise PackageError(f"the package is larger than {MAX_PACKAGE_BYTES} bytes")
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            check_archive(tmp)
            for other in EXTENSIONS:  # one package per name: a new upload replaces the old
                if other != ext:
                    (self.root / f"{name}{other}").unlink(missing_ok=True)
            tmp.replace(self.root / f"{name}{ext}")
        finally:
            tmp.unlink(missing_ok=True)
        return self.info(name)

    def path(self, name: str) -> Path | None:
        if not NAME.match(name or ""):
            return None
        for ext in EXTENSIONS:
            p = self.root / f"{name}{ext}"
            if p.is_file():
                return p
        return None

    def info(self, name: str) -> PackageInfo | None:
        p = self.path(name)
        if p is None:
            return None
        data = p.read_bytes()
        return PackageInfo(name, p.name, hashlib.sha256(data).hexdigest(), len(data),
                           datetime.fromtimestamp(p.stat().st_mtime, timezone.utc))
