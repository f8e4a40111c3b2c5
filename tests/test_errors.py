"""Error codes are stable and documented: every code in the hierarchy appears in docs/errors.md."""

from __future__ import annotations

import re
from pathlib import Path

import pixfleet.images  # registers the image errors as subclasses
import pixfleet.storage  # noqa: F401 - registers the runtime storage errors as subclasses
from pixfleet.errors import PixfleetError

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _classes() -> list[type[PixfleetError]]:
    found: list[type[PixfleetError]] = []
    todo = [PixfleetError]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_code_is_documented() -> None:
    documented = set(re.findall(r"`([a-z0-9_]+\.[a-z0-9_.]+)`", DOC.read_text()))
    codes = {cls.code for cls in _classes()}
    assert len(codes) > 20
    generic = {"pixfleet.error", "blob.error", "image.error", "input.invalid"}
    assert not (codes - generic) - documented


def test_codes_are_unique_per_class() -> None:
    """No two classes define the same code (a subclass that keeps its parent's code - a
    runtime ``storage.full`` that is also a ``BrokerUnavailable`` - is that same error)."""
    by_code: dict[str, list[str]] = {}
    for cls in _classes():
        if "code" not in vars(cls):
            continue
        by_code.setdefault(cls.code, []).append(cls.__name__)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}


def test_one_line_rendering_folds_whitespace() -> None:
    err = PixfleetError("first line\n   second\tline")
    assert err.one_line() == "error[pixfleet.error]: first line second line"
