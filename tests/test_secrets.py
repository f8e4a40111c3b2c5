"""Secrets never show, insecure set-ups say so (issue 15.8).

Every URL error of every broker and blob store, and every log line, is grepped for the password;
a disabled TLS check, cleartext SASL PLAIN and an ``amqp://`` password to another machine each
log one warning line.
"""

from __future__ import annotations

import logging

import pytest

from brokers import open_transport
from brokers.amqp.settings import AmqpSettings
from brokers.kafka.settings import KafkaSettings
from pixfleet.blobs import open_blobstore
from pixfleet.errors import PixfleetError
from pixfleet.settings import is_loopback, redact

SECRET = "Zx9@se:cr/et?q"
RAW = SECRET  # unencoded, as users really type it


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://user:{RAW}@host/vhost",
        f"amqps://user:{RAW}@host:5671/v?heartbeat=30",
        f"kafka://user:{RAW}@host:9092",
        f"s3://key:{RAW}@bucket/prefix",
        f"amqp://user:{RAW}@host/v?x=a@b",
    ],
)
def test_redact_hides_passwords_with_at_colon_slash_and_question_mark(url: str) -> None:
    safe = redact(url)
    assert "***" in safe
    for part in ("Zx9", "se:cr", "cr/et", "et?q"):
        assert part not in safe


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://user:{RAW}@host/v?bogus=1",  # unknown option
        f"amqp://user:{RAW}@host/v?delivery_limit=abc",  # bad number
        f"kafka://user:{RAW}@host:9092",  # credentials in a kafka URL are refused
        f"sqlite://user:{RAW}@host/x.db",
        f"nats://user:{RAW}@host",  # unknown scheme
    ],
)
def test_no_broker_url_error_shows_the_password(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PixfleetError) as caught:
        open_transport(url)
    text = caught.value.one_line() + caplog.text
    assert "Zx9" not in text and "se:cr" not in text


@pytest.mark.parametrize(
    "url", [f"gs://user:{RAW}@bucket/p", f"memory://user:{RAW}@x", f"s3://k:{RAW}@bucket/p"]
)
def test_no_blob_store_url_error_shows_the_password(url: str) -> None:
    with pytest.raises(PixfleetError) as caught:
        open_blobstore(url)
    assert "Zx9" not in caught.value.one_line()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqps://u:pw1234@rabbit.example.com/v?no_verify_ssl=1", "verification is disabled"),
        ("amqp://u:pw1234@rabbit.example.com/v", "cleartext"),
        ("amqp://u:pw1234@10.1.2.3/v", "cleartext"),
        ("amqp://u:pw1234@127.0.0.1/v", None),
        ("amqp://u:pw1234@localhost/v", None),
        ("amqps://u:pw1234@rabbit.example.com/v", None),
        ("amqp://rabbit.example.com/v", None),  # no password: nothing to leak
    ],
)
def test_amqp_warns_once_for_insecure_set_ups(
    url: str, expected: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    AmqpSettings.from_url(url)
    warnings = _warnings(caplog)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0], warnings
        assert "\n" not in warnings[0]
    assert "pw1234" not in caplog.text


def test_amqp_password_from_the_environment_counts_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("PIXFLEET_AMQP_USER", "u")
    monkeypatch.setenv("PIXFLEET_AMQP_PASSWORD", "pw1234")
    AmqpSettings.from_url("amqp://rabbit.example.com/v")
    assert ["cleartext" in w for w in _warnings(caplog)] == [True]
    assert "pw1234" not in caplog.text


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        ("security_protocol=SASL_PLAINTEXT&sasl_mechanism=PLAIN", True),
        ("security_protocol=SASL_SSL&sasl_mechanism=PLAIN", False),
        ("security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512", False),
        ("", False),
    ],
)
def test_kafka_warns_for_cleartext_sasl_plain(
    options: str, warned: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("PIXFLEET_KAFKA_PASSWORD", "pw1234")
    KafkaSettings.from_url(f"kafka://k.example.com:9092?{options}")
    assert [("cleartext" in w) for w in _warnings(caplog)] == ([True] if warned else [])
    assert "pw1234" not in caplog.text


def test_loopback_hosts() -> None:
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.8.0.1", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["", None, "10.0.0.1", "example.com", "localhost.evil.com"]))


@pytest.mark.parametrize(
    ("endpoint", "warned"),
    [("http://minio.example.com:9000", True), ("http://127.0.0.1:9000", False)],
)
def test_s3_warns_for_plain_http_to_another_machine(
    endpoint: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    open_blobstore(f"s3://bucket/p?endpoint={endpoint}")
    assert [("unencrypted" in w) for w in _warnings(caplog)] == ([True] if warned else [])
