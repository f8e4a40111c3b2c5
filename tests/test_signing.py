"""Opt-in HMAC signatures (issue 15.5): with a key set, unsigned or mis-signed tasks and results
never reach a consumer; they are dead-lettered once with their reason, on every transport."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from brokers import names, open_transport
from brokers.contract import Subscription
from brokers.sqlite.db import SqliteQueue
from pixfleet import signing
from pixfleet.envelope import Task, decode_result, decode_task, encode
from pixfleet.errors import ConfigError, EnvelopeBadSignature, EnvelopeUnsigned
from pixfleet.schema import SCHEMA_DIR
from tests.conftest import BrokerUnderTest
from tests.helpers.raw import read_kafka_topic
from tests.helpers.tasks import make_result, make_task, unique

KEY = "s3cret-signing-key-Zq81"
WAIT = 30.0


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (signing.ENV_KEY, signing.ENV_KEY_FILE, signing.ENV_OLD_KEYS):
        monkeypatch.delenv(name, raising=False)


def test_without_a_key_nothing_changes_and_a_sig_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = make_task("g")
    assert encode(task) == task.model_dump_json().encode()
    monkeypatch.setenv(signing.ENV_KEY, KEY)
    signed = encode(task)
    monkeypatch.delenv(signing.ENV_KEY)
    assert decode_task(signed) == task


def test_a_signed_task_verifies_and_any_change_breaks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.ENV_KEY, KEY)
    task = make_task("g")
    body = encode(task)
    obj = json.loads(body)
    assert obj["sig"] == signing.signature(obj, KEY.encode())
    assert decode_task(body) == task
    with pytest.raises(EnvelopeUnsigned):
        decode_task(task.model_dump_json())
    tampered = {**obj, "filename": "evil.jpg"}
    with pytest.raises(EnvelopeBadSignature):
        decode_task(json.dumps(tampered))
    for bad in (5, "zz", "A" * 64):
        with pytest.raises(EnvelopeBadSignature):
            decode_task(json.dumps({**obj, "sig": bad}))
    monkeypatch.setenv(signing.ENV_KEY, "another key")
    with pytest.raises(EnvelopeBadSignature) as caught:
        decode_task(body)
    assert KEY not in str(caught.value)


def test_the_signature_is_the_documented_canonical_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a producer in another language must compute: HMAC-SHA256 over sorted, compact JSON
    of the object without ``sig``, whatever order and spacing the sender used."""
    monkeypatch.setenv(signing.ENV_KEY, KEY)
    obj = json.loads(encode(make_task("g")))
    del obj["sig"]
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    import hashlib  # noqa: PLC0415 - spelled out as a foreign producer would
    import hmac  # noqa: PLC0415

    obj["sig"] = hmac.new(KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    reordered = json.dumps(dict(reversed(list(obj.items()))), indent=2)
    assert decode_task(reordered).id == obj["id"]


def test_rotation_old_keys_verify_but_never_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.ENV_KEY, "old-key")
    result = make_result(make_task("g"), "g")
    old_body = encode(result)
    monkeypatch.setenv(signing.ENV_KEY, "new-key")
    monkeypatch.setenv(signing.ENV_OLD_KEYS, "older, old-key")
    assert decode_result(old_body) == result
    new = json.loads(encode(result))
    assert new["sig"] == signing.signature(new, b"new-key")
    monkeypatch.delenv(signing.ENV_OLD_KEYS)
    with pytest.raises(EnvelopeBadSignature):
        decode_result(old_body)


def test_key_file_and_its_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    monkeypatch.setenv(signing.ENV_KEY_FILE, str(path))
    keys = signing.keyring()
    assert keys is not None and keys.signing == KEY.encode()
    assert KEY not in repr(keys)
    monkeypatch.setenv(signing.ENV_KEY_FILE, str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        open_transport(f"sqlite:///{tmp_path / 'b.db'}")  # a bad key stops a process at once
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv(signing.ENV_KEY_FILE, str(tmp_path / "empty"))
    with pytest.raises(ConfigError):
        signing.keyring()


def test_the_json_schema_allows_a_sig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.ENV_KEY, KEY)
    schema = json.loads((SCHEMA_DIR / "task.v1.json").read_text())
    jsonschema.validate(json.loads(encode(make_task("g"))), schema)


async def test_with_a_key_only_signed_tasks_and_results_get_through(
    broker: BrokerUnderTest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unsigned task and one signed with a wrong key are dead-lettered once each with their
    reason and never delivered (so never executed); the same for results injected on a reply
    channel, and ``replies()`` goes on to deliver the genuine one."""
    caplog.set_level(logging.WARNING)
    group = unique("sig")
    unsigned, forged, genuine = make_task(group), make_task(group), make_task(group)
    async with open_transport(broker.url) as transport:
        channel = await transport.open_reply_channel()
        for task, key in ((unsigned, None), (forged, "not the key"), (genuine, KEY)):
            if key:
                monkeypatch.setenv(signing.ENV_KEY, key)
            await transport.publish(task)
            await transport.reply(channel, make_result(task, group))
        async with asyncio.timeout(WAIT):
            assert await _drain(transport.consume(group, until_empty=True)) == [genuine.id]
            assert await _drain(transport.replies(channel, until_empty=True)) == [genuine.id]
        dead = await transport.dead_letters(group)
    assert sorted((decode_unsigned(d.body), _code(d.reason)) for d in dead) == sorted(
        [(unsigned.id, "envelope.unsigned"), (forged.id, "envelope.bad_signature")]
    )
    assert sorted(await _reply_dead_reasons(broker, channel, caplog)) == [
        "envelope.bad_signature",
        "envelope.unsigned",
    ]
    assert KEY not in caplog.text


def decode_unsigned(body: bytes) -> str:
    return str(json.loads(body)["id"])


def _code(reason: str) -> str:
    return reason.partition("[")[2].partition("]")[0]


async def _reply_dead_reasons(
    broker: BrokerUnderTest, channel: str, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """The codes of the results refused on ``channel``, wherever the transport puts them."""
    if broker.kind == "sqlite":
        path = Path(broker.url.split("///")[1].split("?")[0])
        queue = SqliteQueue(path, busy_timeout=1.0, synchronous="NORMAL")
        try:
            return [_code(r) for _, r in queue.dead_letters(names.SQLITE_REPLIES, channel, 10)]
        finally:
            queue.close()
    if broker.kind == "kafka":
        dead = await read_kafka_topic(broker.url, names.kafka_reply_dead_topic(channel))
        return [_code(h[names.KAFKA_HEADER_REASON].decode()) for _, h in dead]
    # RabbitMQ reply queues have no dead-letter queue: refused messages are rejected and logged.
    where = f"on {names.amqp_reply_queue(channel)}:"
    refused = [m for m in (r.getMessage() for r in caplog.records) if where in m]
    return [_code(m) for m in refused]


async def _drain(sub: Subscription[Any]) -> list[str]:
    seen = []
    async with aclosing(sub) as it:
        async for delivery in it:
            message = delivery.message
            seen.append(message.id if isinstance(message, Task) else message.task_id)
            await delivery.ack()
    return seen
