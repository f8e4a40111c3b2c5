"""RabbitMQ URL handling: options, credentials from the environment, redaction."""

from __future__ import annotations

import pytest

from brokers import open_transport
from brokers.amqp.settings import AmqpSettings
from pixfleet.errors import InvalidURL


def test_options_are_split_between_pixfleet_and_aiormq() -> None:
    s = AmqpSettings.from_url(
        "amqps://u:p@rabbit:5671/vh?delivery_limit=4&cafile=/ca.pem&heartbeat=10&op_timeout=2"
    )
    assert (s.delivery_limit, s.op_timeout) == (4, 2.0)
    assert s.url == "amqps://u:p@rabbit:5671/vh?cafile=%2Fca.pem&heartbeat=10"
    assert s.safe_url == "amqps://u:***@rabbit:5671/vh?cafile=%2Fca.pem&heartbeat=10"


def test_heartbeat_defaults_to_30() -> None:
    assert AmqpSettings.from_url("amqp://localhost/").url.endswith("?heartbeat=30")


def test_credentials_come_from_the_environment_when_the_url_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIXFLEET_AMQP_USER", "svc")
    monkeypatch.setenv("PIXFLEET_AMQP_PASSWORD", "s3cr/t@x")
    s = AmqpSettings.from_url("amqp://rabbit/")
    assert s.url.startswith("amqp://svc:s3cr%2Ft%40x@rabbit/")
    assert "s3cr" not in s.safe_url
    # Credentials in the URL win over the environment.
    assert AmqpSettings.from_url("amqp://me:pw@rabbit/").url.startswith("amqp://me:pw@rabbit/")


def test_transport_url_never_shows_the_password() -> None:
    transport = open_transport("amqp://guest:topsecret@localhost/")
    assert "topsecret" not in transport.url


@pytest.mark.parametrize(
    "url",
    [
        "amqp://localhost/?prefetch=3",  # unknown option: refused, not ignored
        "amqp://localhost/?delivery_limit=0",
        "amqp://localhost/?op_timeout=soon",
        "amqp:///novhost-host",
        "http://localhost/",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidURL):
        AmqpSettings.from_url(url)


@pytest.mark.parametrize(
    "url",
    ["amqp://u:secret@localhost/?op_timeout=soon", "amqp://u:secret@localhost/?reply_ttl=0"],
)
def test_bad_option_errors_are_one_line_without_the_password(url: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        AmqpSettings.from_url(url)
    message = str(caught.value)
    assert "secret" not in message
    assert "\n" not in message
