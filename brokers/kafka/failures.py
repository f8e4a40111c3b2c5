"""Kafka errors as pixfleet errors: what a subscription waits out and what ends it.

A subscription retries ``broker.unavailable`` forever (:mod:`brokers.kafka.outage`); the rest
ends it: refused credentials or permissions (``broker.auth_failed``) and requests the broker
refuses for good because of the configuration (``broker.error``: a replication factor above the
broker count, a bad topic name or config). Everything else - connections lost, timeouts, a
coordinator moving, a leader election - is transient.
"""

from __future__ import annotations

from aiokafka import errors as kafka

from pixfleet.errors import BrokerAuthFailed, BrokerError, BrokerUnavailable

_REFUSED = (
    kafka.AuthenticationFailedError,
    kafka.AuthenticationMethodNotSupported,
    kafka.SaslAuthenticationFailed,
    kafka.UnsupportedSaslMechanismError,
    kafka.TopicAuthorizationFailedError,
    kafka.GroupAuthorizationFailedError,
    kafka.ClusterAuthorizationFailedError,
)
_CONFIGURATION = (
    kafka.InvalidReplicationFactorError,
    kafka.InvalidReplicationAssignmentError,
    kafka.InvalidPartitionsError,
    kafka.InvalidTopicError,
    kafka.InvalidConfigurationError,
    kafka.PolicyViolationError,
    kafka.UnsupportedVersionError,
)


def translate(exc: BaseException, url: str, what: str) -> BrokerError:
    """The pixfleet error for ``exc``, raised while doing ``what`` on the broker at ``url``."""
    detail = f"{what} on {url}: {exc or type(exc).__name__}"
    if isinstance(exc, _REFUSED):
        return BrokerAuthFailed(f"refused: {detail}")
    if isinstance(exc, _CONFIGURATION):
        return BrokerError(f"cannot {detail}")
    return BrokerUnavailable(f"cannot {detail}")


def producer_start_failed(exc: BaseException, url: str, *, idempotence: bool) -> BrokerError:
    """The pixfleet error for a producer that did not start.

    With ``idempotence`` on, a broker that answers the producer-id request with an error for
    good (tansu: ``UnknownError``; an old broker: ``UnsupportedVersion``) is reachable - it has
    no idempotent producer, and the error says how to turn it off. Anything else is
    :func:`translate`'s."""
    answered = isinstance(exc, kafka.BrokerResponseError) and not exc.retriable
    if idempotence and answered and not isinstance(exc, _REFUSED):
        return BrokerError(
            f"{url} refused the idempotent producer ({exc or type(exc).__name__}); "
            "a broker without one (tansu, for instance) needs ?idempotence=false in the URL"
        )
    error = translate(exc, url, "start the producer")
    if idempotence and isinstance(error, BrokerAuthFailed):
        error = BrokerAuthFailed(
            f"{error.message} (an idempotent producer needs IdempotentWrite on the cluster; "
            "or add ?idempotence=false to the URL)"
        )
    return error
