"""``uploader gc`` (issue 15.7): originals older than an age are deleted, by age on disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pixfleet.blobs import open_blobstore, store_output, store_upload
from pixfleet.errors import ConfigError
from producer.gc import parse_age
from tests.helpers.cli import run_cli

DAY = 86400


def _age(home: Path, key: str, days: float) -> None:
    path = home / "blobs" / key
    then = time.time() - days * DAY
    os.utime(path, (then, then))


async def test_uploader_gc_deletes_originals_older_than_the_age(tmp_path: Path) -> None:
    store = open_blobstore((tmp_path / "blobs").as_uri())
    old = await store_upload(store, b"old original", "image/jpeg")
    new = await store_upload(store, b"new original", "image/jpeg")
    output = await store_output(store, "t1", "thumbs", "a.jpg", b"thumb", source_sha256=old.sha256)
    _age(tmp_path, old.uri, 8)
    _age(tmp_path, output, 8)

    dry = run_cli("producer", "gc", "--older-than", "7d", "--dry-run", "--json", home=tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [line["key"] for line in lines[:-1]] == [old.uri]
    assert lines[-1]["summary"] == {"deleted": 1, "bytes": 12, "kept": 1, "dry_run": True}
    assert await store.exists(old.uri)

    done = run_cli("producer", "gc", "--older-than", "7d", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 blob(s), 12 bytes" in done.stdout
    assert not await store.exists(old.uri)
    assert await store.exists(new.uri) and await store.exists(output)

    every = run_cli("producer", "gc", "--older-than", "7d", "--all", home=tmp_path)
    assert every.returncode == 0, every.stderr
    assert not await store.exists(output) and await store.exists(new.uri)


def test_ages() -> None:
    assert parse_age("7d").total_seconds() == 7 * DAY
    assert parse_age("12h").total_seconds() == 12 * 3600
    assert parse_age("2w").total_seconds() == 14 * DAY
    for bad in ("7", "d", "-1d", "7y", "1e9d"):
        with pytest.raises(ConfigError):
            parse_age(bad)
