"""The metrics API (port 8082): ``GET /metrics`` in Prometheus text format.

Like TorchServe, ``?name[]=a&name[]=b`` keeps only the named metrics, and the
endpoint never asks for a token. What is rendered is `supervisor.supervision.metrics.Metrics`.
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from supervisor.api.common import make_app
from supervisor.supervision.metrics import Metrics

__all__ = ["metrics_app"]


def metrics_app(
    metrics: Metrics, *, max_request_size: int = 6553500, read_timeout: float = 30.0
) -> QuartTrio:
    """Build the metrics app; its own responses count in ``Requests2XX`` and kin too."""
    app = make_app(
        "trio-supervisor-metrics",
        max_request_size=max_request_size,
        read_timeout=read_timeout,
        on_response=metrics.count_response,
    )

    @app.route("/metrics", methods=["GET"])
    async def scrape() -> Response:
        body, content_type = metrics.render(request.args.getlist("name[]"))
        return Response(body, content_type=content_type)

    return app
