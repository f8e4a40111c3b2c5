"""Tracing through OpenTelemetry when it is installed (``pip install 'pixfleet[otel]'``), a
no-op when it is not.

Only the OpenTelemetry *API* is used here, imported lazily on the first span: the application
(or its ``opentelemetry-instrument`` launcher) configures the SDK and the exporter; without a
configured SDK the API's spans are non-recording, and without the package every :func:`span` is
an empty context manager. A trace crosses the broker in the task envelope's ``trace`` field as a
W3C ``traceparent`` (always the W3C format, whatever global propagator is set):

* the uploader or ingress opens ``pixfleet.enqueue`` and writes its ``traceparent`` into the
  task (:func:`span` yields it);
* the worker continues it: ``pixfleet.task`` (``parent=task.trace``) with the children
  ``fetch``, ``queue``, ``process``, ``store`` and ``reply``;
* a waiting client adds ``pixfleet.result`` when the result arrives.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

Attributes = Mapping[str, str | int | float | bool]

#: The tracer's instrumentation scope.
SCOPE = "pixfleet"


@functools.cache
def _otel() -> tuple[ModuleType, Any] | None:
    """``(opentelemetry.trace, a W3C trace-context propagator)``, or None when not installed."""
    try:
        trace = importlib.import_module("opentelemetry.trace")
        tracecontext = importlib.import_module("opentelemetry.trace.propagation.tracecontext")
    except ImportError:
        return None
    return trace, tracecontext.TraceContextTextMapPropagator()


def available() -> bool:
    """Whether the OpenTelemetry API can be imported (spans are real, if an SDK is set)."""
    return _otel() is not None


def recording() -> bool:
    """Whether a span made now would record: OpenTelemetry is importable and an SDK tracer
    provider is set. A caller making several spans per unit of work (the worker's steps) asks
    once and skips the others while it is False."""
    otel = _otel()
    return otel is not None and _records(otel[0])


@contextmanager
def span(
    name: str, *, parent: str | None = None, attributes: Attributes | None = None
) -> Iterator[str | None]:
    """Run the block in a span named ``name``, a child of the current span or of the
    ``parent`` traceparent (from a task envelope); yields the span's own ``traceparent`` (None
    when tracing is off or not recording). An exception is recorded on the span and re-raised."""
    otel = _otel()
    if otel is None:
        yield None
        return
    trace, propagator = otel
    if not _records(trace):
        # No SDK: the span would not record. Skip making it (six per task on a worker) and
        # yield what its traceparent would be: the parent's, or the current span's.
        yield parent or _current(trace, propagator)
        return
    context = propagator.extract({"traceparent": parent}) if parent else None
    tracer = trace.get_tracer(SCOPE)
    with tracer.start_as_current_span(name, context=context, attributes=attributes):
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        yield carrier.get("traceparent")


def _records(trace: ModuleType) -> bool:
    """Whether the tracer provider set now records spans (an SDK one)."""
    return not isinstance(trace.get_tracer_provider(), _off(trace))


@functools.cache
def _off(trace: ModuleType) -> tuple[type, ...]:
    """The tracer providers that record nothing: the API's proxy while no SDK is set, no-op."""
    return (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _current(trace: ModuleType, propagator: Any) -> str | None:
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent")


def reset() -> None:
    """Forget whether OpenTelemetry is importable (tests that hide or install it)."""
    _otel.cache_clear()
    _off.cache_clear()
