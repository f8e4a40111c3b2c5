"""Blob keys: deterministic, store-relative, and confined to the store by construction.

A key is one to sixteen ``/``-separated segments, each starting with a letter or digit, so a key
can never be absolute, climb with ``..``, name a hidden file or carry a scheme. Every store checks
every key with :func:`check_key` before touching anything; the file store additionally resolves
symlinks and refuses any path that leaves its root.

* uploads: ``uploads/<sha[:2]>/<sha[2:4]>/<sha256>`` - the same bytes are stored once;
* outputs: ``outputs/<task[:2]>/<task id>/<sha256[:16]>/<group>/<name>`` - a redelivered task
  overwrites its own outputs instead of adding copies, and the outputs are bound to the source
  bytes: a task that re-uses a task id with another blob (forged, or a client's mistake) can
  never write over the first task's outputs. 16 hex digits (64 bits) of the source's sha256 make
  a second preimage out of reach; the worker also refuses such a task outright (``task.conflict``).
"""

from __future__ import annotations

import hashlib
import re

from pixfleet.envelope import KEY_PATTERN, KEY_SEGMENT
from pixfleet.errors import BlobIntegrityError, BlobKeyError

_SEGMENT = re.compile(rf"^{KEY_SEGMENT}$")
_KEY = re.compile(KEY_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_key(key: str) -> str:
    """``key`` itself if it is a valid store-relative key; else :class:`BlobKeyError`."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise BlobKeyError(f"invalid blob key {key!r} (expected segment/segment/...)")
    return key


def upload_key(sha256: str) -> str:
    """Where upload bytes with this digest live (content-addressed)."""
    if not _SHA256.fullmatch(sha256):
        raise BlobKeyError(f"not a sha256 digest: {sha256!r}")
    return f"uploads/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def output_key(task_id: str, group: str, name: str, *, source_sha256: str) -> str:
    """Where output ``name`` of ``task_id`` made from the blob ``source_sha256`` by ``group``
    lives (a redelivery overwrites it)."""
    if not _SHA256.fullmatch(source_sha256):
        raise BlobKeyError(f"not a sha256 digest: {source_sha256!r}")
    for segment in (task_id, group, name):
        if not _SEGMENT.fullmatch(segment):
            raise BlobKeyError(f"unsafe key segment {segment!r}")
    return f"outputs/{task_id[:2]}/{task_id}/{source_sha256[:16]}/{group}/{name}"


def verify(key: str, data: bytes, *, sha256: str, size: int) -> bytes:
    """``data`` if it has ``size`` bytes hashing to ``sha256``; else :class:`BlobIntegrityError`."""
    if len(data) != size:
        raise BlobIntegrityError(f"blob {key} has {len(data)} bytes, the task says {size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise BlobIntegrityError(f"blob {key} sha256 mismatch ({digest[:12]}...)")
    return data
