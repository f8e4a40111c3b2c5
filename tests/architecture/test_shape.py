"""Size rules (STYLE.md, issue 8): small modules, short functions, no import cycles."""

from __future__ import annotations

import ast
import graphlib
import re

from tests.architecture.source import SOURCE_PACKAGES, function_lines, functions, modules

MODULE_LIMIT = 300
MODULE_LIMIT_WITH_REASON = 400
FUNCTION_LIMIT = 40
#: A module may run to 400 lines if its docstring says why, in a line starting "Size:".
#: Everything outside tests/ is held to the size rules; bench/ too.
SHAPED = (*SOURCE_PACKAGES, "bench")
REASON = re.compile(r"^\s*Size: \S", re.MULTILINE)


def test_modules_are_small() -> None:
    too_big = []
    for module in modules(SHAPED):
        docstring = _docstring(module.tree) or ""
        limit = MODULE_LIMIT_WITH_REASON if REASON.search(docstring) else MODULE_LIMIT
        if module.lines > limit:
            too_big.append(f"{module.path.name} ({module.name}): {module.lines} > {limit}")
    assert not too_big, too_big


def test_functions_are_short() -> None:
    too_long = [
        f"{module.name}.{fn.name} (line {fn.lineno}): {function_lines(fn)} lines"
        for module in modules(SHAPED)
        for fn in functions(module.tree)
        if function_lines(fn) > FUNCTION_LIMIT
    ]
    assert not too_long, too_long


def test_no_import_cycles_even_for_type_checking() -> None:
    graph = {}
    all_modules = {m.name: m for m in modules()}
    for name, module in all_modules.items():
        graph[name] = {dep for dep in module.imports() if dep in all_modules and dep != name}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def _docstring(tree: ast.Module) -> str | None:
    return ast.get_docstring(tree)
