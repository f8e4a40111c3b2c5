"""The one redaction helper: no password survives into an error or a log line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixfleet.settings import data_dir, default_broker_url, redact


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


def test_the_data_dir_never_depends_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIXFLEET_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert data_dir() == (tmp_path / "xdg" / "pixfleet").resolve()
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == (tmp_path / "home" / ".local" / "share" / "pixfleet").resolve()
    monkeypatch.setenv("PIXFLEET_HOME", "~/fleet")
    assert data_dir() == (tmp_path / "home" / "fleet").resolve()
    assert default_broker_url() == f"sqlite:///{tmp_path / 'home' / 'fleet' / 'broker.db'}"
