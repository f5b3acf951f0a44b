"""The supervisor: a nursery that owns every model's pool, and its embedding API.

::

    async with open_supervisor(config) as sup:
        await sup.load_model(ModelConfig(name="m", handler="my_handler"))
        reply = await sup.predict("m", b"[1, 2]")
        async for part in sup.predict_stream("m", b"[1, 2]"):  # a streamed answer
            ...

Leaving the block stops the workers politely (bounded by ``grace``); cancelling
it tears them down at once. Either way no worker process survives.

A safe update loads a new version beside the serving one, sends it its canaries,
and only then switches the default (``update``, ``promote``); a version being
unloaded first drains (``unload``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor import limits
from supervisor.config import ModelConfig, ServerConfig
from supervisor.errors import (
    CanaryFailed,
    DeadlineExceeded,
    InvalidModel,
    InvalidRequest,
    SupervisorError,
)
from supervisor.models.archive import remove_paths
from supervisor.models.canary import Canary, CanaryResult
from supervisor.supervision.batching import Job
from supervisor.supervision.devices import device_for, visible_gpus
from supervisor.supervision.events import EventLog
from supervisor.supervision.pool import ModelState, Pool
from supervisor.supervision.process import Launcher, ProcessLauncher
from supervisor.supervision.registry import Registry
from supervisor.supervision.rollout import (
    UpdateResult,
    archive_canaries,
    failure_outcome,
    run_canaries,
)
from supervisor.supervision.stats import ModelStats

__all__ = ["Supervisor", "open_supervisor"]

log = logging.getLogger("supervisor")


class Supervisor:
    """Owns the pools of all loaded models.

    Args:
        launcher: starts worker processes (a fake one in deterministic tests).
        rng: randomness for restart jitter.
        max_workers_total: the most workers on the machine, all models together.
    """

    def __init__(
        self,
        launcher: Launcher | None = None,
        rng: random.Random | None = None,
        *,
        max_workers_total: int = limits.DEFAULT_MAX_WORKERS_TOTAL,
    ) -> None:
        self.registry = Registry()
        self.events = EventLog()
        """What happened to the models and workers (the dashboard's timeline)."""
        self.max_workers_total = max_workers_total
        self._launcher = launcher or ProcessLauncher()
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._ended: dict[Pool, trio.Event] = {}
        self._switching: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self.on_batch: Callable[[str, str, int], None] | None = None
        """Called with model, version and size for every batch dispatched (metrics)."""
        self.on_change: Callable[[], Awaitable[None]] | None = None
        """Awaited after every change of the models (load, unload, scale, default
        switch) before the call that made it returns: a config snapshot is written
        here, so that a change acknowledged to a client is on disk."""

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; every pool lives in this task's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def load_model(
        self,
        config: ModelConfig,
        *,
        wait: bool = True,
        owned: Sequence[Path] = (),
        canaries: Sequence[Canary] | None = None,
    ) -> ModelStats:
        """Start a model's workers.

        Args:
            config: the model version to load.
            wait: return only when its workers are ready.
            owned: files and directories made for this model (an unpacked archive,
                a downloaded one), removed when it is unloaded or the supervisor stops.
            canaries: what ``check`` and ``promote`` send to this version; None reads
                ``canaries.json`` from the model directory (none if it has no such file).

        Raises:
            ModelConflict: that name and version are already loaded.
            InvalidModel: the model directory is missing, or its ``canaries.json``
                is not valid.
            InvalidRequest: its workers and the other models' are more than
                ``max_workers_total``.
            WorkerStartFailed: with ``wait``, the workers could not load the model
                (the model stays registered, FAILED, so that describe explains it).
        """
        assert self._nursery is not None, "the supervisor is not running"
        why = limits.check_total(
            "workers", config.workers, self.worker_count(), self.max_workers_total
        )
        if why is not None:
            raise InvalidRequest(f"model {config.name}: {why}")
        gpus = await trio.to_thread.run_sync(visible_gpus)
        try:
            device_for(0, config.handler_config, gpus)
        except ValueError as exc:
            raise InvalidRequest(f"model {config.name}: {exc}") from None
        await _check_model_dir(config)
        found = tuple(canaries) if canaries is not None else await archive_canaries(config)
        pool = Pool(
            config,
            self._launcher,
            random.Random(self._rng.random()),
            gpus,
            machine_workers=self.worker_count,
            max_workers_total=self.max_workers_total,
            events=self.events,
        )
        pool.on_batch = self._batch_observer(config)
        self.registry.add(pool, found)
        await self._nursery.start(self._run_pool, pool, tuple(owned))
        log.info("loading model %s with %d worker(s)", pool.label, config.workers)
        await self.changed()
        if wait:
            await pool.wait_ready()
        return pool.statistics(is_default=self.registry.is_default(pool))

    def start_task(self, async_fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``async_fn`` in the supervisor's nursery: it outlives the caller's task.

        A management call that answers before its work is done (a 202) hands that
        work here. ``async_fn`` must handle its own expected failures.
        """
        assert self._nursery is not None, "the supervisor is not running"
        self._nursery.start_soon(async_fn)

    def _batch_observer(self, config: ModelConfig) -> Callable[[int], None]:
        def observe(size: int) -> None:
            if self.on_batch is not None:
                self.on_batch(config.name, config.version, size)

        return observe

    async def _run_pool(
        self, pool: Pool, owned: tuple[Path, ...], *, task_status: trio.TaskStatus[Pool]
    ) -> None:
        ended = self._ended[pool] = trio.Event()
        try:
            await pool.run(task_status=task_status)
        finally:
            if pool.state is not ModelState.FAILED:
                self.registry.remove(pool)
            if owned:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_paths, owned)
            del self._ended[pool]
            ended.set()

    def pool(self, name: str, version: str | None = None) -> Pool:
        """The pool serving ``name`` (raises ModelNotFound/ModelVersionNotFound)."""
        return self.registry.get(name, version)

    async def predict(
        self,
        name: str,
        body: bytes,
        *,
        version: str | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> ReplyItem:
        """Run one request with a raw body through the model and return its reply.

        A streamed answer is returned whole, as an HTTP client receives it: the
        status, content type and headers of its first part, and every part's body
        joined. ``predict_stream`` gives the parts one by one.

        Raises:
            SupervisorError: the model is unknown or unavailable, its worker failed,
                or a streamed answer broke off midway.
        """
        job = self.submit(_raw_item(body, content_type, headers), name, version)
        first = await job.wait()
        if not job.streamed:
            return first
        bodies = [first.body]
        while (part := await job.next_part()) is not None:
            bodies.append(part.body)
        return dataclasses.replace(first, body=b"".join(bodies))

    async def predict_stream(
        self,
        name: str,
        body: bytes,
        *,
        version: str | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[ReplyItem]:
        """Run one request and yield its answer part by part, as the handler streams it.

        A handler that does not stream gives one item, its reply. Each part comes
        within ``response_timeout`` of the one before. Leaving the loop early drops
        the rest of the answer; wrap the call in ``contextlib.aclosing`` so that
        happens at once::

            async with aclosing(sup.predict_stream("llm", b"prompt")) as parts:
                async for part in parts:
                    print(part.body.decode(), end="")

        Raises:
            SupervisorError: as ``predict``; a failure midway is raised after the
                parts that came before it.
        """
        job = self.submit(_raw_item(body, content_type, headers), name, version)
        try:
            part: ReplyItem | None = await job.wait()
            while part is not None:
                yield part
                part = await job.next_part()
        finally:
            job.fail(DeadlineExceeded("the caller stopped reading the streamed answer"))

    def submit(
        self, item: InferItem, name: str, version: str | None = None, deadline: float = math.inf
    ) -> Job:
        """Queue a request for ``name``; await ``.wait()`` on the returned job.

        Args:
            item: the request.
            name: the model.
            version: the model version (the default one if None).
            deadline: ``trio.current_time()`` after which the answer is not wanted.
        """
        return self.registry.get(name, version).submit(item, deadline)

    async def describe_handler(self, name: str, version: str | None = None) -> Any:
        """Ask a live worker's handler to describe itself (``describe_handle()``).

        Returns:
            What the handler returned, parsed as JSON ({} if it is not JSON).
        """
        item = InferItem(uuid.uuid4().hex, {"describe": "True"}, {"body": ("", b"")})
        reply = await self.submit(item, name, version).wait()
        if not reply.ok:
            return {}
        try:
            return orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return {}

    async def scale(
        self, name: str, workers: int, *, version: str | None = None, wait: bool = True
    ) -> None:
        """Run ``workers`` workers for the model; with ``wait``, until they are ready.

        Raises:
            InvalidRequest: ``workers`` is beyond the limits (see ``Pool.check_scale``).
        """
        pool = self.registry.get(name, version)
        pool.scale(workers)
        await self.changed()
        if wait:
            await pool.wait_ready(workers)

    async def unload(self, name: str, *, version: str | None = None, grace: float = 10.0) -> None:
        """Drain a model version, then stop it.

        New requests for it get 503 at once. Queued and in-flight ones are served for
        up to ``grace`` seconds; whatever is still queued then gets 503, the batch in
        flight finishes, and the workers stop. ``grace=0`` skips the drain.
        """
        pool = self.registry.get(name, version)
        ended = self._ended.get(pool)
        try:
            if grace > 0:
                pool.close_intake()
                with trio.move_on_after(grace):
                    await pool.wait_drained()
        finally:
            pool.stop()
        if ended is not None:
            await ended.wait()  # workers gone and the model's files removed
        self.registry.remove(pool)
        await self.changed()

    async def changed(self) -> None:
        """Await ``on_change``: the models changed (call it after changing a pool directly).

        Shielded: the change is made, so it is recorded even if the caller is cancelled.
        """
        if self.on_change is not None:
            with trio.CancelScope(shield=True):
                await self.on_change()

    def restorable(self) -> tuple[ModelStats, ...]:
        """Every version as a restart should bring it back, for config snapshots.

        A version being unloaded is in it until ``unload`` returns, and
        ``config.workers`` is the number of workers each one runs now.
        """
        return tuple(self._restorable(p) for p in self.registry)

    def _restorable(self, pool: Pool) -> ModelStats:
        stats = pool.statistics(is_default=self.registry.is_default(pool))
        return attrs.evolve(stats, config=attrs.evolve(stats.config, workers=_target(pool)))

    def worker_count(self) -> int:
        """How many workers run (or are starting) on this machine, all models together."""
        return sum(len(pool.active_slots()) for pool in self.registry)

    def set_default(self, name: str, version: str) -> None:
        """Route requests without a version to ``version`` of ``name``."""
        self.registry.set_default(name, version)

    async def check(
        self, name: str, version: str | None = None, canaries: Sequence[Canary] | None = None
    ) -> tuple[CanaryResult, ...]:
        """Send canaries to one version of ``name`` and judge the answers.

        Args:
            name: the model.
            version: the version to check (the default one if None).
            canaries: what to send; None sends the version's own (see ``load_model``).

        Raises:
            CanaryFailed: a canary got a wrong answer (with its report and log tail).
        """
        pool = self.registry.get(name, version)
        chosen = self.registry.canaries(pool) if canaries is None else tuple(canaries)
        return await run_canaries(pool, chosen)

    async def promote(
        self,
        name: str,
        version: str,
        *,
        canaries: Sequence[Canary] | None = None,
        retire_old: bool = False,
        grace: float = 10.0,
    ) -> UpdateResult:
        """Make ``version`` the default of ``name`` once it passes its canaries.

        The switch is atomic: a request for the default version is queued for the old
        version or for the new one, and each is served. With ``retire_old``, the old
        default is then drained (up to ``grace`` seconds) and unloaded.

        Raises:
            CanaryFailed: a canary failed; the default is unchanged.
            ModelNotFound, ModelVersionNotFound: no such model or version.
        """
        return await self._switch(
            name, version, canaries, retire_old, grace, loaded_here=False, make_default=True
        )

    async def update(
        self,
        config: ModelConfig,
        *,
        owned: Sequence[Path] = (),
        canaries: Sequence[Canary] | None = None,
        set_default: bool = True,
        retire_old: bool = False,
        grace: float = 10.0,
    ) -> UpdateResult:
        """Load a new version beside the serving one and make it the default if it is sound.

        The new version's workers must start and its canaries (``canaries``, else its
        ``canaries.json``) must pass; otherwise it is unloaded again and the default
        stays. With ``set_default=False`` it is only loaded and checked. The other
        arguments are as for ``load_model`` and ``promote``.

        Raises:
            ModelConflict: that version is already loaded (nothing is changed).
            WorkerStartFailed: the new workers did not start (rolled back).
            CanaryFailed: a canary failed (rolled back).
        """
        await self.load_model(config, wait=False, owned=owned, canaries=canaries)
        try:
            await self.pool(config.name, config.version).wait_ready()
        except SupervisorError as exc:
            self._rolled_back(config.name, config.version, exc.message)
            await self.unload(config.name, version=config.version, grace=grace)
            raise
        return await self._switch(
            config.name,
            config.version,
            None,
            retire_old,
            grace,
            loaded_here=True,
            make_default=set_default,
        )

    async def _switch(
        self,
        name: str,
        version: str,
        canaries: Sequence[Canary] | None,
        retire_old: bool,
        grace: float,
        *,
        loaded_here: bool,
        make_default: bool,
    ) -> UpdateResult:
        async with self._switching[name]:
            pool = self.registry.get(name, version)
            chosen = self.registry.canaries(pool) if canaries is None else tuple(canaries)
            try:
                outcome = failure_outcome(pool, self.registry.get(name), loaded_here=loaded_here)
                results = await run_canaries(pool, chosen, outcome=outcome)
            except CanaryFailed as exc:
                self.events.record("canary.failed", name, version, exc.message)
                if loaded_here:
                    self._rolled_back(name, version, "a canary failed")
                    await self.unload(name, version=version, grace=grace)
                raise
            old = self.registry.get(name)
            if not make_default:
                return UpdateResult(name, old.config.version, None, results)
            self.registry.set_default(name, version)  # no await since the lookup: atomic
            log.info("model %s: default version %s (was %s)", name, version, old.config.version)
            message = f"default version {version} (was {old.config.version})"
            self.events.record("update.switched", name, version, message)
            await self.changed()
            retire = retire_old and old is not pool
            if retire:
                await self.unload(name, version=old.config.version, grace=grace)
        previous = None if old is pool else old.config.version
        return UpdateResult(name, version, previous, results, retire)

    def _rolled_back(self, name: str, version: str, why: str) -> None:
        message = f"version {version} rolled back (unregistered): {why}"
        self.events.record("update.rolled_back", name, version, message)

    def statistics(self) -> tuple[ModelStats, ...]:
        """Snapshots of every model version."""
        return tuple(p.statistics(is_default=self.registry.is_default(p)) for p in self.registry)

    def describe(self, name: str, version: str | None = None) -> list[ModelStats]:
        """Snapshots of ``name``: one version, or all of them if ``version == "all"``."""
        pools = (
            self.registry.versions(name) if version == "all" else [self.registry.get(name, version)]
        )
        return [p.statistics(is_default=self.registry.is_default(p)) for p in pools]

    def unhealthy_models(self) -> list[str]:
        """The models whose default version is FAILED."""
        return [
            p.label
            for p in self.registry
            if p.state is ModelState.FAILED and self.registry.is_default(p)
        ]

    async def stop_all(self) -> None:
        """Stop every model politely and wait for the workers to exit."""
        pools = list(self.registry)
        for pool in pools:
            pool.stop()
        for pool in pools:
            await pool.wait_stopped()


async def _check_model_dir(config: ModelConfig) -> None:
    """Refuse a model whose directory is missing before any worker is spawned for it.

    Raises:
        InvalidModel: ``config.model_dir`` is set and is not a directory.
    """
    path = trio.Path(config.model_dir)
    if not config.model_dir or await path.is_dir():
        return
    what = "is not a directory" if await path.exists() else "does not exist"
    raise InvalidModel(f"model {config.name}: the model directory {config.model_dir} {what}")


def _target(pool: Pool) -> int:
    """The workers a pool is meant to run: its active slots while it runs, else its config's."""
    running = (ModelState.LOADING, ModelState.READY)
    return len(pool.active_slots()) if pool.state in running else pool.config.workers


def _raw_item(body: bytes, content_type: str, headers: Mapping[str, str] | None) -> InferItem:
    return InferItem(uuid.uuid4().hex, dict(headers or {}), {"body": (content_type, body)})


@asynccontextmanager
async def open_supervisor(
    config: ServerConfig | None = None,
    *,
    wait: bool = True,
    grace: float = 10.0,
    launcher: Launcher | None = None,
    max_workers_total: int | None = None,
) -> AsyncIterator[Supervisor]:
    """Run a supervisor for the duration of the block.

    Args:
        config: models to load at once (its ``models``); None loads nothing.
        wait: wait for those models' workers to be ready before entering.
        grace: on a normal exit, seconds the workers get to stop politely.
        launcher: starts worker processes (tests pass a fake).
        max_workers_total: the most workers on the machine (default: the config's,
            else ``limits.DEFAULT_MAX_WORKERS_TOTAL``).

    Yields:
        The running supervisor.
    """
    async with trio.open_nursery() as nursery:
        if max_workers_total is None:
            max_workers_total = (
                config.max_workers_total if config else limits.DEFAULT_MAX_WORKERS_TOTAL
            )
        supervisor = Supervisor(launcher, max_workers_total=max_workers_total)
        sup: Supervisor = await nursery.start(supervisor.run)
        try:
            for model in config.models if config else ():
                await sup.load_model(model, wait=False)
            if wait:
                for pool in list(sup.registry):
                    await pool.wait_ready()
            yield sup
            with trio.move_on_after(grace):
                await sup.stop_all()
        finally:
            nursery.cancel_scope.cancel()
