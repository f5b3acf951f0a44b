"""The invariants every fault suite checks, and the figures it reports.

A ``Ledger`` sends inference requests over real HTTP and records exactly one
``Outcome`` per request it sent: the server's answer, or the transport failure
that stood in for one. ``violations`` then checks, for every request:

* it was answered: an HTTP response, never a dropped connection or a hang;
* the answer is a result (2xx) or a JSON error ``{"code", "type", "message"}``
  whose ``code`` is the status;
* it came no later than the request's own deadline (``X-Client-Timeout-Ms``)
  plus a little slack;
* an error caused by a worker fault (``WorkerDied`` 500/507, ``WorkerTimeout``
  504) names the worker and its incarnation (``w2#5``) and carries its log tail.

``descendants`` and ``still_alive`` check that no worker or grandchild outlives
its supervisor; ``figures`` gives what the reliability report publishes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import trio

DEADLINE_HEADER = "X-Client-Timeout-Ms"
SLACK = 1.0
"""Seconds an answer may come after its deadline (scheduling on 2 shared cores)."""
KEEPALIVE_EXPIRY = 2.0
"""Seconds a client keeps an idle connection: below the server's keep_alive_timeout (5 s).

A request written on a connection that the server is closing for idleness at that
moment is lost in transport (RFC 9112 section 9.3.1; a POST is not retried), so a
client must give up idle connections before the server does. httpx's own default
(5 s) equals the server's and loses one request in several thousand to that race.
"""
WORKER_NAMED = re.compile(r"\bw\d+#\d+\b")
_WORKER_FAULTS = {("InternalServerException", 500), ("InternalServerException", 507)}
_WORKER_FAULTS |= {("WorkerTimeoutException", 504)}


@dataclass(frozen=True)
class Outcome:
    """One request and its one answer.

    Attributes:
        model: the model it was sent to.
        sent: ``trio.current_time()`` when it was sent.
        done: when its answer (or its failure) arrived.
        deadline: the seconds the request allowed (its ``X-Client-Timeout-Ms``).
        status: the HTTP status, or None when no answer came.
        body: the response body.
        failure: the transport error that stood in for an answer, if any.
    """

    model: str
    sent: float
    done: float
    deadline: float
    status: int | None
    body: bytes = b""
    failure: str = ""

    @property
    def ok(self) -> bool:
        """Whether the request got a result."""
        return self.status is not None and 200 <= self.status < 300

    def error(self) -> dict[str, Any] | None:
        """The JSON error body, or None if the body is not one."""
        try:
            body = json.loads(self.body)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


@dataclass
class Ledger:
    """Sends requests to one inference endpoint and records one outcome per request.

    Args:
        client: the HTTP client (its pool bounds the connections).
        inference: the inference API's base URL.
        headers: sent with every request (an Authorization header).
    """

    client: httpx.AsyncClient
    inference: str
    headers: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0

    async def call(self, model: str, body: bytes, *, deadline: float = 10.0) -> Outcome:
        """Send one request with a deadline; record and return its outcome."""
        headers = {
            **self.headers,
            "Content-Type": "text/plain",
            DEADLINE_HEADER: str(round(deadline * 1000)),
        }
        self.sent += 1
        sent = trio.current_time()
        status, content, failure = None, b"", ""
        try:
            with trio.fail_after(deadline + 10 * SLACK):  # far past it: a hang, not a late answer
                r = await self.client.post(
                    f"{self.inference}/predictions/{model}", content=body, headers=headers
                )
            status, content = r.status_code, r.content
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            failure = type(exc).__name__
        outcome = Outcome(model, sent, trio.current_time(), deadline, status, content, failure)
        self.outcomes.append(outcome)
        return outcome

    async def drive(
        self,
        model: str,
        body: bytes,
        *,
        concurrency: int,
        stop: trio.Event,
        deadline: float = 10.0,
    ) -> None:
        """``concurrency`` clients send back to back until ``stop``; the last ones finish."""

        async def client() -> None:
            while not stop.is_set():
                await self.call(model, body, deadline=deadline)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)

    def of(self, model: str) -> list[Outcome]:
        """The outcomes of the requests sent to ``model``."""
        return [o for o in self.outcomes if o.model == model]


def violations(outcomes: Iterable[Outcome], *, slack: float = SLACK) -> list[str]:
    """Every broken invariant, one line each (an empty list when all hold)."""
    found = []
    for o in outcomes:
        found += [f"{o.model} sent at {o.sent:.3f}: {problem}" for problem in _problems(o, slack)]
    return found


def _problems(o: Outcome, slack: float) -> list[str]:
    if o.status is None:
        return [f"no answer ({o.failure})"]
    late = o.done - o.sent - o.deadline
    problems = [f"answered {late:.2f} s past its deadline"] if late > slack else []
    if o.ok:
        return problems
    body = o.error()
    if body is None or not {"code", "type", "message"} <= body.keys():
        return [*problems, f"{o.status} without a JSON error body: {o.body[:200]!r}"]
    if body["code"] != o.status:
        problems.append(f"status {o.status} but code {body['code']}")
    if (body["type"], o.status) in _WORKER_FAULTS:
        if not WORKER_NAMED.search(body["message"]):
            problems.append(f"a worker fault that names no worker#incarnation: {body['message']}")
        if not body.get("logTail"):
            problems.append(f"a worker fault without a log tail: {body['message']}")
    return problems


def by_status(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """How many outcomes had each status (``no answer`` for none), as strings."""
    counts = Counter(str(o.status) if o.status is not None else "no answer" for o in outcomes)
    return dict(sorted(counts.items()))


def longest_gap(outcomes: Iterable[Outcome], start: float, end: float) -> float:
    """The longest time within ``[start, end]`` in which no request succeeded, in seconds."""
    times = sorted(o.done for o in outcomes if o.ok and start <= o.done <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def figures(outcomes: list[Outcome], start: float, end: float) -> dict[str, Any]:
    """What the reliability report publishes for one run."""
    ok = sorted(o.done - o.sent for o in outcomes if o.ok)
    return {
        "seconds": round(end - start, 1),
        "sent": len(outcomes),
        "answered": sum(o.status is not None for o in outcomes),
        "succeeded": len(ok),
        "by_status": by_status(outcomes),
        "longest_gap_without_success_s": round(longest_gap(outcomes, start, end), 3),
        "p50_ms": round(ok[len(ok) // 2] * 1000, 1) if ok else None,
        "p99_ms": round(ok[int(len(ok) * 0.99)] * 1000, 1) if ok else None,
    }


def descendants(pid: int) -> set[tuple[int, float]]:
    """``(pid, create_time)`` of every live descendant of ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for child in children:
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def still_alive(processes: Iterable[tuple[int, float]]) -> list[int]:
    """The pids of ``processes`` that still run (the same process, not a reused pid)."""
    alive = []
    for pid, created in processes:
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def report(name: str, data: dict[str, Any]) -> None:
    """Print ``data``; also write it to ``$RELIABILITY_REPORT_DIR/<name>.json`` if set."""
    print(f"\n{name}: {json.dumps(data, sort_keys=True)}")
    directory = os.environ.get("RELIABILITY_REPORT_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
