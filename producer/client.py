"""The Python API: enqueue images and wait for their results from your own code.

It lives in ``producer`` (the kernel ``pixfleet`` imports no broker) and is re-exported there,
so ``from producer import Client``. ``uploader enqueue`` is built on it::

    async with Client(broker="sqlite:///tmp/broker.db", blobs="file:///tmp/blobs") as client:
        task = await client.enqueue("photo.jpg", groups=["thumbs"], params={"sizes": [128]})
        result = await task.result(timeout=60)          # a pixfleet.envelope.Result
        print(result.status, [o.uri for o in result.outputs])

``broker`` and ``blobs`` default like the CLI's (``$PIXFLEET_BROKER``, ``$PIXFLEET_BLOBS``, the
data dir). Each enqueued image is vetted (size, signature, pixels) like the CLI does, stored
content-addressed, recorded and published (:class:`~producer.submission.Submission`); results
come from the client's private reply channel or, for a task id submitted before, from its
completion record. With ``wait=False`` results go to the shared ``results`` channel (for
``uploader results``) and :meth:`TaskHandle.result` reads the completion records instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from pydantic import JsonValue

from brokers import Transport, open_transport
from brokers.names import DEFAULT_GROUP
from pixfleet.blobs import BlobStore, open_blobstore
from pixfleet.config import load
from pixfleet.declared import check_params
from pixfleet.envelope import Result, Task
from pixfleet.errors import ResultTimeout
from pixfleet.images import Limits
from pixfleet.records import TaskState, read_result
from producer.inspect import Candidate, vet, vet_file
from producer.outputs import fetch_outputs, lookup
from producer.replies import Pair, ReplyRouter
from producer.submission import Submission, SubmitOptions

#: What :meth:`Client.enqueue` takes: a path, the bytes themselves, or a vetted candidate.
Source = str | os.PathLike[str] | bytes | Candidate
#: Seconds between looks at the completion records of a client that does not wait.
RECORD_POLL = 0.5


@dataclass(frozen=True)
class TaskHandle:
    """One enqueued task: the :class:`~pixfleet.envelope.Task` and a way to its results."""

    task: Task
    client: Client

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def filename(self) -> str:
        return self.task.filename

    async def result(self, group: str | None = None, *, timeout: float = 300.0) -> Result:
        """The result of ``group`` (needed when the task targets several). Raises
        :class:`~pixfleet.errors.ResultTimeout` after ``timeout`` seconds."""
        if group is None:
            if len(self.task.groups) != 1:
                raise ValueError(f"task {self.id} targets {self.task.groups}: name the group")
            group = self.task.groups[0]
        if group not in self.task.groups:
            raise ValueError(f"task {self.id} does not target group {group!r}")
        return await self.client.wait_for(self.id, group, timeout=timeout)

    async def results(self, *, timeout: float = 300.0) -> dict[str, Result]:
        """Every group's result, by group (``timeout`` covers them all)."""
        deadline = asyncio.get_running_loop().time() + timeout
        found = {}
        for group in self.task.groups:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            found[group] = await self.client.wait_for(self.id, group, timeout=left)
        return found


class Client:
    """A connection to one broker and blob store for enqueuing and waiting (see the module
    docstring). Use it with ``async with``; one event loop, any number of concurrent waits."""

    def __init__(
        self,
        *,
        broker: str | None = None,
        blobs: str | None = None,
        groups: Sequence[str] = (DEFAULT_GROUP,),
        wait: bool = True,
        limits: Limits | None = None,
    ) -> None:
        settings = load(broker=broker, blobs=blobs).settings  # flags > env > pixfleet.toml
        self.broker_url, self.blobs_url = settings.broker_url, settings.blobs_url
        self.limits = limits or Limits()
        self._defaults = SubmitOptions(tuple(groups), wait=wait)
        self._stack = AsyncExitStack()
        self._transport: Transport | None = None
        self._store: BlobStore | None = None
        self._sub: Submission | None = None
        self._router: ReplyRouter | None = None
        self._polled: dict[Pair, Result] = {}  # results read from records (wait=False)
        self._checked: set[str] = set()  # (groups, params) checked against declared pipelines

    async def __aenter__(self) -> Self:
        store = open_blobstore(self.blobs_url)
        async with AsyncExitStack() as stack:
            transport = await stack.enter_async_context(open_transport(self.broker_url))
            sub = Submission(
                queue=transport, replies=transport, store=store, options=self._defaults
            )
            await stack.enter_async_context(sub)
            router = ReplyRouter(sub, store=store)
            stack.push_async_callback(router.stop)  # before the submission hands over
            self._stack = stack.pop_all()
        self._transport, self._store, self._sub, self._router = transport, store, sub, router
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            self._transport = self._store = self._sub = self._router = None

    # -- what it is connected to -----------------------------------------------------------

    @property
    def transport(self) -> Transport:
        """The broker connection (its ``Inspector`` role answers ``stats``/``groups``)."""
        if self._transport is None:
            raise RuntimeError("use the Client inside `async with`")
        return self._transport

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            raise RuntimeError("use the Client inside `async with`")
        return self._store

    @property
    def submission(self) -> Submission:
        if self._sub is None:
            raise RuntimeError("use the Client inside `async with`")
        return self._sub

    @property
    def tasks(self) -> tuple[Task, ...]:
        """Every task this client published, in order (what a failed batch did publish)."""
        return self.submission.tasks

    @property
    def router(self) -> ReplyRouter:
        if self._router is None:
            raise RuntimeError("use the Client inside `async with`")
        return self._router

    @property
    def pending(self) -> frozenset[Pair]:
        """(task id, group) pairs enqueued by this client whose result has not arrived."""
        return self.router.pending

    # -- enqueuing ---------------------------------------------------------------------------

    async def enqueue(
        self,
        source: Source,
        *,
        groups: Sequence[str] | None = None,
        params: Mapping[str, JsonValue] | None = None,
        ttl: float | None = None,
        task_id: str | None = None,
        filename: str | None = None,
    ) -> TaskHandle:
        """Vet, store, record and publish one image; returns once the broker confirmed it.

        Raises the typed errors of vetting (``input.*``), the store (``blob.*``) and the
        broker (``broker.*``); :class:`~pixfleet.errors.ConfigError` for bad groups or ttl,
        ``params.invalid`` for params the groups' declared pipelines refuse."""
        candidate = self._candidate(source, filename)
        options = SubmitOptions(
            tuple(groups) if groups is not None else self._defaults.groups,
            dict(params or {}),
            ttl=ttl,
        )
        await self._check_params(options)
        task = await self.submission.submit(candidate, task_id=task_id, options=options)
        if self._defaults.wait:
            self.router.start()
        return TaskHandle(task, self)

    async def enqueue_many(
        self,
        sources: Iterable[Source],
        *,
        groups: Sequence[str] | None = None,
        params: Mapping[str, JsonValue] | None = None,
        ttl: float | None = None,
    ) -> list[TaskHandle]:
        """:meth:`enqueue` each source in order; the first failure is raised (the tasks
        published before it are in :attr:`tasks`)."""
        return [await self.enqueue(s, groups=groups, params=params, ttl=ttl) for s in sources]

    async def _check_params(self, options: SubmitOptions) -> None:
        """The params against each group's declared pipeline, once per (groups, params)."""
        key = json.dumps([options.groups, options.params], sort_keys=True)
        if key not in self._checked:
            await check_params(self.store, options.groups, options.params)
            self._checked.add(key)

    def _candidate(self, source: Source, filename: str | None) -> Candidate:
        if isinstance(source, Candidate):
            return source if filename is None else replace(source, filename=filename)
        if isinstance(source, bytes):
            return vet(source, filename or "upload", limits=self.limits)
        candidate = vet_file(Path(source), self.limits)
        return candidate if filename is None else replace(candidate, filename=filename)

    # -- results -----------------------------------------------------------------------------

    async def wait_for(self, task_id: str, group: str, *, timeout: float) -> Result:
        """The result of (``task_id``, ``group``) of a task this client enqueued."""
        if not self._defaults.wait:
            return await self._poll_record(task_id, group, timeout)
        return await self.router.wait((task_id, group), timeout=timeout)

    async def results(self, *, timeout: float = math.inf) -> AsyncGenerator[Result, None]:
        """Each result of this client's tasks as it arrives (one per task and group, in
        arrival order, each once), until every task enqueued so far has all its results.
        Raises :class:`~pixfleet.errors.ResultTimeout` after ``timeout`` seconds in all."""
        if not self._defaults.wait:
            raise RuntimeError("results() needs a Client(wait=True)")
        async with aclosing(self.router.stream(timeout=timeout)) as results:
            async for result in results:
                yield result

    async def get(self, task_id: str) -> TaskState:
        """A task's recorded state and results (any task, from any client or the HTTP
        ingress). Raises :class:`TaskNotFound` for an unknown id."""
        return await lookup(self.store, task_id)

    async def fetch(self, task_id: str, to: str | os.PathLike[str]) -> list[Path]:
        """Copy every recorded output of ``task_id`` to ``to/<group>/<name>``; returns the
        paths written."""
        return await fetch_outputs(self.store, await self.get(task_id), Path(to))

    async def _poll_record(self, task_id: str, group: str, timeout: float) -> Result:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = self._polled.get((task_id, group)) or await read_result(
                self.store, task_id, group
            )
            if result is not None:
                self._polled[(task_id, group)] = result
                return result
            if asyncio.get_running_loop().time() + RECORD_POLL > deadline:
                raise ResultTimeout(
                    f"no result of task {task_id} in group {group!r} within {timeout:g} s"
                )
            await asyncio.sleep(RECORD_POLL)
