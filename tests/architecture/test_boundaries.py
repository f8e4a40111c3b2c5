"""Module boundaries (STYLE.md, docs/architecture.md), checked by walking every import.

* the kernel (``pixfleet``) imports none of ``brokers``, ``producer``, ``consumers``;
* ``producer`` and ``consumers`` import only the kernel and the broker *contracts*
  (``brokers``, ``brokers.contract``, ``brokers.names``, ``brokers.policy``), never a transport,
  and never each other;
* image code (anything importing Pillow) imports only the kernel; the kernel and ``brokers``
  never import Pillow;
* aio-pika/aiormq live only in ``brokers.amqp``, aiokafka only in ``brokers.kafka``;
* no pickle anywhere on the wire; no side effects at import.
"""

from __future__ import annotations

from tests.architecture.source import REPO, SOURCE_PACKAGES, Module, modules

FIRST_PARTY = {"pixfleet", "brokers", "producer", "consumers"}
CONTRACTS = {"brokers", "brokers.contract", "brokers.names", "brokers.policy"}


def _first_party(module: Module) -> set[str]:
    return {n for n in module.imports() if n.split(".")[0] in FIRST_PARTY}


def _top(module: Module) -> set[str]:
    return {n.split(".")[0] for n in module.imports()}


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_the_kernel_imports_no_other_package() -> None:
    for module in modules(("pixfleet",)):
        outside = {n for n in _first_party(module) if not n.startswith("pixfleet")}
        assert not outside, f"{module.name} imports {sorted(outside)}"


def test_producer_and_consumers_use_only_contracts_and_the_kernel() -> None:
    for module in modules(("producer", "consumers")):
        own = module.name.split(".")[0]
        for name in _first_party(module):
            top = name.split(".")[0]
            if top in ("pixfleet", own):
                continue
            assert top == "brokers", f"{module.name} imports {name}"
            assert name in CONTRACTS or not _is_module(name), (
                f"{module.name} imports {name}: only {sorted(CONTRACTS)} of brokers"
            )


def test_image_code_imports_only_the_kernel() -> None:
    for module in modules(("producer", "consumers")):
        if "PIL" in _top(module):
            others = {n for n in _first_party(module) if n.split(".")[0] == "brokers"}
            assert not others, f"{module.name} does imaging and imports {sorted(others)}"
    for module in modules(("consumers",)):
        if module.name.startswith("consumers.pipelines"):
            outside = {
                n for n in _first_party(module) if not n.startswith(("pixfleet", "consumers."))
            }
            assert not outside, f"pipeline {module.name} imports {sorted(outside)}"
    for module in modules(("pixfleet", "brokers")):
        assert "PIL" not in _top(module), f"{module.name}: no imaging outside image code"


def test_broker_libraries_stay_inside_their_adapters() -> None:
    for module in modules():
        if {"aio_pika", "aiormq"} & _top(module):
            assert module.name.startswith("brokers.amqp"), module.name
        if "aiokafka" in _top(module):
            assert module.name.startswith("brokers.kafka"), module.name


def test_the_rules_see_real_imports() -> None:
    # Guard against a walker that finds nothing (and so passes every rule above).
    by_name = {m.name: m for m in modules()}
    assert "aio_pika" in _top(by_name["brokers.amqp.transport"])
    assert "brokers.contract" in by_name["consumers.worker"].imports()
    assert "PIL" in _top(by_name["consumers.imaging"])
    assert len(by_name) > 30


def test_no_pickle_on_the_wire() -> None:
    for module in modules():
        assert not {"pickle", "marshal", "shelve"} & _top(module), module.name


def test_nothing_runs_at_import_time_but_definitions() -> None:
    # No module-level calls that create transports, connections or loops.
    for package in SOURCE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            for line in path.read_text().splitlines():
                for needle in ("open_transport(", "asyncio.run(", "get_event_loop("):
                    assert not line.startswith(needle), f"{path}: top-level {needle}"
