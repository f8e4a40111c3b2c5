"""Streams hashed as they are consumed: :class:`HashingSource` (the S3 store's ``put_stream``)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator


class HashingSource:
    """Wraps the caller's chunks: hashes and counts them as they are consumed, once."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = aiter(chunks)
        self._digest = hashlib.sha256()
        self.size = 0
        self.finished = False

    def sha256(self) -> str:
        return self._digest.hexdigest()

    async def read_at_least(self, limit: int) -> list[bytes]:
        """Buffer ``limit`` bytes (or all, if the stream ends first: then ``finished``)."""
        parts: list[bytes] = []
        while self.size < limit and (chunk := await self._next()) is not None:
            parts.append(chunk)
        return parts

    async def rest(self, head: list[bytes]) -> AsyncIterator[bytes]:
        """The ``head`` chunks, then those not read yet (each released once sent)."""
        while head:
            yield head.pop(0)
        while (chunk := await self._next()) is not None:
            yield chunk

    async def _next(self) -> bytes | None:
        while not self.finished:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self.finished = True
                break
            if chunk:
                self._digest.update(chunk)
                self.size += len(chunk)
                return chunk
        return None
