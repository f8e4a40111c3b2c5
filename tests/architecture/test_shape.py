"""Size rules (STYLE.md, issue 8): small modules, short functions, no import cycles."""

from __future__ import annotations

import re

from tests.architecture.source import function_lines, functions, modules

MODULE_LIMIT = 300
MODULE_LIMIT_WITH_REASON = 400
FUNCTION_LIMIT = 40
#: A module may run to 400 lines if its docstring says why, in a line starting "Size:".
REASON = re.compile(r"^\s*Size: \S", re.MULTILINE)


def test_modules_are_small() -> None:
    too_big = []
    for module in modules():
        docstring = (module.tree.body and _docstring(module.tree)) or ""
        limit = MODULE_LIMIT_WITH_REASON if REASON.search(docstring) else MODULE_LIMIT
        if module.lines > limit:
            too_big.append(f"{module.path.name} ({module.name}): {module.lines} > {limit}")
    assert not too_big, too_big


def test_functions_are_short() -> None:
    too_long = [
        f"{module.name}.{fn.name} (line {fn.lineno}): {function_lines(fn)} lines"
        for module in modules()
        for fn in functions(module.tree)
        if function_lines(fn) > FUNCTION_LIMIT
    ]
    assert not too_long, too_long


def test_no_import_cycles_even_for_type_checking() -> None:
    graph = {}
    all_modules = {m.name: m for m in modules()}
    for name, module in all_modules.items():
        graph[name] = {dep for dep in module.imports() if dep in all_modules and dep != name}
    cycles = _cycles(graph)
    assert not cycles, cycles


def _docstring(tree: object) -> str | None:
    import ast  # noqa: PLC0415 - local: only this helper needs it

    assert isinstance(tree, ast.Module)
    return ast.get_docstring(tree)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
