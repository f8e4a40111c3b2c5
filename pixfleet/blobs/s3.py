"""The ``s3://bucket/prefix`` blob store: any S3 API (AWS, MinIO, moto in tests), via obstore.

URL, options and credentials: :mod:`pixfleet.blobs.s3_settings`. obstore (the Rust
``object_store`` crate, async) is imported here and nowhere else; this module is loaded only for
``s3://`` URLs (:data:`pixfleet.blobs.STORES`).

* Keys: every key is checked (:func:`~pixfleet.blobs.keys.check_key`) and the client is bound to
  the prefix, so each object lives under ``<prefix>/<key>`` by construction.
* ``put_stream``: the sha256, hence the key, is known only at the end. A stream that ends within
  one part (:data:`PART_SIZE`) is hashed in memory and PUT straight to its content key; a longer
  one goes as a multipart upload (memory: a few parts) to ``<prefix>/.staging/<uuid>``, is copied
  server-side to its content key (even when it exists: the copy refreshes the age that ``uploader
  gc`` and lifecycle rules go by) and the staging object is deleted. ``.staging`` can never be a
  key (keys have no hidden segments).
* ``create``: a conditional PUT (``If-None-Match: *``); HTTP 412 means another writer won.
* ``url_for``: a presigned GET URL, valid ``url_expiry`` seconds (default one hour).
* Errors: 404 -> :class:`BlobNotFound`; a missing bucket or refused credentials ->
  :class:`ConfigError`; network, 5xx and throttling -> :class:`BlobUnavailable` once the client's
  retries (exponential backoff, ``retries`` option) are spent. Timeouts bound every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from pixfleet.blobs.hashing import HashingSource
from pixfleet.blobs.keys import check_key, upload_key, verify
from pixfleet.blobs.protocol import BlobInfo, StoredBlob, read_each
from pixfleet.blobs.s3_settings import S3Settings
from pixfleet.envelope import BlobRef
from pixfleet.errors import (
    BlobIntegrityError,
    BlobKeyError,
    BlobNotFound,
    BlobUnavailable,
    ConfigError,
    InvalidURL,
)
from pixfleet.settings import is_loopback

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger(__name__)

#: Multipart part size (S3's minimum) and the largest stream stored with a single PUT.
PART_SIZE = 5 * 1024 * 1024
#: Parts uploaded at once: a streamed put holds about ``1 + PART_CONCURRENCY`` parts in memory.
PART_CONCURRENCY = 2
#: Where streamed uploads wait for their content key (a hidden segment: never a valid key).
STAGING = ".staging"


class S3BlobStore:
    """A bucket (and prefix) as a blob store (see the module docstring)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        host = urlsplit(settings.endpoint or "").hostname
        if settings.allow_http and not is_loopback(host):
            log.warning(
                "blob store %s uses plain http:// to %s: images, presigned URLs and any session "
                "token travel unencrypted; use https://",
                settings.url,
                host,
            )
        try:
            self._client = _client(settings)
        except BaseError as exc:
            raise InvalidURL(f"cannot configure {settings.url}: {_summary(exc)}") from exc

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """``s3://bucket/prefix?options``; :class:`~pixfleet.errors.InvalidURL` if malformed."""
        return cls(S3Settings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.url

    def url_for(self, key: str) -> str:
        """A presigned GET URL for ``key`` (signed locally, no request is made)."""
        expiry = timedelta(seconds=self.settings.limits.url_expiry)
        with self._translated("sign", check_key(key)):
            return obstore.sign(self._client, "GET", key, expiry)

    # -- the protocol ---------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> StoredBlob:
        with self._translated("write", check_key(key)):
            await obstore.put_async(
                self._client, key, data, chunk_size=PART_SIZE, max_concurrency=PART_CONCURRENCY
            )
        return StoredBlob(key, hashlib.sha256(data).hexdigest(), len(data))

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> StoredBlob:
        source = HashingSource(chunks)
        head = await source.read_at_least(PART_SIZE)
        if source.finished:
            return await self.put(upload_key(source.sha256()), b"".join(head))
        staging = f"{STAGING}/{uuid.uuid4().hex}"
        try:
            with self._translated("stream to", staging):
                await obstore.put_async(
                    self._client,
                    staging,
                    source.rest(head),
                    use_multipart=True,
                    chunk_size=PART_SIZE,
                    max_concurrency=PART_CONCURRENCY,
                )
            stored = StoredBlob(upload_key(source.sha256()), source.sha256(), source.size)
            with self._translated("copy to", stored.key):  # always: it refreshes the age gc uses
                await obstore.copy_async(self._client, staging, stored.key)
        finally:
            await self._discard(staging)
        return stored

    async def read(self, key: str) -> bytes:
        return await self._fetch(key, None)

    async def get(self, ref: BlobRef) -> bytes:
        data = await self._fetch(ref.uri, ref.size)
        return verify(ref.uri, data, sha256=ref.sha256, size=ref.size)

    def loader(self, ref: BlobRef) -> Callable[[], bytes] | None:
        return None  # the worker fetches (async, no thread hop); a pool process has no client

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (a HEAD request; it cannot tell a missing bucket apart)."""
        return await self._size(key) is not None

    async def create(self, key: str, data: bytes) -> bool:
        with self._translated("create", check_key(key)):
            try:
                await obstore.put_async(self._client, key, data, mode="create")
            except (AlreadyExistsError, PreconditionError):
                return False
        return True

    async def read_many(
        self, keys: Sequence[str], create: Mapping[str, bytes] | None = None
    ) -> list[bytes | None]:
        """One request per key (two for a created one), all at once (obstore is async)."""
        return await read_each(self, keys, create)

    async def delete(self, key: str) -> None:
        with self._translated("delete", check_key(key)):
            try:
                await obstore.delete_async(self._client, key)
            except (NotFoundError, FileNotFoundError) as exc:
                if _no_bucket(exc):
                    raise

    async def scan(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """A paged LIST (1000 keys a request) under ``prefix``; ``.staging`` is left out."""
        with self._translated("list", check_key(prefix) if prefix else "everything"):
            async for page in obstore.list(self._client, prefix=prefix or None, chunk_size=1000):
                for meta in page:
                    if not meta["path"].startswith(f"{STAGING}/"):
                        yield BlobInfo(meta["path"], meta["size"], meta["last_modified"])

    # -- helpers ----------------------------------------------------------------------------

    async def _fetch(self, key: str, expected_size: int | None) -> bytes:
        with self._translated("read", check_key(key)):
            result = await obstore.get_async(self._client, key)
            size = result.meta["size"]
            if expected_size is not None and size != expected_size:
                # Refuse before downloading: the body is never read.
                raise BlobIntegrityError(
                    f"blob {key} has {size} bytes, the task says {expected_size}"
                )
            return bytes(await result.bytes_async())

    async def _size(self, key: str) -> int | None:
        """The size of ``key``, or None if there is no such object."""
        with self._translated("look up", check_key(key)):
            try:
                return (await obstore.head_async(self._client, key))["size"]
            except (NotFoundError, FileNotFoundError):
                return None

    async def _discard(self, staging: str) -> None:
        """Delete a staging object; a failure is logged, never raised over the real outcome."""
        try:
            await obstore.delete_async(self._client, staging)
        except (BaseError, OSError) as exc:
            log.warning("could not delete staging object %s: %s", staging, _summary(exc))

    @contextlib.contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        """obstore's exceptions -> pixfleet's (``raise ... from exc``)."""
        where = f"{action} {key} in {self.url}"
        try:
            yield
        except (NotFoundError, FileNotFoundError) as exc:
            if _no_bucket(exc):
                raise ConfigError(f"S3 bucket does not exist: {self.url}") from exc
            raise BlobNotFound(f"blob not found: {key}") from exc
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise ConfigError(
                f"S3 refused to {where} (check credentials): {_summary(exc)}"
            ) from exc
        except InvalidPathError as exc:
            raise BlobKeyError(f"S3 refused the key {key!r}: {_summary(exc)}") from exc
        except BaseError as exc:
            raise BlobUnavailable(f"cannot {where}: {_summary(exc)}") from exc


def _client(settings: S3Settings) -> S3Store:
    config: S3Config = {
        "region": settings.region,
        "virtual_hosted_style_request": not settings.path_style,
    }
    if settings.endpoint:
        config["endpoint"] = settings.endpoint
    if settings.credentials:
        config["access_key_id"] = settings.credentials.access_key_id
        config["secret_access_key"] = settings.credentials.secret_access_key
        if settings.credentials.session_token:
            config["session_token"] = settings.credentials.session_token
    limits = settings.limits
    client: ClientConfig = {
        "allow_http": settings.allow_http,
        "connect_timeout": timedelta(seconds=limits.connect_timeout),
        "timeout": timedelta(seconds=limits.timeout),
    }
    retry: RetryConfig = {
        "max_retries": limits.retries,
        "retry_timeout": timedelta(seconds=limits.timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
    }
    prefix = settings.prefix or None
    return S3Store(
        settings.bucket, prefix=prefix, config=config, client_options=client, retry_config=retry
    )


def _no_bucket(exc: BaseException) -> bool:
    return "NoSuchBucket" in str(exc)


def _summary(exc: BaseException) -> str:
    """The first line of a client error, short (the rest is a debug dump)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 240 else f"{text[:240]}..."
