"""A pull-based, streaming ``multipart/form-data`` reader: parts one after another, each part's
bytes as they arrive, never a whole file in memory.

python-multipart's push parser turns each body chunk into events (part begins, headers, data,
part ends); :class:`MultipartReader` queues the events of one chunk and reads the next chunk only
when the caller wants more, so memory is O(chunk) whatever the size of a part::

    reader = MultipartReader(request.stream(), boundary, max_bytes=limit)
    while (part := await reader.next_part()) is not None:
        async for chunk in part.chunks():
            ...

Raises :class:`~producer.http.errors.RequestInvalid` for a malformed or truncated body (or a
client that went away) and
:class:`~producer.http.errors.RequestTooLarge` once more than ``max_bytes`` arrived.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from producer.http.errors import NotMultipart, RequestInvalid, RequestTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

Event = tuple[str, bytes]


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; else :class:`NotMultipart`."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary:
        raise NotMultipart(
            f"expected multipart/form-data with a boundary, got {content_type[:100]!r}"
        )
    return boundary


@dataclass
class Part:
    """One part: its form field name, the client's file name (metadata only) and its bytes."""

    name: str
    filename: str | None
    content_type: str
    _reader: MultipartReader = field(repr=False)
    _done: bool = field(default=False, repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The part's bytes as they arrive (each chunk once; a second pass yields nothing)."""
        while not self._done:
            kind, data = await self._reader.next_event()
            if kind == "data":
                yield data
            elif kind == "end":
                self._done = True
            else:
                raise RequestInvalid(f"malformed multipart body ({kind} inside a part)")

    async def text(self, limit: int) -> str:
        """A form field's value as UTF-8 text of at most ``limit`` bytes."""
        buf = bytearray()
        async for chunk in self.chunks():
            buf += chunk
            if len(buf) > limit:
                raise RequestInvalid(f"form field {self.name!r} exceeds {limit} bytes")
        try:
            return buf.decode()
        except UnicodeDecodeError as exc:
            raise RequestInvalid(f"form field {self.name!r} is not UTF-8") from exc


class MultipartReader:
    """Reads the parts of one body in order (see the module docstring)."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes, *, max_bytes: int) -> None:
        self._body = body
        self._max_bytes = max_bytes
        self.received = 0
        self._events: deque[Event] = deque()
        self._finished = False
        self._current: Part | None = None
        self._parser = MultipartParser(boundary, self._callbacks())

    def _callbacks(self) -> MultipartCallbacks:
        def mark(kind: str) -> Callable[[], None]:
            return lambda: self._events.append((kind, b""))

        def data(kind: str) -> Callable[[bytes, int, int], None]:
            def append(buf: bytes, start: int, end: int) -> None:
                whole = start == 0 and end == len(buf) and type(buf) is bytes
                self._events.append((kind, buf if whole else bytes(buf[start:end])))

            return append

        return {
            "on_part_begin": mark("begin"),
            "on_header_field": data("field"),
            "on_header_value": data("value"),
            "on_header_end": mark("header"),
            "on_headers_finished": mark("headers"),
            "on_part_data": data("data"),
            "on_part_end": mark("end"),
            "on_end": mark("finish"),
        }

    async def next_part(self) -> Part | None:
        """The next part (skipping what the caller left of the previous one), or None."""
        if self._current is not None:
            async for _ in self._current.chunks():
                pass
        headers: dict[str, str] = {}
        name, value = bytearray(), bytearray()
        while True:
            kind, data = await self.next_event()
            if kind == "finish":
                return None
            if kind == "field":
                name += data
            elif kind == "value":
                value += data
            elif kind == "header":
                headers[name.decode("latin-1").lower()] = value.decode("latin-1")
                name, value = bytearray(), bytearray()
            elif kind == "headers":
                self._current = _part(headers, self)
                return self._current

    async def next_event(self) -> Event:
        """The next parser event, reading more of the body when none is queued."""
        while not self._events:
            if self._finished:
                raise RequestInvalid("multipart body ended before its closing boundary")
            await self._feed()
        return self._events.popleft()

    async def drain(self, limit: int) -> bool:
        """Read and discard the rest of the body, at most ``limit`` bytes of it; True if the
        body was read to its end (so the connection stays usable for the response)."""
        seen = 0
        try:
            async for chunk in self._body:
                seen += len(chunk)
                if seen > limit:
                    return False
        except ClientDisconnect:
            return False
        return True

    async def _feed(self) -> None:
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            self._finished = True
            return
        except ClientDisconnect as exc:
            raise RequestInvalid("the client went away before the body ended") from exc
        self.received += len(chunk)
        if self.received > self._max_bytes:
            raise RequestTooLarge(f"request body exceeds the limit of {self._max_bytes} bytes")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise RequestInvalid(f"malformed multipart body: {exc}") from exc


def _part(headers: dict[str, str], reader: MultipartReader) -> Part:
    disposition, options = parse_options_header(headers.get("content-disposition", ""))
    if disposition != b"form-data" or b"name" not in options:
        raise RequestInvalid("a multipart part without Content-Disposition: form-data; name=")
    raw = options.get(b"filename")
    filename = None if raw is None else raw.decode("utf-8", errors="replace")
    name = options[b"name"].decode("utf-8", errors="replace")
    content_type = headers.get("content-type", "application/octet-stream")
    return Part(name, filename, content_type, reader)
