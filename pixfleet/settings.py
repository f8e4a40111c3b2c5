"""Where things live by default: data dir, broker URL, blob store URL."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PIXFLEET_HOME"
ENV_BROKER = "PIXFLEET_BROKER"
ENV_BLOBS = "PIXFLEET_BLOBS"


def data_dir() -> Path:
    """``$PIXFLEET_HOME`` or ``./.pixfleet``, as an absolute path (not created here)."""
    return Path(os.environ.get(ENV_HOME) or ".pixfleet").resolve()


def default_broker_url() -> str:
    return os.environ.get(ENV_BROKER) or f"sqlite:///{data_dir() / 'broker.db'}"


def default_blobs_url() -> str:
    return os.environ.get(ENV_BLOBS) or (data_dir() / "blobs").as_uri()


def redact(url: str) -> str:
    """Drop the password from ``scheme://user:password@host`` for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}" if ":" in userinfo else url
