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
