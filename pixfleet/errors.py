"""The pixfleet error hierarchy.

Every error carries a stable, dotted ``code`` (``"broker.unavailable"``) that scripts and
result consumers may rely on, and a ``retryable`` flag that says whether trying the same thing
again later can succeed. Adapters translate library exceptions into these with
``raise ... from exc`` so callers never have to know aio-pika, aiokafka or sqlite3.

The CLI renders any of them as one line: ``error[<code>]: <message>``. Image errors live with
the image limits in :mod:`pixfleet.images`; ``docs/errors.md`` lists every code (a test checks).
"""

from __future__ import annotations

from typing import ClassVar


class PixfleetError(Exception):
    """Base of every error pixfleet raises on purpose."""

    code: ClassVar[str] = "pixfleet.error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def one_line(self) -> str:
        """The user-facing rendering: ``error[code]: message`` on a single line."""
        text = " ".join(self.message.split())
        return f"error[{self.code}]: {text}"


# -- configuration ---------------------------------------------------------------------------


class ConfigError(PixfleetError):
    code = "config.invalid"


class InvalidURL(ConfigError):
    code = "config.invalid_url"


# -- local storage (the data dir) -------------------------------------------------------------


class StorageError(PixfleetError):
    """A local directory pixfleet writes to (the data dir, a sqlite broker's or a file store's
    directory) cannot be used."""

    code = "storage.error"


class StorageReadOnly(StorageError):
    """The directory (or its file system) refuses writes."""

    code = "storage.read_only"


class StorageFull(StorageError):
    """The file system holding the directory has no space left."""

    code = "storage.full"
    retryable = True


# -- transports ------------------------------------------------------------------------------


class BrokerError(PixfleetError):
    """A transport failed to do what was asked."""

    code = "broker.error"


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached (refused, timed out, locked for too long)."""

    code = "broker.unavailable"
    retryable = True


class PublishFailed(BrokerError):
    """The broker did not confirm a publish; the message may not be stored."""

    code = "broker.publish_failed"
    retryable = True


class BrokerFull(PublishFailed):
    """A bounded group queue is full and refused the publish (URL option ``max_length``);
    retry once its workers caught up."""

    code = "broker.full"
    retryable = True


class BrokerBlocked(BrokerError):
    """The broker refuses publishes for now (a memory or disk alarm); try again later."""

    code = "broker.blocked"
    retryable = True


class BrokerAuthFailed(BrokerError):
    """The broker refused the credentials (or the TLS handshake)."""

    code = "broker.auth_failed"


class Unroutable(BrokerError):
    """A message would reach no queue / group: it is refused rather than silently dropped."""

    code = "broker.unroutable"


class TransportClosed(BrokerError):
    code = "broker.closed"


# -- envelopes -------------------------------------------------------------------------------


class EnvelopeError(PixfleetError):
    """A message body is not a valid envelope (bad JSON or schema violation)."""

    code = "envelope.invalid"


class EnvelopeVersionError(EnvelopeError):
    """A message body declares a schema version this code does not understand."""

    code = "envelope.version"


class EnvelopeUnsigned(EnvelopeError):
    """A signing key is set and the message carries no signature (:mod:`pixfleet.signing`)."""

    code = "envelope.unsigned"


class EnvelopeBadSignature(EnvelopeError):
    """The message's signature matches none of the configured keys."""

    code = "envelope.bad_signature"


# -- blob store ------------------------------------------------------------------------------


class BlobError(PixfleetError):
    code = "blob.error"


class BlobNotFound(BlobError):
    code = "blob.not_found"


class BlobIntegrityError(BlobError):
    """The stored bytes do not match the sha256/size the task promised."""

    code = "blob.corrupt"


class BlobKeyError(BlobError):
    """A key or URI points outside the store root (or is not a key of this store)."""

    code = "blob.bad_key"


class BlobUnavailable(BlobError):
    """The store could not be read or written (I/O error, disk full)."""

    code = "blob.unavailable"
    retryable = True


# -- inputs (uploader) -----------------------------------------------------------------------


class InputError(PixfleetError):
    code = "input.invalid"


class InputMissing(InputError):
    code = "input.missing"


class InputUnreadable(InputError):
    code = "input.unreadable"


class InputEmpty(InputError):
    code = "input.empty"


class InputTooLarge(InputError):
    code = "input.too_large"


class InputNotImage(InputError):
    code = "input.not_image"


# -- tasks and pipelines (worker) -----------------------------------------------------------


class PipelineError(PixfleetError):
    """A pipeline failed in a way it did not classify (a bug or an unexpected library error)."""

    code = "pipeline.failed"


class ParamsInvalid(PixfleetError):
    code = "params.invalid"


class TaskTimeout(PixfleetError):
    code = "task.timeout"


class TaskExpired(PixfleetError):
    """The task's deadline passed before a worker got to it."""

    code = "task.expired"


class TaskConflict(PixfleetError):
    """A task reuses the id of a task recorded with another blob (a forgery or a client bug):
    it is dead-lettered without running or replying, so the first task's outputs and result
    stay as they are."""

    code = "task.conflict"


class MemoryLimitExceeded(PixfleetError):
    """The pipeline needed more memory than a pool process may have (``--memory-limit``)."""

    code = "resource.memory"


class InternalError(PixfleetError):
    """A failure nothing classified (a bug, or a library error no adapter translated): the
    task gets an error result with the exception's type and text, never a silent retry."""

    code = "internal.error"

    @classmethod
    def wrap(cls, exc: BaseException) -> InternalError:
        """``TypeName: text`` of ``exc`` (one line, no traceback)."""
        return cls(" ".join(f"{type(exc).__name__}: {exc}".split()))


class PipelineUnknown(ConfigError):
    code = "pipeline.unknown"


class WorkerCrashed(PixfleetError):
    """The process running the pipeline died (out of memory, killed)."""

    code = "worker.crashed"
    retryable = True


# -- the fleet (worker registry and control plane) --------------------------------------------


class FleetError(PixfleetError):
    code = "fleet.error"


class UnknownWorker(FleetError):
    """``uploader control --worker ID`` names a worker the roster does not list as live."""

    code = "fleet.unknown_worker"


class NoControlReply(FleetError):
    """No targeted worker answered a control request before the timeout."""

    code = "fleet.no_reply"
    retryable = True


class ControlFailed(FleetError):
    """A worker could not carry out a control request (in its reply's ``error``)."""

    code = "fleet.control_failed"


class ResultTimeout(PixfleetError):
    """``--wait`` gave up before every expected result arrived."""

    code = "result.timeout"


class DeadLetterNotFound(PixfleetError):
    """``uploader dlq replay --task ID`` named a task that is not among the dead letters."""

    code = "dlq.not_found"
