"""The file store's reads (:mod:`pixfleet.blobs.file`): a regular file, never through a final
link, never blocking on a FIFO or device, never more than it may hold."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pixfleet.blobs.keys import verify
from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobIntegrityError, BlobKeyError, BlobNotFound, BlobUnavailable
from pixfleet.images import MAX_BYTES

#: Largest blob a plain :meth:`FileBlobStore.read` returns (outputs and records are far smaller).
MAX_READ = 2 * MAX_BYTES


def read_regular(path: Path, key: str, size: int | None) -> bytes:
    """The bytes of a regular file, read safely: no symlink is followed, a FIFO or device never
    blocks (it is refused), and at most ``size`` (or :data:`MAX_READ`) + 1 bytes are read, so a
    huge or growing file cannot exhaust memory. A size that differs from ``size`` is a
    :class:`BlobIntegrityError` before anything is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BlobNotFound(f"blob not found: {key}") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise BlobKeyError(f"blob key {key} is not a regular file") from exc
        raise BlobUnavailable(f"cannot read blob {key}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BlobKeyError(f"blob key {key} is not a regular file")
        limit = MAX_READ if size is None else size
        if (size is not None and st.st_size != size) or st.st_size > limit:
            raise BlobIntegrityError(f"blob {key} has {st.st_size} bytes, expected {limit} at most")
        data = read_at_most(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BlobIntegrityError(f"blob {key} grew past {limit} bytes while being read")
    return data


def read_verified(path: Path, ref: BlobRef) -> bytes:
    data = read_regular(path, ref.uri, ref.size)
    return verify(ref.uri, data, sha256=ref.sha256, size=ref.size)


def read_at_most(fd: int, limit: int) -> bytes:
    parts, total = [], 0
    while total < limit:
        part = os.read(fd, min(1 << 20, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)
