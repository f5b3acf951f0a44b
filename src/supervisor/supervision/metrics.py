"""Prometheus metrics: TorchServe's names for existing dashboards, ours for the rest.

Everything is rendered at scrape time, from three sources:

* the request path calls `Metrics.observe_request`, `Metrics.observe_batch` and
  `Metrics.count_response`; the counters and histogram buckets they feed are plain
  numbers held here;
* ``statistics()`` snapshots give the supervision metrics (model and worker states,
  incarnations, restarts, queue depth, each worker's RSS);
* psutil gives the host's CPU, memory and disk, under TorchServe's names and units
  (`supervisor.supervision.hostmetrics`).

TorchServe's ``Requests2XX`` and ``ts_*_latency_microseconds`` are counters whose
samples carry no ``_total`` suffix. The Python client cannot render such a counter,
so they are ``untyped``: the sample names and labels that dashboards query are
TorchServe's exactly. Nothing here imports trio; call everything from one thread.
"""

from __future__ import annotations

import bisect
import os
import socket
from collections.abc import Callable, Collection, Iterable, Iterator

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from supervisor.supervision.hostmetrics import SystemCollector, process_rss
from supervisor.supervision.stats import ModelStats

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "MODEL_STATES",
    "WORKER_STATES",
    "Metrics",
    "SupervisorCollector",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# The one-hot label sets; they mirror pool.ModelState and worker.WorkerState (a test checks).
MODEL_STATES = ("LOADING", "READY", "FAILED", "STOPPING", "STOPPED")
WORKER_STATES = ("STARTING", "READY", "BUSY", "STOPPING", "DEAD")

_MODEL = ("model_name", "model_version")
_WORKER = (*_MODEL, "worker_id")
_HOST = ("Level", "Hostname")
# TorchServe's per-model request counters; only the first one can be a counter here.
_TS_FAMILIES = (
    ("ts_inference_requests_total", "Total number of inference requests."),
    ("ts_inference_latency_microseconds", "Cumulative inference duration in microseconds"),
    ("ts_queue_latency_microseconds", "Cumulative queue duration in microseconds"),
)


@attrs.define
class _Histograms:
    """One histogram family: bucket counts and sums per label values."""

    name: str
    doc: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    counts: dict[tuple[str, ...], list[int]] = attrs.field(factory=dict)
    sums: dict[tuple[str, ...], float] = attrs.field(factory=dict)

    def observe(self, key: tuple[str, ...], value: float) -> None:
        # bucket i counts values <= bounds[i]; the last one is +Inf
        counts = self.counts.setdefault(key, [0] * (len(self.bounds) + 1))
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [*map(floatToGoString, self.bounds), "+Inf"]
        for key, counts in self.counts.items():
            cumulative, running = [], 0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                cumulative.append((edge, float(running)))
            family.add_metric(key, cumulative, self.sums[key])
        return family


class _RequestCollector(Collector):
    """The counters and histograms that the request path feeds."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.responses = {2: 0, 4: 0, 5: 0}
        # (model, version, hostname) -> [requests, latency µs, queue µs], as in _TS_FAMILIES
        self.ts: dict[tuple[str, ...], list[float]] = {}
        self.latency = _Histograms(
            "supervisor_request_latency_seconds",
            "Inference request latency, from arrival to answer",
            (*_MODEL, "code", "protocol"),
            LATENCY_BUCKETS,
        )
        self.queue = _Histograms(
            "supervisor_queue_latency_seconds",
            "Time requests waited in the queue for a worker",
            _MODEL,
            LATENCY_BUCKETS,
        )
        self.batch = _Histograms(
            "supervisor_batch_size", "Requests per dispatched batch", _MODEL, BATCH_SIZE_BUCKETS
        )

    def collect(self) -> Iterator[Metric]:
        """Yield TorchServe's request metrics, then our histograms."""
        for cls, count in self.responses.items():
            name = f"Requests{cls}XX"
            family = UnknownMetricFamily(name, f"Responses with a {cls}xx status", labels=_HOST)
            family.add_metric(["Host", self.hostname], count)
            yield family
        for i, (name, doc) in enumerate(_TS_FAMILIES):
            kind = CounterMetricFamily if i == 0 else UnknownMetricFamily
            per_model = kind(name, doc, labels=(*_MODEL, "hostname"))
            for key, values in self.ts.items():
                per_model.add_metric(key, values[i])
            yield per_model
        yield from (self.latency.family(), self.queue.family(), self.batch.family())


class SupervisorCollector(Collector):
    """Collects supervision metrics from ``statistics()`` snapshots at scrape time.

    Args:
        statistics: returns a snapshot of every model version (``Supervisor.statistics``).
    """

    def __init__(self, statistics: Callable[[], Iterable[ModelStats]]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric, labelled by model, version and worker."""
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        model_state = gauge(
            "supervisor_model_state", "1 for the model's current state", labels=(*_MODEL, "state")
        )
        depth = gauge("supervisor_queue_depth", "Requests waiting for a worker", labels=_MODEL)
        in_flight = gauge(
            "supervisor_inflight_requests",
            "Requests taken and not yet answered (queued or on a worker)",
            labels=_MODEL,
        )
        capacity = gauge("supervisor_queue_capacity", "Size of the request queue", labels=_MODEL)
        restarts = counter("supervisor_worker_restarts", "Restarts of the slot", labels=_WORKER)
        incarnation = gauge(
            "supervisor_worker_incarnation", "The slot's current incarnation", labels=_WORKER
        )
        worker_state = gauge(
            "supervisor_worker_state",
            "1 for the worker's current state",
            labels=(*_WORKER, "state"),
        )
        memory = gauge(
            "supervisor_worker_memory_bytes",
            "Resident memory of the worker process",
            labels=_WORKER,
        )
        for m in self._statistics():
            model = [m.config.name, m.config.version]
            _one_hot(model_state, model, MODEL_STATES, m.state)
            depth.add_metric(model, m.queue_depth)
            in_flight.add_metric(model, m.in_flight)
            capacity.add_metric(model, m.queue_capacity)
            for w in m.workers:
                worker = [*model, w.id]
                restarts.add_metric(worker, w.restarts)
                incarnation.add_metric(worker, w.incarnation)
                _one_hot(worker_state, worker, WORKER_STATES, w.state)
                rss = process_rss(w.pid)
                if rss is not None:
                    memory.add_metric(worker, rss)
        yield from (model_state, depth, in_flight, capacity, restarts, incarnation)
        yield from (worker_state, memory)


def _one_hot(
    family: GaugeMetricFamily, labels: list[str], states: tuple[str, ...], now: str
) -> None:
    for state in states if now in states else (*states, now):
        family.add_metric([*labels, state], 1.0 if state == now else 0.0)


@attrs.frozen
class _Only(Collector):
    """Keeps only the named families of another collector (TorchServe's ``?name[]=``)."""

    source: Collector
    names: frozenset[str]

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            exposed = {family.name, *(sample.name for sample in family.samples)}
            if family.type == "counter":  # named with _total even while it has no samples
                exposed.add(f"{family.name}_total")
            if not self.names.isdisjoint(exposed):
                yield family


class Metrics:
    """The server's metrics: fed by the request path, rendered at scrape time.

    Owns a private registry, so several servers can run in one process.

    Args:
        statistics: returns a snapshot of every model version (``Supervisor.statistics``).
        hostname: the ``Hostname``/``hostname`` label (default: this host's name).
        disk_path: where the disk metrics look (default: the working directory).
        system: whether to report the host's CPU, memory and disk.
    """

    def __init__(
        self,
        statistics: Callable[[], Iterable[ModelStats]],
        *,
        hostname: str | None = None,
        disk_path: str | None = None,
        system: bool = True,
    ) -> None:
        host = socket.gethostname() if hostname is None else hostname
        self._requests = _RequestCollector(host)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._requests)
        self._registry.register(SupervisorCollector(statistics))
        if system:
            self._registry.register(SystemCollector(host, disk_path or os.getcwd()))

    def observe_request(
        self,
        model: str,
        version: str,
        status: int,
        latency_s: float,
        queue_s: float | None,
        protocol: str = "rest",
    ) -> None:
        """Record one answered inference request for a model that exists.

        TorchServe's ``ts_*`` counters sum over protocols (their labels stay
        TorchServe's); the latency histogram has a ``protocol`` label.

        Args:
            model: the ``model_name`` label.
            version: the ``model_version`` label.
            status: the HTTP status of the answer.
            latency_s: seconds from arrival to answer.
            queue_s: seconds it waited for a worker; None if it never reached one.
            protocol: how the request came (``rest``, ``oip-rest``, ``kserve-v1``,
                ``grpc``, ``oip-grpc``).
        """
        r = self._requests
        totals = r.ts.setdefault((model, version, r.hostname), [0.0, 0.0, 0.0])
        totals[0] += 1
        if 200 <= status < 300:  # TorchServe sums the latencies of successes only
            totals[1] += latency_s * 1e6
            totals[2] += (queue_s or 0.0) * 1e6
        r.latency.observe((model, version, str(status), protocol), latency_s)
        if queue_s is not None:
            r.queue.observe((model, version), queue_s)

    def observe_batch(self, model: str, version: str, size: int) -> None:
        """Record one batch of ``size`` requests dispatched to a worker."""
        self._requests.batch.observe((model, version), size)

    def count_response(self, status: int) -> None:
        """Count one HTTP response, on any port, in ``Requests2XX``/``4XX``/``5XX``."""
        cls = status // 100
        if cls in self._requests.responses:
            self._requests.responses[cls] += 1

    def latency_counts(self) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
        """Each latency series' labels (model, version, code, ...) and bucket counts so far.

        Bucket ``i`` counts answers up to ``LATENCY_BUCKETS[i]``; the last one the
        rest. Read once a second by the dashboard (``supervision.series``), off the
        request path.
        """
        return [(key, tuple(counts)) for key, counts in self._requests.latency.counts.items()]

    def render(self, names: Collection[str] = ()) -> tuple[bytes, str]:
        """The exposition text and its content type.

        Args:
            names: if given, only these metrics (family or sample names).
        """
        source: Collector = _Only(self._registry, frozenset(names)) if names else self._registry
        return generate_latest(source), CONTENT_TYPE
