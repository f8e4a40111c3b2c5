"""Envelopes: strict validation, versioning, and the published JSON Schemas."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import EnvelopeError, EnvelopeVersionError
from pixfleet.schema import SCHEMA_DIR, render, schema_files
from tests.helpers.tasks import make_result, make_task


def test_task_and_result_round_trip_through_json() -> None:
    task = make_task("thumbs", sizes=[64])
    assert decode_task(encode(task)) == task
    result = make_result(task, "thumbs", ok=False)
    assert decode_result(encode(result)) == result


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe not utf-8", EnvelopeError),
        (b"[1, 2]", EnvelopeError),
        (b'{"v": 2}', EnvelopeVersionError),
        (b'{"id": "no-version"}', EnvelopeVersionError),
        (b'{"v": "1"}', EnvelopeVersionError),
    ],
)
def test_undecodable_bodies_raise_typed_errors(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_task(body)


def _task_dict(**changes: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(encode(make_task("thumbs")))
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes",
    [
        {"groups": ["Not A Group"]},
        {"blob": {"uri": "file:///x", "sha256": "abc", "size": 1, "content_type": "image/png"}},
        {"id": "../../etc/passwd"},
        {"attempt": 0},
        {"pickle": "cos\nsystem\n"},  # unknown fields are refused
        {"created_at": 12},
    ],
)
def test_schema_violations_are_envelope_errors(changes: dict[str, object]) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_task(json.dumps(_task_dict(**changes)))
    assert info.value.code == "envelope.invalid"


def test_result_status_and_error_must_agree() -> None:
    data = json.loads(encode(make_result(make_task("thumbs"), "thumbs")))
    data["status"] = "error"
    with pytest.raises(EnvelopeError):
        decode_result(json.dumps(data))


def test_checked_in_json_schemas_match_the_models() -> None:
    for name, doc in schema_files().items():
        path = SCHEMA_DIR / name
        assert path.read_text() == render(doc), f"{name} is stale: run `make schema`"


def test_json_schema_accepts_real_envelopes_and_rejects_bad_ones() -> None:
    task_schema = json.loads((SCHEMA_DIR / "task.v1.json").read_text())
    result_schema = json.loads((SCHEMA_DIR / "result.v1.json").read_text())
    task = make_task("thumbs")
    jsonschema.validate(json.loads(encode(task)), task_schema)
    jsonschema.validate(json.loads(encode(make_result(task, "thumbs"))), result_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_task_dict(groups=["BAD GROUP"]), task_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_task_dict(v=2), task_schema)


def test_models_are_frozen() -> None:
    task = make_task("thumbs")
    with pytest.raises(ValueError, match="frozen"):
        task.id = "other"  # type: ignore[misc]  # assigning to a frozen field is the point
    assert isinstance(task, Task) and not isinstance(task, Result)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,  # deeply nested: RecursionError must not escape
        b'{"v": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"\xff\xfe not utf-8",
        b"x" * (300 * 1024),  # over the body cap, refused before parsing
        b'{"v": "' + b"9" * 5000 + b'"}',
    ],
)
def test_hostile_bodies_are_envelope_errors(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_task(body)
    with pytest.raises(EnvelopeError):
        decode_result(body)


def test_naive_datetimes_are_refused() -> None:
    data = _task_dict(deadline="2030-01-01T00:00:00")
    with pytest.raises(EnvelopeError, match="deadline"):
        decode_task(json.dumps(data))
