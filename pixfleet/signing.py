"""Opt-in HMAC signatures on envelopes: who may publish tasks and results.

Anyone with write access to the broker can publish a task or inject a result. With a shared
key set, :func:`pixfleet.envelope.encode` adds a ``sig`` field to every task and result, and
:func:`~pixfleet.envelope.decode_task` / :func:`~pixfleet.envelope.decode_result` refuse a
message without a valid one (the transport dead-letters it with the reason), so only holders of
the key can make a worker run something or a client believe a result.

The key comes from the environment only (never a command-line option, which ``ps`` shows):

* ``PIXFLEET_SIGNING_KEY`` - the key itself (its UTF-8 bytes), or
* ``PIXFLEET_SIGNING_KEY_FILE`` - a file holding it (a trailing newline is dropped);
* ``PIXFLEET_SIGNING_KEYS_OLD`` - optional, comma-separated earlier keys that still *verify*
  but never sign, for rotation: deploy the new key with the old one here, then drop the old.

The signature (wire format, for producers in other languages): ``sig`` is the lowercase hex
HMAC-SHA256 of the *canonical JSON* of the message object without its ``sig`` member::

    json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

where ``obj`` is the message as parsed from the wire. Without a key nothing is signed or
checked (a ``sig`` present is ignored), so behaviour is unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from pixfleet.errors import ConfigError
from pixfleet.errors import EnvelopeBadSignature as BadSignature
from pixfleet.errors import EnvelopeUnsigned as Unsigned

ENV_KEY: Final = "PIXFLEET_SIGNING_KEY"
ENV_KEY_FILE: Final = "PIXFLEET_SIGNING_KEY_FILE"
ENV_OLD_KEYS: Final = "PIXFLEET_SIGNING_KEYS_OLD"
SIG_FIELD: Final = "sig"
SIG_PATTERN: Final = r"^[0-9a-f]{64}$"


@dataclass(frozen=True)
class Keyring:
    """The key that signs and every key that verifies (the signing key first)."""

    signing: bytes
    verifying: tuple[bytes, ...]

    def __repr__(self) -> str:  # never show a key, even in a traceback
        return f"Keyring(<{len(self.verifying)} key(s)>)"


def keyring() -> Keyring | None:
    """The configured keys, or None when signing is off. Raises :class:`ConfigError` for a key
    file that cannot be read or an empty key (never showing the key)."""
    key = _configured_key()
    if key is None:
        return None
    old = tuple(k.strip().encode() for k in os.environ.get(ENV_OLD_KEYS, "").split(","))
    return Keyring(signing=key, verifying=(key, *(k for k in old if k)))


def _configured_key() -> bytes | None:
    inline = os.environ.get(ENV_KEY)
    path = os.environ.get(ENV_KEY_FILE)
    if inline and path:
        raise ConfigError(f"set one of {ENV_KEY} and {ENV_KEY_FILE}, not both")
    if inline:
        return inline.encode()
    if path:
        return _read_key_file(path)
    return None


@lru_cache(maxsize=8)
def _read_key_file(path: str) -> bytes:
    try:
        key = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"{ENV_KEY_FILE}={path!r} cannot be read: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"{ENV_KEY_FILE}={path!r} is empty")
    return key


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes a signature covers: ``obj`` without ``sig``, as canonical JSON."""
    unsigned = {k: v for k, v in obj.items() if k != SIG_FIELD}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate must not escape as a crash


def signature(obj: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(obj), hashlib.sha256).hexdigest()


def sign(obj: dict[str, Any], keys: Keyring) -> dict[str, Any]:
    """``obj`` with its ``sig`` member set (or replaced)."""
    return {**obj, SIG_FIELD: signature(obj, keys.signing)}


def verify(obj: dict[str, Any], keys: Keyring) -> None:
    """Raise :class:`Unsigned` or :class:`BadSignature` unless ``obj`` is signed by one of
    ``keys`` (compared in constant time)."""
    given = obj.get(SIG_FIELD)
    if given is None:
        raise Unsigned("message is not signed and this process requires signatures")
    if not isinstance(given, str) or re.fullmatch(SIG_PATTERN, given) is None:
        raise BadSignature("message signature is not 64 lowercase hex digits")
    for key in keys.verifying:
        if hmac.compare_digest(signature(obj, key), given):
            return
    raise BadSignature("message signature does not match the signing key")
