#!/usr/bin/env python3
"""Container health check: GET a pixfleet health endpoint; exit 0 on a 2xx answer, else 1.

    pixfleet-healthcheck [URL]

URL: the argument, else ``$PIXFLEET_HEALTHCHECK_URL``, else ``http://127.0.0.1:8080/healthz``
(the ingress, ``uploader serve --port 8080``). A worker started with ``--metrics-port 9000``
answers on ``http://127.0.0.1:9000/healthz``. Standard library only: the runtime image has
no curl, and this is installed as ``/opt/pixfleet/bin/pixfleet-healthcheck``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

ENV_URL = "PIXFLEET_HEALTHCHECK_URL"
DEFAULT_URL = "http://127.0.0.1:8080/healthz"
TIMEOUT = 4.0  # below the image's HEALTHCHECK --timeout (5 s)


def check(url: str, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """``(healthy, one line saying why)`` for one GET of ``url``."""
    if urlsplit(url).scheme not in ("http", "https"):
        return False, f"not an http(s) URL: {url!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, reset, timed out, bad host
        return False, f"{url}: {exc}"
    return 200 <= status < 300, f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get(ENV_URL) or DEFAULT_URL
    healthy, why = check(url)
    print(why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
