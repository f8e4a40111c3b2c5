"""An in-memory blob store for unit tests: the protocol's semantics, no disk, one process.

``memory://`` URLs give a fresh, empty store each time; nothing is shared between processes, so
it is no substitute for ``file://`` or ``s3://`` anywhere a second process must read a blob.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime

from pixfleet.blobs.keys import check_key, upload_key, verify
from pixfleet.blobs.protocol import BlobInfo, StoredBlob
from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobNotFound, InvalidURL
from pixfleet.settings import redact


class MemoryBlobStore:
    """A dict of key -> bytes behind the :class:`~pixfleet.blobs.protocol.BlobStore` protocol."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.modified: dict[str, datetime] = {}  # tests may age a blob by setting its time

    @classmethod
    def from_url(cls, url: str) -> MemoryBlobStore:
        if url.rstrip("/") != "memory:":
            raise InvalidURL(f"a memory blob store takes no path or options: {redact(url)!r}")
        return cls()

    @property
    def url(self) -> str:
        return "memory://"

    def url_for(self, key: str) -> str:
        return f"memory://{check_key(key)}"

    async def put(self, key: str, data: bytes) -> StoredBlob:
        self.blobs[check_key(key)] = bytes(data)
        self.modified[key] = datetime.now(UTC)
        return StoredBlob(key, hashlib.sha256(data).hexdigest(), len(data))

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        data = b"".join([chunk async for chunk in chunks])
        return await self.put(upload_key(hashlib.sha256(data).hexdigest()), data)

    async def read(self, key: str) -> bytes:
        try:
            return self.blobs[check_key(key)]
        except KeyError:
            raise BlobNotFound(f"blob not found: {key}") from None

    async def get(self, ref: BlobRef) -> bytes:
        return verify(ref.uri, await self.read(ref.uri), sha256=ref.sha256, size=ref.size)

    def loader(self, ref: BlobRef) -> Callable[[], bytes] | None:
        return None  # another process cannot see this one's memory

    async def exists(self, key: str) -> bool:
        return check_key(key) in self.blobs

    async def create(self, key: str, data: bytes) -> bool:
        if check_key(key) in self.blobs:
            return False
        self.blobs[key] = bytes(data)
        self.modified[key] = datetime.now(UTC)
        return True

    async def read_many(
        self, keys: Sequence[str], create: Mapping[str, bytes] | None = None
    ) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            if create is not None and key in create:
                await self.create(key, create[key])
            out.append(self.blobs.get(check_key(key)))
        return out

    async def delete(self, key: str) -> None:
        self.blobs.pop(check_key(key), None)
        self.modified.pop(key, None)

    async def scan(self, prefix: str) -> AsyncIterator[BlobInfo]:
        start = f"{check_key(prefix)}/" if prefix else ""
        for key in [k for k in self.blobs if k.startswith(start)]:
            if key in self.blobs:  # not deleted while the caller handled an earlier one
                yield BlobInfo(key, len(self.blobs[key]), self.modified[key])
