"""Tracing (issue 12): one trace from enqueue through the worker to the result, with the SDK's
in-memory exporter; and without OpenTelemetry importable, nothing breaks (in-process worker on
the SQLite transport, a real process pool and file blob store)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from brokers import open_transport
from consumers.pipelines import resolve
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings
from pixfleet import tracing
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import Result, Task
from producer.inspect import vet
from producer.submission import Submission, SubmitOptions
from tests.helpers import images
from tests.helpers.tasks import unique

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the first test of the session installs it
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    tracing.reset()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def _enqueue_work_wait(tmp_path: Path) -> tuple[Task, Result]:
    """Submit one image, serve it with a burst worker, and wait for its result."""
    group = unique("thumbs")
    store = FileBlobStore(tmp_path / "blobs")
    url = f"sqlite:///{tmp_path / 'broker.db'}?poll=0.05"
    options = SubmitOptions(groups=(group,), wait=True)
    async with (
        open_transport(url) as transport,
        Submission(queue=transport, replies=transport, store=store, options=options) as sub,
        PipelinePool(1) as pool,
    ):
        task = await sub.submit(vet(images.jpeg_bytes(64, 48), "photo.jpg"))
        settings = WorkerSettings(group=group, concurrency=1, burst=True)
        worker = Worker(
            tasks=transport,
            replies=transport,
            blobs=store,
            pipeline=resolve(group, "thumbs"),
            pool=pool,
            settings=settings,
        )
        stats = await worker.run()
        assert stats.ok == 1
        [result] = await sub.collect(timeout=30)
    return task, result


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


async def test_one_trace_spans_enqueue_worker_and_result(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    task, result = await _enqueue_work_wait(tmp_path)
    assert result.status == "ok"
    named = _by_name(spans.get_finished_spans())
    steps = ["fetch", "queue", "process", "store", "reply"]
    assert set(named) >= {"pixfleet.enqueue", "pixfleet.task", "pixfleet.result", *steps}
    enqueue = named["pixfleet.enqueue"]
    assert enqueue.context is not None
    trace_id, enqueue_id = enqueue.context.trace_id, enqueue.context.span_id
    assert task.trace is not None  # the envelope carries the enqueue span's traceparent
    assert task.trace.startswith(f"00-{trace_id:032x}-{enqueue_id:016x}-")
    assert {span.context.trace_id for span in named.values() if span.context} == {trace_id}
    work = named["pixfleet.task"]
    assert work.parent is not None and work.parent.span_id == enqueue_id  # across the broker
    assert work.attributes is not None and work.attributes["pixfleet.task_id"] == task.id
    assert work.context is not None
    for step in steps:
        parent = named[step].parent
        assert parent is not None and parent.span_id == work.context.span_id, step
    arrived = named["pixfleet.result"].parent
    assert arrived is not None and arrived.span_id == enqueue_id


async def test_without_opentelemetry_nothing_breaks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` fails
    tracing.reset()
    try:
        assert not tracing.available()
        task, result = await _enqueue_work_wait(tmp_path)
    finally:
        monkeypatch.undo()
        tracing.reset()
    assert task.trace is None
    assert result.status == "ok" and result.task_id == task.id
