"""The Prefect API credential and the data directory's file modes.

Whoever reaches Prefect's API can make nodes run code, so the master never serves it without
an auth string: ``PREFECT_SERVER_API_AUTH_STRING`` when the operator set one, else one generated
at the first start and kept in the data directory (owner-only). Processes of the same system
on this machine (node, dispatcher, CLI, notebook) find it there; a process on another machine
is given it as ``PREFECT_API_AUTH_STRING``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import stat
from pathlib import Path

AUTH_FILE = "prefect-auth"
MIN_EXPOSED_LENGTH = 16  # a credential guarding a port other machines reach: at least this long
SERVER_KEY = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_KEY = "PREFECT_API_AUTH_STRING"


class CredentialError(RuntimeError):
    """The master must not start with this credential on this address."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (``0.0.0.0`` and ``::`` are every address)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume other machines resolve it too


def secure_dir(path: Path) -> Path:
    """Create ``path`` owner-only (0700) or tighten it; files written below are 0600 by umask."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def secure_tree(root: Path) -> None:
    """Make an existing data directory owner-only: directories 0700, files 0600 (SQLite files
    hold md5 hashes and the SMTP password; logs name tasks and nodes). Called at every start,
    so a data directory made by an older version is tightened too."""
    secure_dir(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != 0o700:
                p.chmod(0o700)
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077:
                p.chmod(stat.S_IMODE(p.stat().st_mode) & 0o700)


def owner_only_umask() -> None:
    """Files this process and its children create are owner-only."""
    os.umask(0o077)


def stored(data_dir: Path) -> str | None:
    """The credential kept in ``data_dir``, if there is one this user can read."""
    try:
        value = (data_dir / AUTH_FILE).read_text().strip()
    except OSError:
        return None
    return value or None


def server_auth_string(data_dir: Path, host: str) -> tuple[str, bool]:
    """The auth string the master serves Prefect's API with, and whether it was generated now.

    The operator's ``PREFECT_SERVER_API_AUTH_STRING`` wins; else the one kept in ``data_dir``;
    else a new one (``sm:`` + 256 random bits), written 0600. Raises ``CredentialError`` for a
    credential too weak for an address other machines reach."""
    given = os.environ.get(SERVER_KEY)
    created = False
    if given is not None:
        value = given
    else:
        value = stored(data_dir) or ""
        if not value:
            value = "sm:" + secrets.token_urlsafe(32)
            secure_dir(data_dir)
            path = data_dir / AUTH_FILE
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            created = True
    if not value.isascii():
        # Prefect 3.8.8 compares with secrets.compare_digest on str, which raises for other
        # characters: its server would answer every request with a 500.
        raise CredentialError(f"{SERVER_KEY} must be ASCII")
    if not is_loopback(host) and len(value) < MIN_EXPOSED_LENGTH:
        raise CredentialError(
            f"the Prefect API would listen on {host}, which other machines reach, with "
            f"{'an empty' if not value else 'a short'} {SERVER_KEY}: whoever reaches that port can make "
            f"the nodes run code. Unset it (a strong one is generated and kept in the data directory) "
            f"or give one of at least {MIN_EXPOSED_LENGTH} characters.")
    if not value:
        raise CredentialError(f"{SERVER_KEY} is empty: unset it to have one generated")
    return value, created


def basic_auth(auth_string: str) -> str:
    """The Authorization header's value that carries Prefect's auth string, as Prefect's own
    client sends it (HTTP Basic of the ``user:password`` text)."""
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


def client_auth_string(data_dir: Path | None = None) -> str | None:
    """What a client of this system sends to Prefect's API: ``PREFECT_API_AUTH_STRING``, else
    the server's own (same process tree), else the one kept in the data directory (this
    machine's system, when this user may read it)."""
    for key in (CLIENT_KEY, SERVER_KEY):
        if os.environ.get(key):
            return os.environ[key]
    candidates = []
    if data_dir is not None:
        candidates.append(data_dir)
    if os.environ.get("SM_DATA_DIR"):
        candidates.append(Path(os.environ["SM_DATA_DIR"]))
    here = Path.cwd()
    candidates += [p / ".schedulemaster" for p in (here, *here.parents)]
    for d in candidates:
        value = stored(d)
        if value:
            return value
    return None
