"""The fleet's wire models: strict decoding, targets, liveness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pixfleet.errors import EnvelopeError
from pixfleet.fleet import (
    ControlReply,
    ControlRequest,
    ControlTarget,
    WorkerStatus,
    decode_reply,
    decode_request,
    decode_status,
    encode_fleet,
    liveness,
    new_inbox,
)
from tests.fleet.raw import HOSTILE

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def status(age: float, *, heartbeat: float = 5.0, state: str = "consuming") -> WorkerStatus:
    return WorkerStatus.model_validate(
        {
            "id": "vm:1",
            "host": "vm",
            "pid": 1,
            "state": state,
            "heartbeat": heartbeat,
            "started_at": NOW - timedelta(hours=1),
            "last_seen": NOW - timedelta(seconds=age),
        }
    )


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_bodies_raise_only_envelope_errors(body: bytes) -> None:
    for decode in (decode_status, decode_request, decode_reply):
        with pytest.raises(EnvelopeError):
            decode(body)


def test_round_trips() -> None:
    request = ControlRequest.new("pause", ControlTarget(kind="group", name="thumbs"), new_inbox())
    assert decode_request(encode_fleet(request)) == request
    reply = ControlReply(request_id=request.id, worker="vm:1", command="pause", data={"a": 1})
    assert decode_reply(encode_fleet(reply)) == reply
    assert decode_status(encode_fleet(status(0))) == status(0)


def test_targets() -> None:
    assert ControlTarget(kind="all").reaches("vm:1", ())
    assert ControlTarget(kind="worker", name="vm:1").reaches("vm:1", ("a",))
    assert not ControlTarget(kind="worker", name="vm:2").reaches("vm:1", ("a",))
    assert ControlTarget(kind="group", name="a").reaches("vm:1", ("b", "a"))
    assert not ControlTarget(kind="group", name="c").reaches("vm:1", ("b", "a"))
    with pytest.raises(ValueError, match="'all' takes no name"):
        ControlTarget(kind="all", name="x")


def test_lost_after_three_missed_heartbeats_gone_after_twelve() -> None:
    assert liveness(status(14.9), NOW) == "live"
    assert liveness(status(15.1), NOW) == "lost"
    assert liveness(status(3.1, heartbeat=1), NOW) == "lost"
    assert liveness(status(59), NOW) == "lost"
    assert liveness(status(61), NOW) == "gone"
    assert liveness(status(0, state="stopped"), NOW) == "gone"
