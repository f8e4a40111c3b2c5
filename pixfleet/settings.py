"""Where things live by default: data dir, broker URL, blob store URL; and :func:`redact`.

The values come from :func:`pixfleet.config.load` (flags > ``PIXFLEET_*`` > ``pixfleet.toml``
> defaults); these helpers answer without flags.
"""

from __future__ import annotations

import ipaddress
import re

from pixfleet.config import ENV_HOME, data_dir, load

__all__ = [
    "ENV_BLOBS",
    "ENV_BROKER",
    "ENV_HOME",
    "data_dir",
    "default_blobs_url",
    "default_broker_url",
    "redact",
]

ENV_BROKER = "PIXFLEET_BROKER"
ENV_BLOBS = "PIXFLEET_BLOBS"


def default_broker_url() -> str:
    """``$PIXFLEET_BROKER``, else the config file's ``broker``, else the data dir's sqlite."""
    return load().settings.broker_url


def default_blobs_url() -> str:
    """``$PIXFLEET_BLOBS``, else the config file's ``blobs``, else the data dir's blobs/."""
    return load().settings.blobs_url


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
    """Index of the ``@`` that ends the userinfo of ``rest`` (after ``scheme://``), or -1.

    A password may hold unencoded ``@``, ``:``, ``/`` or ``?``: the userinfo ends at the last
    ``@`` before the query, so ``u:p@ss/w:rd@host`` hides all of ``p@ss/w:rd``. Redacting too
    much is safe; too little is not."""
    first_at = rest.find("@")
    if first_at < 0:
        return -1
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if first_at > authority_end:
        # An '@' only after the authority: credentials only if what follows the ':' is not a
        # port ("host:5672/vhost?x=a@b" has none; "user:pa/ss@host" has one).
        after_colon = rest[:authority_end].partition(":")[2]
        if not after_colon or after_colon.isdigit():
            return -1
    query = min((i for i in (rest.find(c, first_at) for c in "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, query)
    # "u:p@ss:w/rd?x@host": what follows that '@' is no host[:port], so the password goes on.
    while not _HOSTS.fullmatch(re.split(r"[/?#]", rest[at + 1 :], maxsplit=1)[0]):
        later = rest.find("@", at + 1)
        if later < 0:
            break
        at = later
    return at


#: An authority after the userinfo: ``host[:port]``, comma-separated (Kafka), or nothing.
_HOSTS = re.compile(r"(?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?,?)*")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
