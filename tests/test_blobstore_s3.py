"""The ``s3://`` store against a real S3 API server (moto on loopback, or $PIXFLEET_TEST_S3_URL).

The protocol suite of :mod:`tests.test_blobstore` runs here unchanged: its test functions are
re-exported below and pick up this module's ``store`` fixture. Then what only S3 has: the prefix,
presigned URLs, multipart streaming, conditional puts from separate clients, URL options,
unreachable endpoints, throttling and refused credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

import obstore
import pytest
from obstore.store import S3Store

from pixfleet.blobs import open_blobstore, store_output, store_upload
from pixfleet.blobs.s3 import S3BlobStore
from pixfleet.blobs.s3_settings import S3Settings
from pixfleet.errors import BlobKeyError, BlobUnavailable, ConfigError, InvalidURL
from tests import test_blobstore as suite
from tests.conftest import missing_broker
from tests.harness import s3 as harness

T = TypeVar("T")
#: Dummy credentials for moto, distinct so a leak would be visible.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "pixfleet-test-key", "AWS_SECRET_ACCESS_KEY": "not-a-secret-42"}

# -- the protocol suite, against S3 ------------------------------------------------------------

test_uploads_are_content_addressed_and_stored_once = (
    suite.test_uploads_are_content_addressed_and_stored_once
)
test_streamed_put_hashes_while_writing = suite.test_streamed_put_hashes_while_writing
test_outputs_have_deterministic_keys_and_overwrite = (
    suite.test_outputs_have_deterministic_keys_and_overwrite
)
test_create_if_absent_has_exactly_one_winner = suite.test_create_if_absent_has_exactly_one_winner
test_gc_deletes_only_old_blobs_under_its_prefixes = (
    suite.test_gc_deletes_only_old_blobs_under_its_prefixes
)
test_scan_lists_keys_sizes_and_ages_under_a_prefix = (
    suite.test_scan_lists_keys_sizes_and_ages_under_a_prefix
)
test_read_many_reads_and_creates_if_absent_in_one_call = (
    suite.test_read_many_reads_and_creates_if_absent_in_one_call
)
test_a_loader_returns_what_get_returns = suite.test_a_loader_returns_what_get_returns
test_integrity_is_checked_on_get = suite.test_integrity_is_checked_on_get
test_missing_blob_is_not_found = suite.test_missing_blob_is_not_found
test_keys_cannot_leave_the_store = suite.test_keys_cannot_leave_the_store


def test_every_protocol_case_runs_against_s3() -> None:
    # A case added to the suite (any test taking ``store``) must be re-exported above.
    cases = {
        name
        for name, fn in vars(suite).items()
        if name.startswith("test_") and "store" in inspect.signature(fn).parameters
    }
    missing = sorted(name for name in cases if globals().get(name) is not getattr(suite, name))
    assert not missing, f"re-export these protocol cases here: {missing}"


# -- fixtures -------------------------------------------------------------------------------------


def _start(stack: contextlib.ExitStack, server: AbstractContextManager[T]) -> T:
    """Enter ``server``; one that cannot start fails the run in CI and skips it elsewhere."""
    try:
        return stack.enter_context(server)
    except (RuntimeError, OSError) as exc:
        missing_broker(f"an S3 API server ({exc})")
        raise  # not reached: missing_broker fails or skips


@pytest.fixture(scope="session")
def s3_server() -> Iterator[harness.S3Server]:
    with contextlib.ExitStack() as stack:
        server = _start(stack, harness.s3_server())
        if server is None:
            missing_broker("an S3 API server (set PIXFLEET_TEST_S3_URL or install moto[server])")
        assert server is not None
        yield server


@pytest.fixture
def s3_url(s3_server: harness.S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private prefix per test in the session's bucket."""
    if s3_server.endpoint:  # moto started here: dummy credentials
        for name, value in MOTO_ENV.items():
            monkeypatch.setenv(name, value)
    return s3_server.url(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(s3_url: str) -> S3BlobStore:
    opened = open_blobstore(s3_url)
    assert isinstance(opened, S3BlobStore)
    return opened


def _whole_bucket(settings: S3Settings) -> list[str]:
    """Every object path in the bucket, listed by a client without the store's prefix."""
    assert settings.credentials is not None
    client = S3Store(
        settings.bucket,
        endpoint=settings.endpoint,
        region=settings.region,
        access_key_id=settings.credentials.access_key_id,
        secret_access_key=settings.credentials.secret_access_key,
        virtual_hosted_style_request=not settings.path_style,
        client_options={"allow_http": settings.allow_http},
    )
    return [meta["path"] for batch in obstore.list(client) for meta in batch]


async def _chunks(count: int, size: int, seed: bytes = b"") -> AsyncIterator[bytes]:
    for i in range(count):
        yield hashlib.sha256(seed + i.to_bytes(4, "big")).digest() * (size // 32)
        await asyncio.sleep(0)


# -- what only S3 has -----------------------------------------------------------------------------


async def test_keys_stay_under_the_prefix(store: S3BlobStore) -> None:
    ref = await store_upload(store, b"small", "image/png")
    big = await store.put_stream(_chunks(7, 1 << 20))  # multipart via staging
    out = await store_output(store, "task1", "thumbs", "a.jpg", b"x", source_sha256="ab" * 32)
    await store.create("done/thumbs/task1", b"1")
    prefix = store.settings.prefix
    token = prefix.rsplit("/", 1)[-1]
    ours = [path for path in _whole_bucket(store.settings) if token in path]
    assert all(path.startswith(f"{prefix}/") for path in ours), ours
    keys = {path.removeprefix(f"{prefix}/") for path in ours}
    assert keys == {ref.uri, big.key, out, "done/thumbs/task1"}  # no staging object left


async def test_presigned_url_serves_the_bytes_over_plain_http(store: S3BlobStore) -> None:
    await store.put("outputs/thumbs/ta/task1/256.jpg", b"\xff\xd8 thumbnail")
    url = store.url_for("outputs/thumbs/ta/task1/256.jpg")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
    assert MOTO_ENV["AWS_SECRET_ACCESS_KEY"] not in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\xff\xd8 thumbnail"
    with pytest.raises(BlobKeyError):
        store.url_for("../outside")


async def test_large_streamed_upload_round_trips(store: S3BlobStore) -> None:
    digest = hashlib.sha256()
    async for chunk in _chunks(20, 1 << 20, b"big"):
        digest.update(chunk)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        stored = await store.put_stream(_chunks(20, 1 << 20, b"big"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"20 MiB streamed put: {elapsed:.2f} s, Python peak {peak / 2**20:.1f} MiB")
    assert (stored.sha256, stored.size) == (digest.hexdigest(), 20 << 20)
    assert peak < 16 << 20  # a few 5 MiB parts (1 + PART_CONCURRENCY), never the whole blob
    data = await store.read(stored.key)
    assert hashlib.sha256(data).hexdigest() == stored.sha256
    again = await store.put_stream(_chunks(20, 1 << 20, b"big"))  # already there: no copy
    assert again == stored


async def test_create_if_absent_across_separate_clients(s3_url: str) -> None:
    # Eight "machines", each with its own client and connection pool.
    stores = [open_blobstore(s3_url) for _ in range(8)]
    key = "done/resize/task9"
    wins = await asyncio.gather(*(s.create(key, f"m{i}".encode()) for i, s in enumerate(stores)))
    assert sum(wins) == 1
    assert await stores[0].read(key) == f"m{wins.index(True)}".encode()


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/prefix?colour=blue",
        "s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=x&endpoint=http://127.0.0.1:8",
        "s3://AKIA:hunter2secret@bucket/prefix",
        "s3://bucket/prefix?secret_access_key=hunter2secret",
        "s3://b/prefix",
        "s3://bucket/../up",
        "s3://bucket/.staging",
        "s3://bucket/p?endpoint=ftp://127.0.0.1:9000",
        "s3://bucket/p?endpoint=http://127.0.0.1:9000/path",
        "s3://bucket/p?timeout=soon",
        "s3://bucket/p?path_style=perhaps",
        "s3://bucket/p?url_expiry=9999999",
    ],
)
def test_bad_urls_are_refused_without_echoing_secrets(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        open_blobstore(url)
    assert "hunter2secret" not in str(caught.value)


def test_url_is_safe_to_log_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    store = open_blobstore("s3://bucket/some/prefix")
    assert isinstance(store, S3BlobStore)
    assert store.url == (
        "s3://bucket/some/prefix?region=eu-west-1&endpoint=http://127.0.0.1:9000&path_style=true"
    )
    assert MOTO_ENV["AWS_SECRET_ACCESS_KEY"] not in f"{store.url} {store.settings!r}"
    assert open_blobstore(store.url).url == store.url
    settings = S3Settings.from_url("s3://bucket", env={"AWS_DEFAULT_REGION": "ap-south-1"})
    assert (settings.region, settings.endpoint, settings.path_style) == ("ap-south-1", None, False)
    assert not settings.allow_http and settings.credentials is None


async def test_unreachable_endpoint_is_unavailable_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    closed = harness.free_port()  # nothing listens there
    store = open_blobstore(f"s3://bucket/p?endpoint=http://127.0.0.1:{closed}&connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(BlobUnavailable) as caught:
        await store.read("uploads/x")
    assert caught.value.retryable
    assert time.monotonic() - started < 5
    with pytest.raises(BlobUnavailable):
        await store.put("uploads/x", b"x")


async def test_throttling_is_retried_with_backoff(s3_server: harness.S3Server, s3_url: str) -> None:
    if not s3_server.endpoint:
        pytest.skip("needs the moto server started here (plain HTTP upstream)")
    prefix = S3Settings.from_url(s3_url).prefix
    await open_blobstore(s3_url).put("uploads/x", b"bytes")
    with harness.throttling_proxy(s3_server.endpoint, failures=2) as (endpoint, throttle):
        store = open_blobstore(f"s3://{harness.BUCKET}/{prefix}?endpoint={endpoint}&retries=3")
        assert await store.read("uploads/x") == b"bytes"  # 503, 503, then the object
        assert throttle.seen == 3
    with harness.throttling_proxy(s3_server.endpoint, failures=100) as (endpoint, throttle):
        store = open_blobstore(f"s3://{harness.BUCKET}/{prefix}?endpoint={endpoint}&retries=2")
        with pytest.raises(BlobUnavailable, match="503"):
            await store.read("uploads/x")
        assert throttle.seen == 3  # the first try and two retries


async def test_missing_bucket_is_a_configuration_error(
    s3_server: harness.S3Server, s3_url: str
) -> None:
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    store = open_blobstore(
        s3_url.replace(f"s3://{S3Settings.from_url(s3_url).bucket}/", f"s3://{bucket}/")
    )
    # moto says NoSuchBucket; elsewhere the name may be someone else's bucket (403).
    message = "does not exist" if s3_server.endpoint else ""
    with pytest.raises(ConfigError, match=message):
        await store.read("uploads/x")
    with pytest.raises(ConfigError, match=message):
        await store.put("uploads/x", b"x")
    with pytest.raises(ConfigError, match=message):
        await store.delete("uploads/x")
    assert not await store.exists("uploads/x")  # a HEAD cannot tell (documented)


async def test_refused_credentials_are_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not harness.moto_available():
        missing_broker("moto[server]")
    # A second moto that authenticates every request after the first (the bucket creation).
    with contextlib.ExitStack() as stack:
        endpoint = _start(stack, harness.moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "1"}))
        harness.create_bucket(endpoint, "locked")
        for name, value in MOTO_ENV.items():
            monkeypatch.setenv(name, value)
        store = open_blobstore(f"s3://locked/p?endpoint={endpoint}")
        with pytest.raises(ConfigError, match="check credentials") as caught:
            await store.put("uploads/x", b"x")
        assert MOTO_ENV["AWS_SECRET_ACCESS_KEY"] not in caught.value.one_line()
