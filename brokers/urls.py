"""One way to read a transport URL's ``?key=value`` options.

Every transport parses its query string with :class:`UrlOptions`, so unknown options, bad
numbers and bad flags are refused the same way everywhere, as one
:class:`~pixfleet.errors.InvalidURL` that never shows a password::

    opts = UrlOptions.parse(url, known={"lease", "poll"}, scheme="sqlite")
    lease = opts.number("lease", 30.0, minimum=0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

from pixfleet.bounds import MAX_SECONDS
from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class UrlOptions:
    """The query options of one URL, checked against the names a transport knows."""

    scheme: str
    values: dict[str, str]
    safe_url: str

    @classmethod
    def parse(cls, url: str, *, known: Iterable[str], scheme: str) -> UrlOptions:
        """Options of ``url``; raises :class:`InvalidURL` naming any unknown ones."""
        allowed = set(known)
        values = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise InvalidURL(f"unknown {scheme} URL option(s) {unknown}; known: {sorted(allowed)}")
        return cls(scheme=scheme, values=values, safe_url=redact(url))

    def text(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        """A float option (every one is a number of seconds): finite, from 0 to
        :data:`~pixfleet.bounds.MAX_SECONDS` (7 days); ``minimum`` is exclusive (``> minimum``)."""
        value = self._convert(name, default, float)
        if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
            raise InvalidURL(
                f"{self.scheme} option {name} must be seconds from 0 to {MAX_SECONDS:g},"
                f" got {value:g}"
            )
        if minimum is not None and value <= minimum:
            raise InvalidURL(f"{self.scheme} option {name} must be > {minimum:g}, got {value:g}")
        return value

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        """An int option; ``minimum`` is inclusive (``>= minimum``)."""
        value = self._convert(name, default, int)
        if minimum is not None and value < minimum:
            raise InvalidURL(f"{self.scheme} option {name} must be >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.values.get(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise InvalidURL(f"{self.scheme} option {name} expects true or false, got {raw!r}")

    def _convert(self, name: str, default: N, kind: type[N]) -> N:
        raw = self.values.get(name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError as exc:
            raise InvalidURL(
                f"bad {self.scheme} URL option {name}={raw!r} in {self.safe_url!r}: {exc}"
            ) from exc
