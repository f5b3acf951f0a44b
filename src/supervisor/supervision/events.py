"""A bounded log of what happened to the models and their workers, for the dashboard.

The supervision code records an ``Event`` where a worker starts, dies or is
replaced, where a model becomes FAILED, and where an update switches the default
or is rolled back. The log keeps the newest ``capacity`` events and calls its
subscribers synchronously with each new one; a subscriber must not block (the
dashboard's puts it on a bounded channel and drops a reader that falls behind).
With no subscriber, recording is an append to a ``deque``. Nothing here imports trio.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import attrs

from supervisor.supervision.stats import ExitRecord

__all__ = ["EVENT_KINDS", "Event", "EventLog", "exit_fields"]

EVENT_KINDS = (
    "worker.started",
    "worker.replaced",
    "worker.died",
    "worker.stopped",
    "model.failed",
    "update.switched",
    "update.rolled_back",
    "canary.failed",
)
"""Every ``Event.kind`` there is."""


@attrs.frozen
class Event:
    """One thing that happened.

    Attributes:
        seq: 1 for the first event of the log, then 2, 3, ... (no gaps).
        time: wall-clock time (seconds since the epoch).
        kind: one of ``EVENT_KINDS``.
        model: the model's name.
        version: the model version.
        message: one line for people.
        worker: the worker's label (``w1#2``: slot and incarnation), if it is about one.
        fields: details (``pid``, ``signal``, ``exitCode``, ``reason``...), JSON-ready.
    """

    seq: int
    time: float
    kind: str
    model: str
    version: str
    message: str
    worker: str | None = None
    fields: tuple[tuple[str, object], ...] = ()

    def to_json(self) -> dict[str, object]:
        """The event as a JSON-ready dict."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "worker": self.worker,
            "message": self.message,
            **dict(self.fields),
        }


Subscriber = Callable[[Event], None]


class EventLog:
    """The newest ``capacity`` events, and who wants to hear of new ones.

    Args:
        capacity: how many events are kept.
        clock: wall-clock time (seconds since the epoch); tests pass their own.
    """

    def __init__(self, capacity: int = 200, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._subscribers: list[Subscriber] = []
        self._clock = clock
        self._seq = 0

    def record(
        self,
        kind: str,
        model: str,
        version: str,
        message: str,
        *,
        worker: str | None = None,
        **fields: object,
    ) -> Event:
        """Keep a new event (dropping the oldest when full) and tell the subscribers."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        self._seq += 1
        event = Event(
            self._seq, self._clock(), kind, model, version, message, worker, tuple(fields.items())
        )
        self._events.append(event)
        for subscriber in list(self._subscribers):
            subscriber(event)
        return event

    def recent(self, count: int | None = None) -> tuple[Event, ...]:
        """The newest ``count`` events (all kept ones if None), oldest first."""
        events = tuple(self._events)
        return events if count is None else events[max(0, len(events) - count) :]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every new event; returns the way to stop."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def subscribers(self) -> int:
        """How many subscribers there are."""
        return len(self._subscribers)


def exit_fields(record: ExitRecord) -> dict[str, object]:
    """An exit record's details for an event: pid, reason, exit code or signal, uptime."""
    code = record.returncode if record.returncode is not None and record.returncode >= 0 else None
    return {
        "pid": record.pid,
        "reason": record.reason,
        "exitCode": code,
        "signal": record.signal,
        "uptime": round(record.uptime, 3),
    }
