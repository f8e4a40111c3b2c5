"""Pre-flight of the local directories a command writes to: the embedded broker's and the file
blob store's (by default both under the data dir).

A read-only or full directory is reported as what it is - ``storage.read_only`` /
``storage.full``, naming the directory - before any broker or store is opened, instead of
surfacing later as an unreachable broker. Remote brokers and stores are not checked here.

A directory that becomes read-only or full *while* a command runs is reported the same way by
the adapters (the sqlite broker, the file blob store) with the classes below: each is both the
storage error (its code: ``storage.full`` / ``storage.read_only``) and the adapter's
``*.unavailable`` error, so every caller that retries an unavailable broker or store - a worker
retrying a task until its delivery limit, then answering with an error result - still does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pixfleet.errors import (
    BlobUnavailable,
    BrokerUnavailable,
    StorageError,
    StorageFull,
    StorageReadOnly,
)
from pixfleet.private import make_private_dirs

_HINT = "point PIXFLEET_HOME (or --broker/--blobs) at a writable directory with free space"


def local_dirs(broker_url: str, blobs_url: str) -> list[Path]:
    """The local directories behind ``sqlite:///`` and ``file://`` (or plain path) URLs."""
    dirs: list[Path] = []
    broker = urlsplit(broker_url)
    if broker.scheme == "sqlite" and broker.path.startswith("/") and len(broker.path) > 1:
        dirs.append(Path(unquote(broker.path[1:])).expanduser().resolve().parent)
    blobs = urlsplit(blobs_url)
    if blobs.scheme in ("", "file") and blobs.path:
        dirs.append(Path(unquote(blobs.path)).expanduser().resolve())
    return list(dict.fromkeys(dirs))


def check_writable(directory: Path) -> None:
    """Create ``directory`` if missing (private: 0700, like its missing parents), then raise
    :class:`StorageReadOnly` or :class:`StorageFull` if it cannot take writes
    (:class:`StorageError` for other failures)."""
    try:
        make_private_dirs(directory)
    except OSError as exc:
        known = storage_error(directory, exc)
        if known is None:
            return  # not a storage condition (no such mount, ...): the adapter reports it
        raise known from exc
    if not directory.is_dir():
        raise StorageError(f"{directory} is not a directory; {_HINT}")
    if not os.access(directory, os.W_OK):
        # access(2) answers EROFS for a read-only mount and EPERM for an immutable directory,
        # for root too (plain permission bits do not stop root).
        raise StorageReadOnly(f"{directory} is not writable; {_HINT}")
    stats = os.statvfs(directory)
    if stats.f_bavail == 0 or (stats.f_files and stats.f_favail == 0):
        raise StorageFull(f"no space left on the file system of {directory}; {_HINT}")


def storage_error(directory: Path, exc: OSError) -> StorageError | None:
    """An ``OSError`` from writing under ``directory`` as the storage error it is, if it is
    one (no space, a read-only file system, refused permissions)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left in {directory}: {exc.strerror}; {_HINT}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageReadOnly(f"{directory} is not writable: {exc.strerror}; {_HINT}")
    return None


def check_local_storage(broker_url: str, blobs_url: str) -> None:
    """:func:`check_writable` for every local directory of the two URLs."""
    for directory in local_dirs(broker_url, blobs_url):
        check_writable(directory)


class BrokerStorageFull(StorageFull, BrokerUnavailable):
    """The embedded broker's file system filled up while it ran (``storage.full``)."""


class BrokerStorageReadOnly(StorageReadOnly, BrokerUnavailable):
    """The embedded broker's file system became read-only (``storage.read_only``); retried
    like an unavailable broker, as it may be remounted."""

    retryable = True


class BlobStorageFull(StorageFull, BlobUnavailable):
    """The file blob store's file system filled up while it ran (``storage.full``)."""


class BlobStorageReadOnly(StorageReadOnly, BlobUnavailable):
    """The file blob store's file system became read-only (``storage.read_only``)."""

    retryable = True


def blob_storage_error(exc: OSError) -> BlobUnavailable | None:
    """An ``OSError`` of the file blob store as a storage error, if it is one (no space or
    quota left, a read-only file system), naming the file when the error does."""
    where = f"the file blob store ({exc.filename})" if exc.filename else "the file blob store"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BlobStorageFull(f"no space left in {where}: {exc.strerror}; {_HINT}")
    if exc.errno == errno.EROFS:
        return BlobStorageReadOnly(f"{where} is not writable: {exc.strerror}; {_HINT}")
    return None


def broker_storage_error(path: Path, full: bool, message: str) -> BrokerUnavailable:
    """The embedded broker's database ``path`` is on a full (``full``) or read-only file
    system; ``message`` is the database's own."""
    if full:
        return BrokerStorageFull(f"no space left for sqlite database {path}: {message}; {_HINT}")
    return BrokerStorageReadOnly(f"sqlite database {path} is not writable: {message}; {_HINT}")
