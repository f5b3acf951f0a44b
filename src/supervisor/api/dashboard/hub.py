"""The dashboard's hub: samples request figures and fans updates out to browsers.

``Hub.run`` reads the latency histogram once a second into a ``RequestSeries``
(nothing is added to the request path). While at least one browser is
connected it also listens to the supervisor's event log and, at most
``MAX_STATES_PER_SECOND`` times a second, sends each browser the models' state
if it changed. Each browser has a bounded memory channel: one that falls
``buffer`` messages behind is dropped (its stream ends and the page reconnects
and starts again from a snapshot); nothing is ever buffered without limit.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import orjson
import trio

from supervisor.api.dashboard.view import models_view, sse_message
from supervisor.supervision.core import Supervisor
from supervisor.supervision.events import Event
from supervisor.supervision.hostmetrics import process_rss
from supervisor.supervision.metrics import LATENCY_BUCKETS
from supervisor.supervision.series import RequestSeries

__all__ = ["MAX_STATES_PER_SECOND", "Hub"]

log = logging.getLogger("supervisor.dashboard")

MAX_STATES_PER_SECOND = 4
RECENT_EVENTS = 100
"""How many past events a snapshot carries."""

LatencyCounts = Callable[[], list[tuple[tuple[str, ...], tuple[int, ...]]]]


@attrs.define(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]


class Hub:
    """Request samples for the dashboard, and its browsers' bounded update streams.

    Args:
        sup: the supervisor whose models are shown.
        latency_counts: the latency histogram's counts (``Metrics.latency_counts``).
        interval: seconds between samples.
        buffer: messages a browser may fall behind before it is dropped.
        clock: wall-clock time (seconds since the epoch).
        stopping: set when the server starts to stop: every stream ends then, so
            that an open page does not hold the shutdown for its grace period.
        version: the server's version, shown at the top of the page.
    """

    def __init__(
        self,
        sup: Supervisor,
        latency_counts: LatencyCounts,
        *,
        interval: float = 1.0,
        buffer: int = 64,
        clock: Callable[[], float] = time.time,
        stopping: trio.Event | None = None,
        version: str = "",
    ) -> None:
        self.sup = sup
        self._server = {"version": version, "pid": os.getpid(), "startedAt": clock()}
        self._stopping = stopping if stopping is not None else trio.Event()
        self.series = RequestSeries(LATENCY_BUCKETS)
        self._counts = latency_counts
        self._interval = interval
        self._buffer = buffer
        self._clock = clock
        self._subscribers: set[_Subscriber] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._wake = trio.Event()
        self._last_state = b""
        self.dropped = 0
        """How many browsers were dropped for falling behind."""

    @property
    def stopping(self) -> bool:
        """Whether the server is stopping (no new streams)."""
        return self._stopping.is_set()

    @property
    def subscribers(self) -> int:
        """How many browsers are connected."""
        return len(self._subscribers)

    async def run(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample once a second; push state changes to the browsers. Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_streams_when_stopping)
            task_status.started(self)
            await self._sample_and_publish()

    async def _end_streams_when_stopping(self) -> None:
        await self._stopping.wait()
        for subscriber in list(self._subscribers):
            self._remove(subscriber)

    async def _sample_and_publish(self) -> None:
        next_sample = trio.current_time()
        while True:
            with trio.move_on_at(next_sample):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= next_sample:
                self.series.add(self._clock(), self._counts())
                next_sample = trio.current_time() + self._interval
            if self._subscribers:
                self._publish_state()
            await trio.sleep(1 / MAX_STATES_PER_SECOND)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """A new browser's stream: a snapshot first, then events and state changes."""
        send, receive = trio.open_memory_channel[bytes](self._buffer)
        send.send_nowait(sse_message("snapshot", self.snapshot()))
        subscriber = _Subscriber(send, receive)
        self._subscribers.add(subscriber)
        if self._unsubscribe is None:
            self._unsubscribe = self.sup.events.subscribe(self._on_event)
        try:
            yield receive
        finally:
            self._remove(subscriber)

    def snapshot(self) -> dict[str, Any]:
        """Everything a page starts from: the server, models, recent events, the kept samples."""
        models = models_view(self.sup.statistics(), self.series, process_rss)
        series = {
            f"{m['name']}/{m['version']}": [
                s.to_json() for s in self.series.samples(m["name"], m["version"])
            ]
            for m in models
        }
        events = [e.to_json() for e in self.sup.events.recent(RECENT_EVENTS)]
        return {
            "time": self._clock(),
            "server": self._server,
            "models": models,
            "events": events,
            "series": series,
        }

    def _on_event(self, event: Event) -> None:
        self._broadcast(sse_message("event", event.to_json()))
        self._wake.set()  # the state that follows an event goes out soon

    def _publish_state(self) -> None:
        models = models_view(self.sup.statistics(), self.series, process_rss)
        encoded = orjson.dumps(models)
        if encoded != self._last_state:  # nothing changed: nothing sent
            self._last_state = encoded
            self._broadcast(sse_message("state", {"time": self._clock(), "models": models}))

    def _broadcast(self, message: bytes) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.send.send_nowait(message)
            except trio.WouldBlock:
                self.dropped += 1
                log.info("a dashboard client fell %d messages behind; dropped", self._buffer)
                self._remove(subscriber)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._remove(subscriber)

    def _remove(self, subscriber: _Subscriber) -> None:
        subscriber.send.close()
        subscriber.receive.close()  # the reader's receive() raises: the stream ends now
        self._subscribers.discard(subscriber)
        if not self._subscribers and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
