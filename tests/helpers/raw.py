"""Put raw bytes on a broker, bypassing envelope encoding (what a foreign producer might send)."""

from __future__ import annotations

from urllib.parse import urlsplit

from brokers import names
from brokers.sqlite import SqliteSettings
from brokers.sqlite_db import SqliteQueue


def inject_raw(url: str, group: str, body: bytes) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        s = SqliteSettings.from_url(url)
        queue = SqliteQueue(s.path, busy_timeout=s.busy_timeout, synchronous=s.synchronous)
        try:
            queue.publish(names.SQLITE_TASKS, "raw", body, (group,))
        finally:
            queue.close()
        return
    raise AssertionError(f"no raw injector for {scheme}")
