"""The blob-store protocol: what the uploader, the worker and the ingress may ask of a store.

Image bytes never travel through the broker (claim check): they live in a blob store chosen by
URL (:func:`pixfleet.blobs.open_blobstore`), and tasks and results carry store-relative keys, so
machines that share nothing but the broker and the object store work together. Nothing outside
:mod:`pixfleet.blobs` knows which store it talks to.

Errors: :class:`~pixfleet.errors.BlobKeyError` (a key outside the store),
:class:`~pixfleet.errors.BlobNotFound`, :class:`~pixfleet.errors.BlobIntegrityError` (a verified
read that does not match), :class:`~pixfleet.errors.BlobUnavailable` (I/O; retryable).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobNotFound


@dataclass(frozen=True)
class StoredBlob:
    """What a put stored: its key, digest and size."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as a listing shows it: key, size and last modification (aware, UTC)."""

    key: str
    size: int
    modified: datetime


class BlobStore(Protocol):
    """An async blob store. Writes are atomic: a reader never sees half a blob."""

    @property
    def url(self) -> str:
        """The store's URL (configuration, safe to log)."""
        ...

    async def put(self, key: str, data: bytes) -> StoredBlob:
        """Write ``data`` under ``key``, replacing what was there (idempotent by key)."""
        ...

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        """Stream bytes in, hashing as they come, and store them content-addressed under
        :func:`~pixfleet.blobs.keys.upload_key` of their sha256 (the same bytes once).
        Memory stays O(chunk). The caller bounds the size by what it yields."""
        ...

    async def read(self, key: str) -> bytes:
        """The bytes under ``key`` (not verified: for outputs and records)."""
        ...

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes ``ref`` names, verified against its size and sha256."""
        ...

    def loader(self, ref: BlobRef) -> Callable[[], bytes] | None:
        """:meth:`get` as a picklable call that a pool process on this machine makes itself
        (the bytes then never pass through the caller), or None where that cannot be done."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` only if nothing is there yet (``O_EXCL`` / conditional
        put). True if this call created it, False if the key already existed - so exactly one
        of several racing writers wins, on every machine."""
        ...

    async def read_many(
        self, keys: Sequence[str], create: Mapping[str, bytes] | None = None
    ) -> list[bytes | None]:
        """The bytes under each of ``keys``, in order (None where nothing is), in one trip to the
        store where it can: one thread hop (``file://``), concurrent requests (``s3://``). A key
        of ``create`` that holds nothing is created with its bytes as :meth:`create` does (one
        racing writer wins) and then reads as what it holds - these bytes if this call won."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that is not there is not an error."""
        ...

    def scan(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Every blob under the key prefix ``prefix`` (whole segments: ``"uploads"`` lists
        ``uploads/...``; ``""`` lists everything), in no particular order, streamed (memory
        stays O(one page)). Staging files of unfinished writes are never listed."""
        ...

    def url_for(self, key: str) -> str:
        """Where a client can fetch ``key`` (a ``file://`` URL, a presigned HTTPS URL, ...)."""
        ...


async def read_each(
    store: BlobStore, keys: Sequence[str], create: Mapping[str, bytes] | None = None
) -> list[bytes | None]:
    """:meth:`BlobStore.read_many` by the store's own ``read`` and ``create``, the keys
    concurrently: for a store whose calls are requests, not thread hops."""
    return list(
        await asyncio.gather(*(_read_or_create(store, k, (create or {}).get(k)) for k in keys))
    )


async def _read_or_create(store: BlobStore, key: str, data: bytes | None) -> bytes | None:
    try:
        return await store.read(key)
    except BlobNotFound:
        if data is None:
            return None
    if await store.create(key, data):
        return data
    return await store.read(key)  # a racing writer won
