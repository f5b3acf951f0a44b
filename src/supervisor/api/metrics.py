"""The metrics API (port 8082): Prometheus text rendered from snapshots."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from quart import Response
from quart_trio import QuartTrio

from supervisor.api.common import make_app
from supervisor.core import Supervisor
from supervisor.pool import ModelState

__all__ = ["SupervisorCollector", "metrics_app"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SupervisorCollector(Collector):
    """Collects supervision metrics from ``Supervisor.statistics()`` at scrape time."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric, labelled by model, version and worker."""
        labels = ["model_name", "model_version"]
        requests = CounterMetricFamily("ts_inference_requests", "Requests accepted", labels=labels)
        state = GaugeMetricFamily(
            "supervisor_model_state", "1 for the model's current state", labels=[*labels, "state"]
        )
        queue = GaugeMetricFamily("supervisor_queue_depth", "Requests waiting", labels=labels)
        wl = [*labels, "worker_id"]
        restarts = CounterMetricFamily("supervisor_worker_restarts", "Worker restarts", labels=wl)
        incarnation = GaugeMetricFamily(
            "supervisor_worker_incarnation", "Current incarnation", labels=wl
        )
        for m in self._sup.statistics():
            lv = [m.config.name, m.config.version]
            requests.add_metric(lv, m.requests)
            for s in ModelState:
                state.add_metric([*lv, s.value], 1.0 if m.state == s.value else 0.0)
            queue.add_metric(lv, m.queue_depth)
            for w in m.workers:
                restarts.add_metric([*lv, w.id], w.restarts)
                incarnation.add_metric([*lv, w.id], w.incarnation)
        yield from (requests, state, queue, restarts, incarnation)


def metrics_app(sup: Supervisor) -> QuartTrio:
    """Build the metrics app over a running supervisor."""
    app = make_app("trio-supervisor-metrics")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(sup))

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE)

    return app
