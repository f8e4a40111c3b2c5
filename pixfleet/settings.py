"""Where things live by default: data dir, broker URL, blob store URL."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PIXFLEET_HOME"
ENV_BROKER = "PIXFLEET_BROKER"
ENV_BLOBS = "PIXFLEET_BLOBS"


def data_dir() -> Path:
    """Where the embedded broker and the default blob store live, as an absolute path (not
    created here): ``$PIXFLEET_HOME``, else the user's data directory
    (``$XDG_DATA_HOME/pixfleet``, by default ``~/.local/share/pixfleet``) - never the current
    directory, so every command finds the same broker wherever it is run from."""
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(base).expanduser() / "pixfleet").resolve()


def default_broker_url() -> str:
    return os.environ.get(ENV_BROKER) or f"sqlite:///{data_dir() / 'broker.db'}"


def default_blobs_url() -> str:
    return os.environ.get(ENV_BLOBS) or (data_dir() / "blobs").as_uri()


def redact(url: str) -> str:
    """Drop the password from ``scheme://user:password@host/...`` for logs and messages.

    The one redaction helper for every URL in an error or a log line. It copes with what users
    really type: unencoded ``@``, ``/`` or ``:`` inside the password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = _userinfo_end(rest)
    if at < 0:
        return url
    userinfo, hostpart = rest[:at], rest[at + 1 :]
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{hostpart}" if colon else url


def _userinfo_end(rest: str) -> int:
    """Index of the ``@`` that ends the userinfo of ``rest`` (after ``scheme://``), or -1."""
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, authority_end)
    if at >= 0:
        return at
    first_at = rest.find("@")
    # A password with an unencoded '/' (or '?', '#'): "user:pa/ss@host/..." - unlike a port,
    # what follows the ':' is not all digits. Redacting too much is safe; too little is not.
    after_colon = rest[:authority_end].partition(":")[2]
    if first_at > 0 and after_colon and not after_colon.isdigit():
        return rest.rfind("@", 0, rest.find("/", first_at) if "/" in rest[first_at:] else None)
    return -1
