"""docker/nginx.conf on loopback with Debian's nginx, for the deploy tests and the local topology
e2e: the same file compose mounts, with this run's upstreams and listen address.

    site = write_site(tmp_path / "nginx", ["127.0.0.1:8081", "127.0.0.1:8082"], port=8080)
    proc = subprocess.Popen(run_argv(site))      # foreground; SIGQUIT stops it gracefully

``tests/harness/ensure-nginx.sh`` (``make brokers``) installs the package.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.deploy.manifests import NGINX_CONF

UPSTREAM_FILE = "pixfleet-upstream.conf"
LISTEN_FILE = "pixfleet-listen.conf"


def nginx_binary() -> str | None:
    """Debian's nginx (``/usr/sbin`` is not on every PATH), or None."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return found


def write_site(
    directory: Path, upstreams: Sequence[str], *, port: int, host: str = "127.0.0.1"
) -> Path:
    """A copy of docker/nginx.conf in ``directory`` with its two include files: round robin over
    ``upstreams`` (``host:port`` each) and a listener on ``host:port``. Returns the directory,
    which is also nginx's prefix (its temporary files go there)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(NGINX_CONF, directory / "nginx.conf")
    servers = "".join(f"    server {u} max_fails=1 fail_timeout=5s;\n" for u in upstreams)
    (directory / UPSTREAM_FILE).write_text(
        f"upstream pixfleet_ingress {{\n{servers}    keepalive 32;\n}}\n", encoding="utf-8"
    )
    (directory / LISTEN_FILE).write_text(f"listen {host}:{port};\n", encoding="utf-8")
    return directory


def _argv(site: Path, *extra: str, directives: str = "") -> list[str]:
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed (tests/harness/ensure-nginx.sh)"
    globals_ = f"pid {site / 'nginx.pid'}; {directives}".strip()
    conf = str(site / "nginx.conf")
    return [binary, "-p", f"{site}/", "-c", conf, "-e", "stderr", "-g", globals_, *extra]


def check_argv(site: Path) -> list[str]:
    """``nginx -t`` of the site: syntax, includes, upstreams, temp paths."""
    return _argv(site, "-t", "-q")


def run_argv(site: Path) -> list[str]:
    """nginx in the foreground (SIGQUIT: graceful stop; SIGTERM: fast stop). Started as root,
    its workers stay root too: test directories (pytest's tmp_path) are private to their owner,
    and a worker running as `nobody` could not write its temporary files there."""
    user = "user root;" if os.geteuid() == 0 else ""
    return _argv(site, directives=f"daemon off; {user}".strip())
