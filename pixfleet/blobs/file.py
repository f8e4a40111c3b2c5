"""The ``file://`` blob store: a directory, local or on storage every machine mounts.

Keys are relative to the root, so machines may mount the store at different paths: a task names
``uploads/ab/cd/<sha256>``, never ``/mnt/blobs/uploads/...``. Every key is checked
(:func:`~pixfleet.blobs.keys.check_key`: no ``..``, nothing absolute or hidden) and then each of
its existing components is ``lstat``-ed: a key through a symbolic link (which could leave the
root) is a :class:`~pixfleet.errors.BlobKeyError`, and reads never follow a final link. Writes go
to a temporary file that is fsynced and then renamed (or hard-linked, for create-if-absent), so
a reader never sees half a blob and a failed write leaves no ``.tmp`` file behind.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

from pixfleet.blobs import threads
from pixfleet.blobs.fileread import read_regular, read_verified
from pixfleet.blobs.keys import check_key, upload_key
from pixfleet.blobs.protocol import BlobInfo, StoredBlob
from pixfleet.envelope import BlobRef
from pixfleet.errors import (
    BlobKeyError,
    BlobNotFound,
    BlobUnavailable,
    InvalidURL,
)
from pixfleet.private import FILE_MODE, make_private_dirs
from pixfleet.settings import redact
from pixfleet.storage import blob_storage_error

T = TypeVar("T")
_STAGING = ".staging"  # inside the root, so a rename never crosses file systems


class FileBlobStore:
    """A directory as a blob store (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._prefix = f"{self.root}{os.sep}"  # resolved once: keys are checked below it

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        """``file:///abs/dir`` (or a plain directory path)."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InvalidURL(f"file:// blob store must be local, got host {parts.netloc!r}")
            return cls(Path(unquote(parts.path)))
        if parts.scheme == "" and url:
            return cls(Path(url))
        raise InvalidURL(f"not a file:// blob store URL: {redact(url)!r}")

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def path_for_key(self, key: str) -> Path:
        """The file of ``key``; raises :class:`BlobKeyError` if it would leave the root.

        :func:`check_key` confines the key lexically (relative, no ``..``, no empty or hidden
        segment), so only a symbolic link could lead out: each existing component below the root
        (resolved once) is ``lstat``-ed and a link is refused, even one that stays inside - one
        system call per segment, where ``Path.resolve`` also walked the root's own components."""
        path = self._prefix + check_key(key)
        end = len(self._prefix) - 1
        while end < len(path):
            end = path.find(os.sep, end + 1) % (len(path) + 1)  # -1 (last segment) -> len
            try:
                mode = os.lstat(path[:end]).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break  # nothing exists below a missing component (the operation will say so)
            except OSError as exc:
                raise BlobUnavailable(f"cannot check blob key {key!r}: {exc.strerror}") from exc
            if stat.S_ISLNK(mode):
                raise BlobKeyError(f"blob key {key!r} passes through a symbolic link")
        return Path(path)

    def url_for(self, key: str) -> str:
        return self.path_for_key(key).as_uri()

    # -- the protocol ---------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> StoredBlob:
        await _io(self._at, key, self._write, [data], os.replace)
        return StoredBlob(key, hashlib.sha256(data).hexdigest(), len(data))

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        tmp = self._staging_path()
        digest, size = hashlib.sha256(), 0
        try:
            fh = await _io(_open_new, tmp)
            try:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await _io(fh.write, chunk)
                await _io(_fsync_file, fh)
            finally:
                fh.close()
            key = upload_key(digest.hexdigest())
            await _io(_publish_file, tmp, self.path_for_key(key), os.replace)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredBlob(key, digest.hexdigest(), size)

    async def read(self, key: str) -> bytes:
        return await _io(self._at, key, read_regular, key, None)

    async def get(self, ref: BlobRef) -> bytes:
        return await _io(self._at, ref.uri, read_verified, ref)

    def loader(self, ref: BlobRef) -> Callable[[], bytes]:
        return functools.partial(load_verified, str(self.root), ref)

    async def exists(self, key: str) -> bool:
        return await _io(self._at, key, Path.is_file)

    async def create(self, key: str, data: bytes) -> bool:
        try:
            await _io(self._at, key, self._write, [data], os.link)
        except FileExistsError:
            return False
        return True

    async def read_many(
        self, keys: Sequence[str], create: Mapping[str, bytes] | None = None
    ) -> list[bytes | None]:
        """Every key in one thread hop (the key checks, reads and creates alike)."""
        return await _io(self._read_many, keys, create or {})

    async def delete(self, key: str) -> None:
        await _io(self._at, key, Path.unlink, True)

    async def scan(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Regular files under ``prefix``, one directory read at a time; symlinks and hidden
        entries (``.staging``) are skipped, never followed."""
        pending = [self.path_for_key(prefix) if prefix else self.root]
        while pending:
            directory = pending.pop()
            for path, entry in await _io(_entries, directory):
                if entry is None:
                    pending.append(path)
                else:
                    yield BlobInfo(path.relative_to(self.root).as_posix(), *entry)

    # -- file primitives (run in a thread) --------------------------------------------------

    def _at(self, key: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(path_for_key(key), *args)``: the key's check (its ``lstat`` calls) runs in the
        same thread hop as the operation, off the event loop."""
        return fn(self.path_for_key(key), *args)

    def _read_many(self, keys: Sequence[str], create: Mapping[str, bytes]) -> list[bytes | None]:
        return [self._read_or_create(key, create.get(key)) for key in keys]

    def _read_or_create(self, key: str, data: bytes | None) -> bytes | None:
        """The bytes of ``key``; if there are none, create it with ``data`` (``os.link``: one
        racing writer wins) and read what won - or None, without ``data``."""
        path = self.path_for_key(key)
        try:
            return read_regular(path, key, None)
        except BlobNotFound:
            if data is None:
                return None
        try:
            self._write(path, [data], os.link)
        except FileExistsError:
            return read_regular(path, key, None)
        return data

    def _staging_path(self) -> Path:
        return self.root / _STAGING / f"{uuid.uuid4().hex}.tmp"

    def _write(self, path: Path, parts: list[bytes], place: Callable[[Path, Path], None]) -> None:
        tmp = self._staging_path()
        try:
            with _open_new(tmp) as fh:
                for part in parts:
                    fh.write(part)
                _fsync_file(fh)
            _publish_file(tmp, path, place)
        finally:
            tmp.unlink(missing_ok=True)


def _open_new(path: Path) -> BinaryIO:
    """A new file readable by its owner only (0600, whatever the umask)."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "wb")


def _entries(directory: Path) -> list[tuple[Path, tuple[int, datetime] | None]]:
    """The visible regular files (with size and mtime) and subdirectories (None) of
    ``directory``; nothing if it does not exist."""
    try:
        with os.scandir(directory) as it:
            found = [e for e in it if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    out: list[tuple[Path, tuple[int, datetime] | None]] = []
    for e in found:
        if e.is_dir(follow_symlinks=False):
            out.append((Path(e.path), None))
        elif e.is_file(follow_symlinks=False):
            st = e.stat(follow_symlinks=False)
            out.append((Path(e.path), (st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))))
    return out


def _fsync_file(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _publish_file(tmp: Path, path: Path, place: Callable[[Path, Path], None]) -> None:
    """Move (``os.replace``) or link (``os.link``: fails if ``path`` exists) ``tmp`` into place,
    then fsync the directory so the name survives a crash."""
    make_private_dirs(path.parent)
    place(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_verified(root: str, ref: BlobRef) -> bytes:
    """:meth:`FileBlobStore.get` without an event loop (in a pool process): the same key check
    and verified read, in the calling thread."""
    store = _stores.get(root) or _stores.setdefault(root, FileBlobStore(Path(root)))
    try:
        return store._at(ref.uri, read_verified, ref)
    except OSError as exc:
        raise unavailable(exc) from exc


_stores: dict[str, FileBlobStore] = {}  # root -> store, for load_verified (its root resolved)


async def _io(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking file operation in a thread; OS errors become :class:`BlobUnavailable`
    (``FileExistsError`` passes through: create-if-absent handles it)."""
    try:
        return await threads.run(fn, *args)
    except FileExistsError:
        raise
    except OSError as exc:
        raise unavailable(exc) from exc


def unavailable(exc: OSError) -> BlobUnavailable:
    """An OS error of the store as the :class:`BlobUnavailable` (or storage error) it means."""
    return blob_storage_error(exc) or BlobUnavailable(
        f"blob store I/O failed: {exc.strerror or exc}"
    )
