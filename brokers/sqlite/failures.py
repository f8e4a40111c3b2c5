"""sqlite3 errors of the SQLite transport as broker errors (:mod:`pixfleet.errors`)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pixfleet.errors import BrokerError, BrokerUnavailable
from pixfleet.storage import broker_storage_error

#: Primary result codes that go away by themselves (a lock held by another process, a full or
#: failing disk, a file being replaced): ``broker.unavailable``, which consumers wait out.
_TRANSIENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def translate(path: Path, exc: sqlite3.Error) -> BrokerError:
    """A sqlite3 error as a broker error: ``storage.full`` / ``storage.read_only`` for a full
    or read-only file system (:mod:`pixfleet.storage`: still a :class:`BrokerUnavailable`),
    :class:`BrokerUnavailable` for the other transient kinds (locked longer than
    ``busy_timeout``, a failing disk), :class:`BrokerError` else."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return broker_storage_error(path, True, text)
    if primary == sqlite3.SQLITE_READONLY or "readonly database" in text:
        return broker_storage_error(path, False, text)
    if primary in _TRANSIENT:
        return BrokerUnavailable(f"sqlite database {path} unavailable: {exc}")
    return BrokerError(f"sqlite error on {path}: {exc}")


def open_error(path: Path, message: str) -> BrokerUnavailable:
    """Why ``path`` cannot be opened: its directory's file system is read-only or full
    (``storage.*``), or the database is unavailable."""
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return BrokerUnavailable(f"cannot open sqlite database {path}: {message}")
    if stats.f_flag & os.ST_RDONLY:
        return broker_storage_error(path, False, message)
    if stats.f_bavail == 0:
        return broker_storage_error(path, True, message)
    return BrokerUnavailable(f"cannot open sqlite database {path}: {message}")
