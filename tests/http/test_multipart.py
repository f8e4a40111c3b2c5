"""The streaming multipart reader: any chunking gives the same parts; bad bodies are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from producer.http.errors import NotMultipart, RequestInvalid, RequestTooLarge
from producer.http.multipart import MultipartReader, boundary_of

BOUNDARY = b"----pixfleet-test"
PAYLOAD = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"


def body(*parts: tuple[str, str | None, bytes], end: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += b"--" + BOUNDARY + b"\r\n"
        out += f"Content-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + (b"--" + BOUNDARY + b"--\r\n" if end else b"")


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(reader: MultipartReader) -> list[tuple[str, str | None, bytes]]:
    parts = []
    while (part := await reader.next_part()) is not None:
        data = b"".join([chunk async for chunk in part.chunks()])
        parts.append((part.name, part.filename, data))
    return parts


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
async def test_any_chunking_gives_the_same_parts(size: int) -> None:
    parts = [("file", "ä photo.jpg", PAYLOAD), ("groups", None, b"thumbs"), ("file", "b", b"")]
    reader = MultipartReader(chunked(body(*parts), size), BOUNDARY, max_bytes=1 << 30)
    assert await read_all(reader) == parts


async def test_a_part_left_unread_is_skipped() -> None:
    parts = [("file", "a", PAYLOAD), ("params", None, b"{}")]
    reader = MultipartReader(chunked(body(*parts), 100), BOUNDARY, max_bytes=1 << 30)
    first = await reader.next_part()
    assert first is not None and first.filename == "a"
    second = await reader.next_part()
    assert second is not None and await second.text(10) == "{}"
    assert await reader.next_part() is None


async def test_a_truncated_body_is_invalid() -> None:
    data = body(("file", "a", PAYLOAD), end=False)[:-10]
    reader = MultipartReader(chunked(data, 64), BOUNDARY, max_bytes=1 << 30)
    with pytest.raises(RequestInvalid):
        await read_all(reader)


async def test_the_body_limit_holds_whatever_the_headers_said() -> None:
    reader = MultipartReader(
        chunked(body(("file", "a", PAYLOAD)), 512), BOUNDARY, max_bytes=len(PAYLOAD) // 2
    )
    with pytest.raises(RequestTooLarge):
        await read_all(reader)


async def test_parts_need_a_form_data_name_and_fields_are_bounded() -> None:
    bad = b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n"
    with pytest.raises(RequestInvalid):
        await read_all(MultipartReader(chunked(bad, 16), BOUNDARY, max_bytes=1 << 20))
    reader = MultipartReader(
        chunked(body(("groups", None, b"x" * 100)), 16), BOUNDARY, max_bytes=1 << 20
    )
    part = await reader.next_part()
    assert part is not None
    with pytest.raises(RequestInvalid):
        await part.text(50)


def test_the_boundary_comes_from_a_multipart_content_type() -> None:
    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    for value in ("application/json", "multipart/form-data", "multipart/mixed; boundary=x", ""):
        with pytest.raises(NotMultipart):
            boundary_of(value)
