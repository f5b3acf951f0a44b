"""The inference API (port 8080) in Quart: ``/ping``, and the prediction routes' renderer.

The prediction routes (``/predictions/...`` and ``/explanations/...``) hand the
request to ``supervisor.api.predict`` and render its outcome: an ``Answer`` as a
response, a ``Stream`` as a chunked body (``supervisor.api.streaming``). What is
left here is Quart's part: parsing form bodies into fields (``_form``).
"""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from supervisor.api.common import RecordedResponse, json_response, routes_check_token, to_response
from supervisor.api.kservev1 import VERBS, KServeV1, model_list
from supervisor.api.oip import model_ready
from supervisor.api.predict import FIELD_TYPE, FORM_TYPES, Form, Predictor, Stream
from supervisor.api.streaming import quiet_aborted_streams, streamed_response
from supervisor.supervision.core import Supervisor

__all__ = ["add_inference_routes", "add_kserve_v1_routes"]

_PREFIXES = ("predictions", "explanations")


def add_inference_routes(app: QuartTrio, sup: Supervisor, predictor: Predictor) -> None:
    """Add ``/ping``, ``/predictions/...`` and ``/explanations/...`` to ``app``.

    The prediction routes check the token themselves (``predictor``'s), so
    ``require_token`` lets them through.
    """
    quiet_aborted_streams()

    @app.route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        failed = sup.unhealthy_models()
        if failed:
            return json_response({"status": "Unhealthy", "failedModels": failed}, 500)
        return json_response({"status": "Healthy"})

    for prefix in _PREFIXES:
        _add_routes(app, prefix, predictor)
    routes_check_token(app, [f"{prefix}_route" for prefix in _PREFIXES])


def _add_routes(app: QuartTrio, prefix: str, predictor: Predictor) -> None:
    methods = ["POST", "PUT"]

    async def route(model: str, version: str | None = None, extra: str = "") -> Response:
        form = await _form() if request.mimetype in FORM_TYPES else None
        body = b"" if form is not None else await request.get_data(True, False, False)
        client = (request.scope.get("client") or ["<local>"])[0]
        headers = request.scope["headers"]
        outcome = await predictor.predict(
            (prefix, model, version, extra), headers, body, client, form=form
        )
        if isinstance(outcome, Stream):
            return streamed_response(outcome)
        return to_response(outcome, RecordedResponse)

    route.__name__ = f"{prefix}_route"
    app.add_url_rule(f"/{prefix}/<model>", view_func=route, methods=methods)
    app.add_url_rule(f"/{prefix}/<model>/<version>", view_func=route, methods=methods)
    app.add_url_rule(f"/{prefix}/<model>/<version>/<path:extra>", view_func=route, methods=methods)


def add_kserve_v1_routes(app: QuartTrio, sup: Supervisor, kserve: KServeV1) -> None:
    """Add KServe v1's ``/v1/models``, ``/v1/models/{name}`` and ``:predict``/``:explain``.

    ``GET /`` is KServe v1's liveness probe (``{"status": "alive"}``, no token,
    as ``/ping``); the other GET routes need the inference key; the predict
    routes check it themselves, in the pipeline (``supervisor.api.kservev1``).
    """

    async def live() -> Response:
        return json_response({"status": "alive"})  # answering at all is being live

    async def models() -> Response:
        return json_response(model_list(sup.statistics()))

    async def model(name: str) -> Response:
        status, body = model_ready(sup.statistics(), name, None)
        return json_response(body, status)

    app.add_url_rule("/", "kserve_v1_live", live)
    app.add_url_rule("/v1/models", "kserve_v1_models", models)
    app.add_url_rule("/v1/models/<name>", "kserve_v1_model", model)
    for verb in VERBS:

        async def infer(name: str, verb: str = verb) -> Response:
            body = await request.get_data(True, False, False)
            client = (request.scope.get("client") or ["<local>"])[0]
            answer = await kserve.answer((name, verb), request.scope["headers"], body, client)
            return to_response(answer, RecordedResponse)

        endpoint = f"kserve_v1_{verb}"
        app.add_url_rule(f"/v1/models/<name>:{verb}", endpoint, infer, methods=["POST"])
        routes_check_token(app, [endpoint])


async def _form() -> Form:
    """A form body's fields and files, each a parameter of its own, as TorchServe passes them.

    A field goes without a content type (``FIELD_TYPE``), so the handler gets its
    bytes; an uploaded file keeps its own type (``application/octet-stream`` when
    it has none), so it is decoded as a body of that type would be. A name given
    more than once keeps its last value, a file's over a field's.
    """
    form = await request.form
    files = await request.files
    params = {name: (FIELD_TYPE, value.encode()) for name, value in form.items(multi=True)}
    for name, upload in files.items(multi=True):
        params[name] = (upload.content_type or "application/octet-stream", upload.read())
    return params
