"""Module boundaries (STYLE.md), checked by walking the imports of every source file."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports_of(package: str) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path.relative_to(REPO)] = names
    return out


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_producer_and_consumers_never_import_each_other() -> None:
    for path, names in imports_of("producer").items():
        assert "consumers" not in _top(names), path
    for path, names in imports_of("consumers").items():
        assert "producer" not in _top(names), path


def test_broker_libraries_stay_inside_their_adapters() -> None:
    for package in ("brokers", "producer", "consumers"):
        for path, names in imports_of(package).items():
            if "aio_pika" in _top(names) or "aiormq" in _top(names):
                assert path.name.startswith("amqp"), path
            if "aiokafka" in _top(names):
                assert path.name.startswith("kafka"), path


def test_image_code_imports_no_transport() -> None:
    for path, names in imports_of("consumers").items():
        if "PIL" in _top(names):
            assert not {
                n for n in names if n.startswith("brokers.") and n not in {"pixfleet.errors"}
            }, path
    for path, names in imports_of("brokers").items():
        assert "PIL" not in _top(names), f"{path}: the transport layer must not do imaging"


def test_no_pickle_on_the_wire() -> None:
    for package in ("brokers", "producer", "consumers"):
        for path, names in imports_of(package).items():
            assert not {"pickle", "marshal", "shelve"} & _top(names), path


def test_nothing_runs_at_import_time_but_definitions() -> None:
    # No module-level calls that create transports, connections or loops.
    for package in ("brokers", "producer", "consumers"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            source = path.read_text()
            for needle in ("open_transport(", "asyncio.run(", "get_event_loop("):
                for line in source.splitlines():
                    if line.startswith(needle):
                        raise AssertionError(f"{path}: top-level {needle}")
