"""Blob stores (claim check), chosen by URL like transports.

``open_blobstore(url)`` looks the scheme up in :data:`STORES` (``module:Class``, imported
lazily, each class with ``from_url``), so a new store costs one line here plus its module.
:func:`store_upload` and :func:`store_output` are the two writes the system makes, with the key
rules of :mod:`pixfleet.blobs.keys`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, cast
from urllib.parse import urlsplit

from pixfleet.blobs.keys import check_key, output_key, upload_key
from pixfleet.blobs.protocol import BlobInfo, BlobStore, StoredBlob
from pixfleet.envelope import BlobRef
from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

__all__ = [
    "STORES",
    "BlobInfo",
    "BlobStore",
    "StoredBlob",
    "check_key",
    "open_blobstore",
    "output_key",
    "store_output",
    "store_upload",
    "upload_key",
]

#: URL scheme -> ``module:Class``; a URL without a scheme is a directory path.
STORES: dict[str, str] = {
    "": "pixfleet.blobs.file:FileBlobStore",
    "file": "pixfleet.blobs.file:FileBlobStore",
    "memory": "pixfleet.blobs.memory:MemoryBlobStore",
    "s3": "pixfleet.blobs.s3:S3BlobStore",
}


class _FromUrl(Protocol):
    def from_url(self, url: str) -> BlobStore: ...


def open_blobstore(url: str) -> BlobStore:
    """The store for ``url``; :class:`~pixfleet.errors.InvalidURL` for an unknown scheme."""
    scheme = urlsplit(url).scheme if url else "?"
    target = STORES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in STORES if s)
        raise InvalidURL(
            f"unsupported blob store URL {redact(url)!r} (known: {known} or a directory)"
        )
    module_name, _, class_name = target.partition(":")
    cls = cast(_FromUrl, getattr(importlib.import_module(module_name), class_name))
    return cls.from_url(url)


async def store_upload(
    store: BlobStore, data: bytes | AsyncIterable[bytes], content_type: str
) -> BlobRef:
    """Store upload bytes content-addressed (idempotent) and return the task's claim check."""
    stored = await store.put_stream(_chunks(data) if isinstance(data, bytes) else data)
    return BlobRef(
        uri=stored.key, sha256=stored.sha256, size=stored.size, content_type=content_type
    )


async def store_output(
    store: BlobStore, task_id: str, group: str, name: str, data: bytes, *, source_sha256: str
) -> str:
    """Store (or overwrite) one output of a task made from the blob ``source_sha256``; returns
    its key (:func:`~pixfleet.blobs.keys.output_key`)."""
    key = output_key(task_id, group, name, source_sha256=source_sha256)
    return (await store.put(key, data)).key


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
