"""The one redaction helper: no password survives into an error or a log line."""

from __future__ import annotations

import pytest

from pixfleet.settings import redact


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("amqp://guest:guest@h:5672/v", "amqp://guest:***@h:5672/v"),
        ("amqp://u:p@ss@host/v", "amqp://u:***@host/v"),  # unencoded '@' in the password
        ("amqp://u:pa/ss@host/v?x=a@b", "amqp://u:***@host/v?x=a@b"),  # unencoded '/'
        ("amqps://u:p:w@h/", "amqps://u:***@h/"),
        ("amqp://host:5672/v?email=a@b", "amqp://host:5672/v?email=a@b"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("kafka://h:9092,h2:9092?namespace=x", "kafka://h:9092,h2:9092?namespace=x"),
        ("not a url", "not a url"),
    ],
)
def test_passwords_never_survive(url: str, safe: str) -> None:
    assert redact(url) == safe
    for secret in ("p@ss", "pa/ss", "p:w", "guest:guest"):
        if secret in url:
            assert secret not in redact(url)
