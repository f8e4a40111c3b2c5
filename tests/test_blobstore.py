"""The claim-check store: deterministic keys, integrity, and confinement to its root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pixfleet.blobs import FileBlobStore, open_blobstore
from pixfleet.envelope import BlobRef
from pixfleet.errors import BlobIntegrityError, BlobKeyError, BlobNotFound, InvalidURL


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def test_uploads_are_content_addressed_and_stored_once(store: FileBlobStore) -> None:
    first = store.put_upload_sync(b"image bytes", "image/jpeg")
    second = store.put_upload_sync(b"image bytes", "image/jpeg")
    assert first == second
    assert first.sha256 == hashlib.sha256(b"image bytes").hexdigest()
    assert store.get_sync(first) == b"image bytes"
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 1


def test_outputs_have_deterministic_keys_and_overwrite(store: FileBlobStore) -> None:
    uri1 = store.put_output_sync("task1", "thumbs", "256.jpg", b"one")
    uri2 = store.put_output_sync("task1", "thumbs", "256.jpg", b"two")
    assert uri1 == uri2
    assert store.read_sync(uri1) == b"two"
    assert not [p for p in store.root.rglob("*.tmp")], "no temporary files left behind"


def test_integrity_is_checked_on_get(store: FileBlobStore) -> None:
    ref = store.put_upload_sync(b"original", "image/png")
    store.path_for_uri(ref.uri).write_bytes(b"tampered")
    with pytest.raises(BlobIntegrityError):
        store.get_sync(ref)
    store.path_for_uri(ref.uri).write_bytes(b"Original")  # same size, other bytes
    with pytest.raises(BlobIntegrityError):
        store.get_sync(ref)


def test_missing_blob_is_not_found(store: FileBlobStore) -> None:
    ref = BlobRef(
        uri=store.uri_for_key("uploads/aa/bb/" + "a" * 64),
        sha256="a" * 64,
        size=1,
        content_type="image/png",
    )
    with pytest.raises(BlobNotFound):
        store.get_sync(ref)


@pytest.mark.parametrize(
    "key", ["../outside", "uploads/../../outside", "/etc/passwd", "a\\b", "", "uploads/\x00"]
)
def test_keys_cannot_leave_the_root(store: FileBlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError):
        store.path_for_key(key)


@pytest.mark.parametrize(
    "uri",
    ["file:///etc/passwd", "http://example.invalid/x", "file://otherhost/x", "relative/path"],
)
def test_uris_outside_the_store_are_refused(store: FileBlobStore, uri: str) -> None:
    with pytest.raises(BlobKeyError):
        store.read_sync(uri)


def test_uri_with_dot_dot_inside_the_root_prefix_is_refused(store: FileBlobStore) -> None:
    with pytest.raises(BlobKeyError):
        store.read_sync(store.root.as_uri() + "/../../etc/passwd")


def test_symlink_escaping_the_root_is_refused(store: FileBlobStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (store.root / "uploads").mkdir(parents=True)
    os.symlink(secret, store.root / "uploads" / "link")
    with pytest.raises(BlobKeyError):
        store.read_sync(store.root.as_uri() + "/uploads/link")


@pytest.mark.parametrize("segment", ["..", ".hidden", "a/b", ""])
def test_output_key_segments_are_validated(store: FileBlobStore, segment: str) -> None:
    with pytest.raises(BlobKeyError):
        store.output_key(segment, "thumbs", "x.jpg")


def test_store_urls(tmp_path: Path) -> None:
    assert open_blobstore((tmp_path / "b").as_uri()).root == (tmp_path / "b").resolve()
    assert open_blobstore(str(tmp_path / "c")).root == (tmp_path / "c").resolve()
    with pytest.raises(InvalidURL):
        open_blobstore("s3://bucket/prefix")
