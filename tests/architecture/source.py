"""Reading the project's own source for the architecture tests: modules, imports, functions."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The packages whose shape the architecture rules govern (tests and bench are not held to them).
SOURCE_PACKAGES = ("pixfleet", "brokers", "producer", "consumers")


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "brokers.sqlite.transport"
    path: Path
    tree: ast.Module

    @property
    def lines(self) -> int:
        return len(self.path.read_text().splitlines())

    def imports(self) -> set[str]:
        """Every module this one imports, at any depth (``TYPE_CHECKING`` blocks included).

        ``from a.b import c`` counts as ``a.b`` and, when ``a.b.c`` is a module, ``a.b.c``."""
        names: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = self._absolute(node)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        return names

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.name.split(".")
        if self.path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        return ".".join([*package, node.module] if node.module else package)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(packages: tuple[str, ...] = SOURCE_PACKAGES) -> Iterator[Module]:
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            yield Module(module_name(path), path, ast.parse(path.read_text(), str(path)))


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` (decorators excluded) to the last line of the body."""
    return (node.end_lineno or node.lineno) - node.lineno + 1
