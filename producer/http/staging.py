"""One uploaded file into the blob store: streamed, hashed while written, vetted on the way.

The first bytes decide: the magic bytes must name an image format (else ``415
input.not_image``) and the header's pixel count must be within the limit (else ``413
image.too_large``) - read with Pillow from the first :data:`HEAD_BYTES`, the same check
``uploader enqueue`` makes (:func:`producer.inspect.vet`). A header that does not fit there is
checked from the stored blob once it is complete. Over ``max_file_bytes`` the stream stops with
``413 input.too_large``. Uploads are content-addressed, so a refused file's blob is harmless (and
shared with any identical upload): nothing is deleted, nothing is published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from pixfleet.blobs import BlobStore
from pixfleet.envelope import BlobRef
from pixfleet.errors import InputEmpty, InputNotImage, InputTooLarge
from pixfleet.images import Limits
from producer.inspect import sniff, vet

#: Bytes read before anything is stored: enough for the header of nearly every image.
HEAD_BYTES = 64 * 1024
#: Chunks are gathered to about this size before each write (fewer thread hops; O(chunk)).
WRITE_BYTES = 1024 * 1024
#: Longest file name kept (it is metadata; the task keeps its last 255 characters).
NAME_CHARS = 255


@dataclass(frozen=True)
class StagedFile:
    """A stored, vetted upload, ready to be published as a task."""

    ref: BlobRef
    filename: str


def clean_filename(raw: str | None) -> str:
    """The client's file name as metadata only: its last path component, printable characters
    only, at most :data:`NAME_CHARS` long; ``upload`` when nothing is left."""
    name = (raw or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[-NAME_CHARS:] or "upload"


async def stage_file(
    chunks: AsyncIterator[bytes],
    filename: str,
    store: BlobStore,
    *,
    max_bytes: int,
    max_pixels: int,
) -> StagedFile:
    """Stream ``chunks`` into ``store`` and vet them (see the module docstring).

    Raises :class:`InputEmpty`, :class:`InputNotImage`, :class:`InputTooLarge`,
    :class:`~pixfleet.images.ImageTooLarge` or the store's errors."""
    body = _bounded(chunks, max_bytes, filename)
    head, complete = await _head(body)
    if not head:
        raise InputEmpty(f"{filename}: file is empty (0 bytes)")
    content_type = sniff(head[:16])
    if content_type is None:
        raise InputNotImage(f"{filename}: not an image (no JPEG/PNG/GIF/WebP/TIFF/BMP signature)")
    vetted = _vet_head(head, filename, max_pixels, complete=complete)
    stored = await store.put_stream(_coalesce(head, body))
    if not vetted:
        data = await store.read(stored.key)
        vet(data, filename, limits=Limits(max_pixels=max_pixels, max_bytes=len(data) + 1))
    ref = BlobRef(uri=stored.key, sha256=stored.sha256, size=stored.size, content_type=content_type)
    return StagedFile(ref, filename)


def _vet_head(head: bytes, filename: str, max_pixels: int, *, complete: bool) -> bool:
    """Vet the header from the first bytes: True if done, False if the header did not fit
    (then the whole blob is checked). Too many pixels is final either way."""
    try:
        vet(head, filename, limits=Limits(max_pixels=max_pixels, max_bytes=len(head) + 1))
    except InputNotImage:
        if complete:
            raise
        return False
    return True


async def _bounded(chunks: AsyncIterator[bytes], limit: int, filename: str) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise InputTooLarge(f"{filename}: more than {limit} bytes (the limit per file)")
        yield chunk


async def _head(body: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """At least :data:`HEAD_BYTES` of ``body`` (less if it ends first: then ``complete``)."""
    head = bytearray()
    while len(head) < HEAD_BYTES:
        chunk = await anext(body, None)
        if chunk is None:
            return bytes(head), True
        head += chunk
    return bytes(head), False


async def _coalesce(head: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``head`` and ``body`` gathered into writes of about :data:`WRITE_BYTES` (one copy)."""
    parts: list[bytes] = [head]
    size = len(head)
    async for chunk in body:
        parts.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)
