"""Reading the deployment files of ``docker/`` for the deploy tests: YAML documents, Compose
interpolation, durations, the Dockerfile's instructions, the CLIs' options."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

import typer
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
NGINX_CONF = DOCKER / "nginx.conf"
K8S = DOCKER / "k8s"
K8S_BASE = K8S / "base"
OVERLAYS = ("rabbitmq", "kafka")
SCHEMAS = Path(__file__).resolve().parent / "schemas"

Doc = dict[str, Any]


# -- YAML ------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_documents(path: Path) -> list[Doc]:
    """Every non-empty document of a multi-document YAML file."""
    docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [cast(Doc, d) for d in docs if d]


# -- Compose ---------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\})"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}`` and
    ``$$``, as ``docker compose config`` would expand them with ``env``."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":-", ":?") and not value:
            value = None
        if value is not None:
            return value
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op else ""

    return _VARIABLE.sub(expand, value)


def _interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(item, env) for key, item in node.items()}
    return node


def compose_raw() -> Doc:
    return cast(Doc, load_yaml(COMPOSE_FILE))


def compose(env: Mapping[str, str] | None = None) -> Doc:
    """docker/compose.yaml with YAML merge keys resolved and variables expanded (defaults when
    ``env`` is empty)."""
    return cast(Doc, _interpolated(compose_raw(), env or {}))


def services(env: Mapping[str, str] | None = None) -> dict[str, Doc]:
    return cast(dict[str, Doc], compose(env)["services"])


def command_of(service: Doc) -> list[str]:
    command = service.get("command", [])
    assert isinstance(command, list), "commands are exec-form lists (no shell in between)"
    return [str(part) for part in command]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def duration(text: str) -> float:
    """Seconds of a Compose duration (``1m30s``, ``45s``, ``500ms``)."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


# -- Kubernetes ------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    """Every manifest file (kustomizations included)."""
    return sorted(K8S.rglob("*.yaml"))


def kustomization(directory: Path) -> Doc:
    return cast(Doc, load_yaml(directory / "kustomization.yaml"))


def _apply_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """The JSON 6902 ``replace``/``add`` of ``/data/KEY`` ops the overlays use (and only those)."""
    for op in ops:
        assert op["op"] in ("replace", "add"), op
        head, key = op["path"].rsplit("/", 1)
        assert head == "/data", f"only /data/KEY patches are understood here: {op}"
        doc["data"][key] = op["value"]
    return doc


def _targets(doc: Doc, target: Doc) -> bool:
    kind, name = str(doc["kind"]), str(doc["metadata"]["name"])
    return (kind, name) == (str(target.get("kind", kind)), str(target.get("name", name)))


def rendered(directory: Path) -> list[Doc]:
    """What ``kubectl apply -k DIRECTORY`` would send, for the features the kustomizations here
    use (resources, namespace, images, JSON 6902 patches of ConfigMap data)."""
    kust = kustomization(directory)
    docs: list[Doc] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        docs.extend(rendered(path) if path.is_dir() else load_documents(path))
    for doc in docs:
        if "namespace" in kust and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kust["namespace"]
        for image in kust.get("images", []):
            for container in containers(doc):
                if container["image"].split(":")[0] == image["name"]:
                    tag = image.get("newTag", container["image"].partition(":")[2])
                    container["image"] = f"{image.get('newName', image['name'])}:{tag}"
    for patch in kust.get("patches", []):
        ops = cast(list[Doc], yaml.safe_load(patch["patch"]))
        matched = [d for d in docs if _targets(d, patch["target"])]
        assert matched, f"patch target {patch['target']} matches nothing"
        for doc in matched:
            _apply_patch(doc, ops)
    return docs


def containers(doc: Doc) -> list[Doc]:
    if doc.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet"):
        return []
    return cast(list[Doc], doc["spec"]["template"]["spec"]["containers"])


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment from its ConfigMap and Secret refs plus literal values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(find(docs, "Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    pairs = []
    for line in joined:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


# -- pyproject and the CLIs ------------------------------------------------------------------


@cache
def pyproject() -> Doc:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def console_scripts() -> dict[str, str]:
    return cast(dict[str, str], pyproject()["project"]["scripts"])


def cli_command(argv: list[str]) -> Any:
    """The command object ``argv`` names (``["worker", "run", ...]``): the console script's Typer
    app, descended through subcommands. Duck-typed (``.params``, ``.commands``): Typer vendors
    its own click, so these are not ``click`` classes."""
    script, *rest = argv
    module_name, _, attr = console_scripts()[script].partition(":")
    module = __import__(module_name, fromlist=["app"])
    assert attr == "main" and hasattr(module, "app"), f"{script}: expected a Typer app"
    command: Any = typer.main.get_command(module.app)
    for word in rest:
        subcommands = getattr(command, "commands", None)
        if not subcommands or word not in subcommands:
            break
        command = subcommands[word]
    return command


def options_of(command: Any) -> dict[str, Any]:
    """Option name (``--port``) -> its parameter (``.default``, ``.envvar``, ...)."""
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def worker_stop_seconds() -> float:
    """Longest a worker takes to stop after SIGTERM, from the code's defaults: in-flight tasks
    get the drain timeout, then the process pool gets as long again to exit (`worker run
    --drain-timeout`). Before that option (issue 9) only the tasks' drain was bounded, by
    ``WorkerSettings.drain_timeout``."""
    option = options_of(cli_command(["worker", "run"])).get("--drain-timeout")
    if option is None:
        from consumers.worker import WorkerSettings  # noqa: PLC0415 - only this fallback

        return float(WorkerSettings(group="thumbs").drain_timeout)
    if option.default is None:  # the flag defers to env / pixfleet.toml / the built-in default
        from consumers.options import FROM_CONFIG  # noqa: PLC0415 - only this case

        return 2 * float(FROM_CONFIG["drain_timeout"][1])
    return 2 * float(option.default)


#: Options the deployment files pass before the CLI has them: (script, option) -> the issue
#: that adds it. The tests accept these and name them, so their arrival can be checked.
PENDING_OPTIONS: dict[tuple[str, str], str] = {}


def unknown_options(argv: list[str]) -> list[str]:
    """Options in ``argv`` its command does not have, pending ones excepted."""
    known = options_of(cli_command(argv))
    return [
        word
        for word in argv
        if word.startswith("--")
        and word.partition("=")[0] not in known
        and (argv[0], word) not in PENDING_OPTIONS
    ]
