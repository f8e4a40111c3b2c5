"""The claim-check stores: one protocol suite over every store, and file-store confinement."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pixfleet.blobs import BlobStore, open_blobstore, output_key, store_output, store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobIntegrityError, BlobKeyError, BlobNotFound, InvalidURL


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    return MemoryBlobStore()


async def test_uploads_are_content_addressed_and_stored_once(store: BlobStore) -> None:
    first = await store_upload(store, b"image bytes", "image/jpeg")
    second = await store_upload(store, b"image bytes", "image/jpeg")
    assert first == second
    assert first.sha256 == hashlib.sha256(b"image bytes").hexdigest()
    assert first.uri == f"uploads/{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}"
    assert await store.get(first) == b"image bytes"


async def test_streamed_put_hashes_while_writing(store: BlobStore) -> None:
    parts = [os.urandom(65536) for _ in range(8)]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    stored = await store.put_stream(chunks())
    data = b"".join(parts)
    assert (stored.sha256, stored.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert await store.read(stored.key) == data


async def test_outputs_have_deterministic_keys_and_overwrite(store: BlobStore) -> None:
    key1 = await store_output(store, "task1", "thumbs", "256.jpg", b"one")
    key2 = await store_output(store, "task1", "thumbs", "256.jpg", b"two")
    assert key1 == key2 == "outputs/thumbs/ta/task1/256.jpg"
    assert await store.read(key1) == b"two"


async def test_create_if_absent_has_exactly_one_winner(store: BlobStore) -> None:
    key = "done/thumbs/task1"
    wins = await asyncio.gather(*(store.create(key, f"w{i}".encode()) for i in range(8)))
    assert sum(wins) == 1
    assert await store.read(key) == f"w{wins.index(True)}".encode()
    assert await store.exists(key)
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # deleting what is gone is no error
    assert await store.create(key, b"again")


async def test_integrity_is_checked_on_get(store: BlobStore) -> None:
    ref = await store_upload(store, b"original", "image/png")
    await store.put(ref.uri, b"tampered")
    with pytest.raises(BlobIntegrityError):
        await store.get(ref)
    await store.put(ref.uri, b"Original")  # same size, other bytes
    with pytest.raises(BlobIntegrityError):
        await store.get(ref)


async def test_missing_blob_is_not_found(store: BlobStore) -> None:
    ref = BlobRef(
        uri="uploads/aa/bb/" + "a" * 64, sha256="a" * 64, size=1, content_type="image/png"
    )
    with pytest.raises(BlobNotFound):
        await store.get(ref)


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "uploads/../../outside",
        "/etc/passwd",
        "a\\b",
        "",
        "uploads/\x00",
        "file:///etc/passwd",
        "http://example.invalid/x",
        "uploads/.hidden",
        "uploads//x",
    ],
)
async def test_keys_cannot_leave_the_store(store: BlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError):
        await store.read(key)
    with pytest.raises(BlobKeyError):
        await store.put(key, b"x")


async def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (store.root / "uploads").mkdir(parents=True)
    os.symlink(secret, store.root / "uploads" / "link")
    with pytest.raises(BlobKeyError):
        await store.read("uploads/link")


async def test_file_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    await store_upload(store, b"bytes", "image/png")
    await store_output(store, "task1", "thumbs", "a.jpg", b"x")
    await store.create("done/x", b"1")
    await store.create("done/x", b"2")
    assert not [p for p in store.root.rglob("*.tmp")]


async def test_keys_do_not_depend_on_where_the_store_is_mounted(tmp_path: Path) -> None:
    # Two machines mounting the same storage at different paths read each other's blobs.
    (tmp_path / "mnt-a").symlink_to(tmp_path / "shared", target_is_directory=True)
    (tmp_path / "shared").mkdir()
    ref = await store_upload(FileBlobStore(tmp_path / "mnt-a"), b"bytes", "image/png")
    assert await FileBlobStore(tmp_path / "shared").get(ref) == b"bytes"


@pytest.mark.parametrize("segment", ["..", ".hidden", "a/b", ""])
def test_output_key_segments_are_validated(segment: str) -> None:
    with pytest.raises(BlobKeyError):
        output_key(segment, "thumbs", "x.jpg")


def test_store_urls(tmp_path: Path) -> None:
    file_store = open_blobstore((tmp_path / "b").as_uri())
    assert isinstance(file_store, FileBlobStore)
    assert file_store.root == (tmp_path / "b").resolve()
    plain = open_blobstore(str(tmp_path / "c"))
    assert isinstance(plain, FileBlobStore)
    assert plain.root == (tmp_path / "c").resolve()
    assert isinstance(open_blobstore("memory://"), MemoryBlobStore)
    for bad in ("gopher://bucket/prefix", "file://otherhost/x", "memory://x"):
        with pytest.raises(InvalidURL):
            open_blobstore(bad)
