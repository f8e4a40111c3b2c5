"""The claim-check stores: one protocol suite over every store, and file-store confinement."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import resource
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pixfleet.blobs import BlobStore, open_blobstore, output_key, store_output, store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobIntegrityError, BlobKeyError, BlobNotFound, InvalidURL
from producer import gc


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
    source = hashlib.sha256(b"source").hexdigest()
    key1 = await store_output(store, "task1", "thumbs", "256.jpg", b"one", source_sha256=source)
    key2 = await store_output(store, "task1", "thumbs", "256.jpg", b"two", source_sha256=source)
    assert key1 == key2 == f"outputs/ta/task1/{source[:16]}/thumbs/256.jpg"
    assert await store.read(key1) == b"two"
    other = hashlib.sha256(b"other source").hexdigest()
    key3 = await store_output(store, "task1", "thumbs", "256.jpg", b"forged", source_sha256=other)
    assert key3 != key1 and await store.read(key1) == b"two"  # bound to the source bytes


async def test_scan_lists_keys_sizes_and_ages_under_a_prefix(store: BlobStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=1)
    ref = await store_upload(store, b"image bytes", "image/jpeg")
    out = await store_output(store, "task1", "thumbs", "a.jpg", b"xy", source_sha256=ref.sha256)
    uploads = {blob.key: blob async for blob in store.scan("uploads")}
    assert list(uploads) == [ref.uri]
    assert uploads[ref.uri].size == len(b"image bytes")
    assert before < uploads[ref.uri].modified < datetime.now(UTC) + timedelta(minutes=1)
    assert {blob.key async for blob in store.scan("")} == {ref.uri, out}
    assert [blob async for blob in store.scan("records")] == []
    await store.delete(out)
    assert [blob.key async for blob in store.scan("outputs/ta")] == []


async def test_gc_deletes_only_old_blobs_under_its_prefixes(store: BlobStore) -> None:
    ref = await store_upload(store, b"original", "image/jpeg")
    out = await store_output(store, "task1", "thumbs", "a.jpg", b"xy", source_sha256=ref.sha256)
    later = datetime.now(UTC) + timedelta(days=10)  # everything is 10 days old then
    week = timedelta(days=7)
    dry = await gc.collect(store, older_than=week, dry_run=True, now=later)
    assert (dry.deleted, dry.bytes, await store.exists(ref.uri)) == (1, len(b"original"), True)
    young = await gc.collect(store, older_than=timedelta(days=11), now=later)
    assert (young.deleted, young.kept, await store.exists(ref.uri)) == (0, 1, True)
    done = await gc.collect(store, older_than=week, now=later)
    assert (done.deleted, await store.exists(ref.uri), await store.exists(out)) == (1, False, True)
    every = await gc.collect(store, older_than=week, prefixes=gc.EVERYTHING, now=later)
    assert (every.deleted, await store.exists(out)) == (1, False)


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


async def test_read_many_reads_and_creates_if_absent_in_one_call(store: BlobStore) -> None:
    await store.put("records/a", b"A")
    keys = ["records/a", "records/b", "records/c"]
    assert await store.read_many(keys, create={"records/c": b"C"}) == [b"A", None, b"C"]
    assert await store.read("records/c") == b"C"
    again = {"records/a": b"X", "records/c": b"Y"}  # create-if-absent: what is there stays
    assert await store.read_many(["records/a", "records/c"], create=again) == [b"A", b"C"]
    key = "records/race"
    racers = [store.read_many([key], create={key: f"w{i}".encode()}) for i in range(8)]
    seen = {got[0] for got in await asyncio.gather(*racers)}
    assert len(seen) == 1 and seen == {await store.read(key)}  # one winner, read by all


async def test_a_loader_returns_what_get_returns(store: BlobStore) -> None:
    ref = await store_upload(store, b"original", "image/png")
    load = store.loader(ref)  # None: this store cannot be read from a pool process
    assert load is None or pickle.loads(pickle.dumps(load))() == await store.get(ref)


async def test_the_file_store_loader_checks_like_get(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    ref = await store_upload(store, b"original", "image/png")
    await store.put(ref.uri, b"tampered")
    with pytest.raises(BlobIntegrityError):
        store.loader(ref)()
    (tmp_path / "outside").mkdir()
    (tmp_path / "blobs" / "linked").symlink_to(tmp_path / "outside")
    linked = ref.model_copy(update={"uri": "linked/x"})
    with pytest.raises(BlobKeyError):
        store.loader(linked)()
    gone = ref.model_copy(update={"uri": "uploads/aa/bb/" + "a" * 64})
    with pytest.raises(BlobNotFound):
        store.loader(gone)()


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
    with pytest.raises(BlobKeyError):
        await store.read_many(["records/fine", key], create={key: b"x"})


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
    await store_output(store, "task1", "thumbs", "a.jpg", b"x", source_sha256="ab" * 32)
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
        output_key(segment, "thumbs", "x.jpg", source_sha256="ab" * 32)
    with pytest.raises(BlobKeyError):
        output_key("task1", "thumbs", "x.jpg", source_sha256=segment or "../" * 22)


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


async def _timed_error(coro: Awaitable[object], error: type[Exception]) -> float:
    started = time.monotonic()
    with pytest.raises(error):
        await asyncio.wait_for(coro, timeout=5)
    return time.monotonic() - started


async def test_hostile_files_in_the_store_are_typed_errors_at_once(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    ref = await store_upload(store, b"real bytes", "image/png")
    path = store.path_for_key(ref.uri)
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open() forever
    assert await _timed_error(store.get(ref), BlobKeyError) < 1
    assert await _timed_error(store.read(ref.uri), BlobKeyError) < 1
    path.unlink()
    with open(path, "wb") as fh:  # 3 GiB sparse: refused from its size, never read
        fh.truncate(3 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert await _timed_error(store.get(ref), BlobIntegrityError) < 1
    assert await _timed_error(store.read(ref.uri), BlobIntegrityError) < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"real bytes")
    path.symlink_to(store.root / "uploads")  # a link, even one inside the root
    assert await _timed_error(store.get(ref), BlobKeyError) < 1


def test_stored_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = FileBlobStore(tmp_path / "blobs")
        ref = asyncio.run(store_upload(store, b"secret photo", "image/jpeg"))
    finally:
        os.umask(old)
    path = store.path_for_key(ref.uri)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (store.root, path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    if os.geteuid() != 0:
        return  # the second-uid check below needs root to become another user
    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp is reachable by every user
    try:
        shared.chmod(0o755)
        store = FileBlobStore(shared / "blobs")
        ref = asyncio.run(store_upload(store, b"secret photo", "image/jpeg"))
        path = store.path_for_key(ref.uri)
        assert not _readable_by_nobody(store.root)  # the tree is closed...
        for directory in (path.parent, *path.parent.parents):
            if directory == shared:
                break
            directory.chmod(0o755)
        assert _readable_by_nobody(path.parent)  # ...and, opened up, the file still is
        assert not _readable_by_nobody(path)
    finally:
        shutil.rmtree(shared)


def _readable_by_nobody(path: Path) -> bool:
    argv = ["ls", str(path)] if path.is_dir() else ["cat", str(path)]
    return subprocess.run(argv, user=65534, capture_output=True, check=False).returncode == 0
