"""Settings of the ``s3://`` blob store, parsed from its URL and the standard AWS environment.

``s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true``

Options (URL query; each may appear once, anything else is :class:`~pixfleet.errors.InvalidURL`):

* ``endpoint`` - an S3-compatible server (MinIO, moto, ...); default ``$AWS_ENDPOINT_URL_S3``,
  ``$AWS_ENDPOINT_URL``, else AWS itself. Plain ``http://`` is allowed only for such an endpoint.
* ``region`` - default ``$AWS_REGION``, ``$AWS_DEFAULT_REGION``, else ``us-east-1``.
* ``path_style`` - ``http://host/bucket/key`` requests; default true with an ``endpoint``,
  false (virtual-hosted ``bucket.s3.region.amazonaws.com``) for AWS.
* ``connect_timeout``, ``timeout`` (seconds; per request), ``retries`` (on 5xx, throttling and
  network errors, with exponential backoff), ``url_expiry`` (seconds a ``url_for`` link lives).

Credentials come only from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) or, without them, the client's default chain (web identity, ECS, EC2
instance metadata). A URL carrying ``user:password@`` is refused, and neither :attr:`S3Settings.url`
nor any message here ever contains a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from pixfleet.blobs.keys import check_key
from pixfleet.errors import BlobKeyError, InvalidURL

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # us-east-1, auto (R2), garage
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
DEFAULT_REGION = "us-east-1"
MAX_URL_EXPIRY = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week


@dataclass(frozen=True)
class S3Credentials:
    """Static credentials from the environment; the secret parts never show in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Credentials | None:
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            return None
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)


@dataclass(frozen=True)
class S3Limits:
    """Timeouts (seconds, per request), retries and the lifetime of a ``url_for`` link."""

    connect_timeout: float = 5.0
    timeout: float = 60.0
    retries: int = 3
    url_expiry: float = 3600.0


@dataclass(frozen=True)
class S3Settings:
    """Where the store lives and how to talk to it (built by :meth:`from_url`)."""

    bucket: str
    prefix: str = ""  # "" or checked segments "a/b"
    region: str = DEFAULT_REGION
    endpoint: str | None = None
    path_style: bool = False
    limits: S3Limits = field(default_factory=S3Limits)
    credentials: S3Credentials | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> S3Settings:
        """Parse ``url``; ``env`` defaults to ``os.environ``. Raises :class:`InvalidURL`."""
        env = os.environ if env is None else env
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise InvalidURL("not an s3:// blob store URL")
        if "@" in parts.netloc:
            raise InvalidURL(
                "an s3:// URL must not carry credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment"
            )
        if parts.fragment:
            raise InvalidURL("an s3:// blob store URL takes no #fragment")
        options = _options(parts.query)
        endpoint = options.get("endpoint") or _endpoint_from_env(env)
        path_style = options.get("path_style")
        return cls(
            bucket=_bucket(parts.netloc),
            prefix=_prefix(parts.path),
            region=_region(options.get("region") or _region_from_env(env)),
            endpoint=_endpoint(endpoint) if endpoint else None,
            path_style=endpoint is not None if path_style is None else _flag(path_style),
            limits=_limits(options),
            credentials=S3Credentials.from_env(env),
        )

    @property
    def allow_http(self) -> bool:
        """Plain HTTP only towards an explicit ``http://`` endpoint (a test server)."""
        return self.endpoint is not None and self.endpoint.startswith("http://")

    @property
    def url(self) -> str:
        """The store's URL with its effective options: no credentials, safe to log."""
        query: dict[str, str] = {"region": self.region}
        if self.endpoint:
            query["endpoint"] = self.endpoint
        query["path_style"] = "true" if self.path_style else "false"
        path = f"/{self.prefix}" if self.prefix else ""  # key characters need no quoting
        return f"s3://{self.bucket}{path}?{urlencode(query, safe=':/')}"


_KNOWN = ("endpoint", "region", "path_style", "connect_timeout", "timeout", "retries", "url_expiry")


def _options(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidURL("malformed s3:// URL query (expected name=value&...)") from None
    names = [name for name, _ in pairs]
    unknown = sorted({name for name in names if name not in _KNOWN})
    if unknown:
        # Names only: a value might be a secret someone misplaced in the URL.
        raise InvalidURL(f"unknown s3:// option(s) {unknown} (known: {', '.join(_KNOWN)})")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidURL(f"s3:// option(s) {twice} given more than once")
    return dict(pairs)


def _limits(options: Mapping[str, str]) -> S3Limits:
    default = S3Limits()
    return S3Limits(
        connect_timeout=_number(options, "connect_timeout", default.connect_timeout, 600),
        timeout=_number(options, "timeout", default.timeout, 3600),
        retries=int(_number(options, "retries", default.retries, 20, parse=int, low=0)),
        url_expiry=_number(options, "url_expiry", default.url_expiry, MAX_URL_EXPIRY, low=1),
    )


def _number(
    options: Mapping[str, str],
    name: str,
    default: float,
    high: float,
    *,
    parse: Callable[[str], float] = float,
    low: float = 0.01,
) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise InvalidURL(f"s3:// option {name}={raw!r} is not a valid number") from None
    if not low <= value <= high:
        raise InvalidURL(f"s3:// option {name}={raw} is outside [{low}, {high}]")
    return value


def _flag(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidURL(f"s3:// option path_style={raw!r} is not true/false")


def _bucket(name: str) -> str:
    if not _BUCKET.fullmatch(name) or ".." in name:
        raise InvalidURL(f"invalid S3 bucket name {name!r} (3-63 of a-z 0-9 . -)")
    return name


def _region(name: str) -> str:
    if not _REGION.fullmatch(name):
        raise InvalidURL(f"invalid S3 region {name!r}")
    return name


def _prefix(path: str) -> str:
    prefix = path.strip("/")
    if not prefix:
        return ""
    try:
        return check_key(prefix)
    except BlobKeyError:
        raise InvalidURL(f"invalid s3:// prefix {prefix!r} (segments like a key's)") from None


def _endpoint(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise InvalidURL("s3:// endpoint must be http(s)://host[:port] without credentials")
    if parts.query or parts.fragment or parts.path.strip("/"):
        raise InvalidURL(f"s3:// endpoint takes no path or query: {parts.scheme}://{parts.netloc}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise InvalidURL(f"s3:// endpoint has a bad port: {parts.netloc!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def _endpoint_from_env(env: Mapping[str, str]) -> str | None:
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def _region_from_env(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
