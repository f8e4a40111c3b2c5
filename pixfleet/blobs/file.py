"""Claim-check blob store: image bytes live here, tasks carry only a :class:`BlobRef`.

Keys are deterministic, so every write is idempotent:

* uploads: ``uploads/<sha[:2]>/<sha[2:4]>/<sha256>`` - the same bytes are stored once;
* outputs: ``outputs/<group>/<task[:2]>/<task id>/<name>`` - a redelivered task overwrites its
  own outputs instead of adding copies.

Every key and every URI is resolved (symlinks included) and must stay inside the store root,
otherwise :class:`~pixfleet.errors.BlobKeyError` is raised. Writes are atomic (temporary file,
fsync, rename), so a reader never sees half an image.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pixfleet.envelope import BlobRef
from pixfleet.errors import (
    BlobIntegrityError,
    BlobKeyError,
    BlobNotFound,
    BlobUnavailable,
    InvalidURL,
)

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


def open_blobstore(url: str) -> FileBlobStore:
    """Build the store for ``url``: ``file:///abs/dir`` or a plain directory path."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidURL(f"file:// blob store must be local, got host {parts.netloc!r}")
        return FileBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "" and url:
        return FileBlobStore(Path(url))
    raise InvalidURL(f"unsupported blob store URL {url!r} (use file:///path)")


class FileBlobStore:
    """A directory (local or shared storage mounted at the same path on every machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    # -- keys -----------------------------------------------------------------------------

    @staticmethod
    def upload_key(sha256: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise BlobKeyError(f"not a sha256 digest: {sha256!r}")
        return f"uploads/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    @staticmethod
    def output_key(task_id: str, group: str, name: str) -> str:
        for segment in (task_id, group, name):
            if not _SEGMENT.fullmatch(segment):
                raise BlobKeyError(f"unsafe key segment {segment!r}")
        return f"outputs/{group}/{task_id[:2]}/{task_id}/{name}"

    def path_for_key(self, key: str) -> Path:
        """The file of ``key``; raises :class:`BlobKeyError` if it would leave the root."""
        if not key or "\x00" in key or "\\" in key or key.startswith("/"):
            raise BlobKeyError(f"invalid blob key {key!r}")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise BlobKeyError(f"blob key {key!r} escapes the store root")
        return path

    def path_for_uri(self, uri: str) -> Path:
        """The file of a ``file://`` URI of this store; anything else is a :class:`BlobKeyError`."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise BlobKeyError(f"not a file:// URI of this store: {uri!r}")
        raw = Path(unquote(parts.path))
        if not raw.is_absolute():
            raise BlobKeyError(f"blob URI must be absolute: {uri!r}")
        try:
            key = raw.relative_to(self.root).as_posix()
        except ValueError as exc:
            raise BlobKeyError(f"blob URI {uri!r} is outside the store root {self.root}") from exc
        return self.path_for_key(key)

    def uri_for_key(self, key: str) -> str:
        return self.path_for_key(key).as_uri()

    # -- sync primitives (run in a thread by the async API) --------------------------------

    def _write_atomic(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise BlobUnavailable(f"cannot write {path}: {exc.strerror or exc}") from exc

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(f"blob not found: {path.as_uri()}") from exc
        except IsADirectoryError as exc:
            raise BlobKeyError(f"blob URI names a directory: {path.as_uri()}") from exc
        except OSError as exc:
            raise BlobUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc

    def put_upload_sync(self, data: bytes, content_type: str) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for_key(self.upload_key(digest))
        if not (path.is_file() and path.stat().st_size == len(data)):
            self._write_atomic(path, data)
        return BlobRef(uri=path.as_uri(), sha256=digest, size=len(data), content_type=content_type)

    def put_output_sync(self, task_id: str, group: str, name: str, data: bytes) -> str:
        path = self.path_for_key(self.output_key(task_id, group, name))
        self._write_atomic(path, data)
        return path.as_uri()

    def get_sync(self, ref: BlobRef) -> bytes:
        data = self._read(self.path_for_uri(ref.uri))
        if len(data) != ref.size:
            raise BlobIntegrityError(
                f"blob {ref.uri} has {len(data)} bytes, the task says {ref.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise BlobIntegrityError(f"blob {ref.uri} sha256 mismatch ({digest[:12]}...)")
        return data

    def read_sync(self, uri: str) -> bytes:
        return self._read(self.path_for_uri(uri))

    # -- async API ------------------------------------------------------------------------

    async def put_upload(self, data: bytes, content_type: str) -> BlobRef:
        """Store upload bytes under their content hash (idempotent)."""
        return await asyncio.to_thread(self.put_upload_sync, data, content_type)

    async def put_output(self, task_id: str, group: str, name: str, data: bytes) -> str:
        """Store (or overwrite) one output of a task; returns its URI."""
        return await asyncio.to_thread(self.put_output_sync, task_id, group, name, data)

    async def get(self, ref: BlobRef) -> bytes:
        """Fetch and verify size and sha256 (:class:`BlobIntegrityError` on mismatch)."""
        return await asyncio.to_thread(self.get_sync, ref)

    async def read(self, uri: str) -> bytes:
        return await asyncio.to_thread(self.read_sync, uri)
