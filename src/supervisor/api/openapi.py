"""The OpenAPI 3.1 documents each port serves on ``OPTIONS /`` and ``/api-description``.

Each port describes only its own routes. The documents are plain dicts built by
small helpers (schemas, parameters, error responses), so that each operation reads
as a few lines. OpenAPI 3.1 is used because its schemas are JSON Schema 2020-12:
nullable fields (``lastExit``, ``exitCode``) are written ``type: [..., "null"]``.

Security follows the server: predictions and explanations need the inference key,
every management route needs the management key (``/token`` needs the API key),
and ``/ping``, ``/metrics`` and the API description need none. The Open Inference
Protocol's ``/v2`` routes need the inference key, except its two health probes.
"""

from __future__ import annotations

import copy
from typing import Any

from supervisor.api.oipcodec import DATATYPES

__all__ = ["KINDS", "OPENAPI_VERSION", "openapi_document"]

Json = dict[str, Any]

KINDS = ("inference", "management", "metrics")
"""The ports that have a document."""

OPENAPI_VERSION = "3.1.0"

_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ERROR_TEXT = {
    400: "The request is invalid (a bad parameter or body), or the handler rejected it.",
    401: "Token authorization failed: `Authorization: Bearer <key>` is missing or wrong.",
    403: "The request is forbidden.",
    404: "No such model, model version or route.",
    405: "Method not allowed here, or the model API is disabled (`enable_model_api`).",
    409: "A model with that name and version is already registered.",
    413: "The request body is larger than `max_request_size`.",
    422: "A canary got a wrong answer: the default version was not switched (see `canary` "
    "and `logTail`).",
    500: "A worker died while serving the request or workers failed to start; "
    "or an unexpected server error.",
    503: "The model is FAILED, stopping or unloaded, has no worker or a full queue, "
    "or the handler raised an exception.",
    504: "The worker did not answer within `response_timeout`; it is being replaced.",
    507: "Out of resources: the worker was killed by a SIGKILL the supervisor did not send "
    "(e.g. the OOM killer), or the handler ran out of memory.",
}

_TAGS = {
    "inference": "Health checks, predictions, explanations and OIP v2 metadata.",
    "management": "Registering, describing, scaling and unregistering models.",
    "metrics": "Prometheus metrics.",
    "description": "This API description.",
}

_SECURITY_SCHEMES = {
    "inference": {"inferenceToken": "The inference key from the key file."},
    "management": {
        "managementToken": "The management key from the key file.",
        "apiToken": "The API key from the key file; it only rotates the other two keys.",
    },
    "metrics": {},
}


# -- schema helpers -----------------------------------------------------------------------


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _t(kind: str, description: str = "", **extra: Any) -> Json:
    schema: Json = {"type": kind, **extra}
    if description:
        schema["description"] = description
    return schema


def _array(items: Json, description: str = "") -> Json:
    return _t("array", description, items=items)


def _nullable(schema: Json) -> Json:
    """The schema, or ``null``."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _object(required: tuple[str, ...] | str = (), description: str = "", **props: Json) -> Json:
    """An object with ``props``; ``required="all"`` requires every one of them."""
    names = tuple(props) if required == "all" else required
    schema = _t("object", description, properties=props)
    if names:
        schema["required"] = list(names)
    return schema


def _log_tail(what: str = "the worker") -> Json:
    return _array(_t("string"), f"The last log lines of {what}.")


# -- parameters, bodies and responses -----------------------------------------------------


def _param(name: str, where: str, schema: Json, description: str, required: bool = False) -> Json:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _response(description: str, schema: Json | None = None) -> Json:
    response: Json = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    return response


def _status(description: str) -> Json:
    """A success answered with ``{"status": "..."}``."""
    return _response(description, _ref("Status"))


def _error(code: int, description: str = "") -> Json:
    response = _response(description or _ERROR_TEXT[code], _ref("Error"))
    if code == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying, when the server can tell.",
                "schema": _t("integer", minimum=0),
            }
        }
    return response


def _errors(*codes: int) -> Json:
    """The standard error response for each of ``codes``."""
    return {str(code): _error(code) for code in codes}


def _op(tag: str, op_id: str, summary: str, responses: Json, **fields: Any) -> Json:
    """An operation; ``token`` names the security scheme it needs (and adds its 401)."""
    token = fields.pop("token", None)
    op: Json = {"tags": [tag], "operationId": op_id, "summary": summary, **fields}
    op["responses"] = dict(responses)
    if token:
        op["security"] = [{token: []}]
        op["responses"]["401"] = _error(401)
    return op


def _description_paths() -> Json:
    """``OPTIONS /`` and ``GET|OPTIONS /api-description``: this document, no token."""
    ok = {"200": _response("This OpenAPI document.", _t("object"))}

    def op(op_id: str) -> Json:
        return _op("description", op_id, "The OpenAPI description of this port.", ok)

    return {
        "/": {"options": op("describeApiRoot")},
        "/api-description": {
            "get": op("getApiDescription"),
            "options": op("optionsApiDescription"),
        },
    }


# -- inference ------------------------------------------------------------------------------

_MODEL_NAME = _param("model_name", "path", _t("string"), "The model's name.")

_INFER_BODY = {
    "description": "Any content. A form body becomes one handler parameter per field or file; "
    "any other body becomes the handler's `body` parameter, decoded by its Content-Type "
    "(JSON is parsed, `text/*` becomes `str`, anything else stays bytes). Every request "
    "header reaches the handler.",
    "required": False,
    "content": {
        "multipart/form-data": {
            "schema": _t("object", additionalProperties=_t("string", format="binary"))
        },
        "application/x-www-form-urlencoded": {
            "schema": _t("object", additionalProperties=_t("string"))
        },
        "application/json": {"schema": {}},
        "*/*": {"schema": _t("string", format="binary")},
    },
}

_INFER_OK = {
    "description": "The handler's result. Its status (200 unless the handler set another), "
    "Content-Type and headers come from the handler: `bytes` are "
    "`application/octet-stream`, `str` is `text/plain; charset=utf-8`, anything else JSON. "
    "A handler that streams its answer gives a chunked body, one chunk per part, with the "
    "first part's status and headers (`ts_stream_next: true`); a stream that breaks off "
    "midway ends without the final chunk.",
    "content": {"*/*": {"schema": {}}},
}


def _inference_paths() -> Json:
    health = _ref("Health")
    ping = {
        "200": _response("Every model's default version is healthy.", health),
        "500": _response("Some model's default version is FAILED (see `failedModels`).", health),
    }
    paths: Json = {
        "/ping": {
            method: _op("inference", f"ping{method.title()}", "Health check.", ping)
            for method in ("get", "post")
        }
    }
    for action in ("predictions", "explanations"):
        paths.update(_infer_paths(action))
    paths.update(_oip_paths())
    paths.update(_kserve_v1_paths())
    return paths


def _oip_paths() -> Json:
    """Open Inference Protocol v2 health and metadata; the probes need no token."""
    oip_error = _response(_ERROR_TEXT[404], _ref("OipError"))
    ready = _ref("OipReady")

    def op(op_id: str, summary: str, responses: Json, token: str | None = None) -> Json:
        return _op("inference", op_id, summary, responses, token=token)

    def health(what: str) -> Json:
        schema = _ref(f"Oip{what.title()}")
        return op(
            f"oip{what.title()}",
            f"OIP server {what} probe.",
            {
                "200": _response(f"The server is {what}.", schema),
                "503": _response(f"The server is not {what}.", schema),
            },
        )

    def model_ops(suffix: str) -> tuple[Json, Json]:
        meta = op(
            f"oipModelMetadata{suffix}",
            "OIP model metadata (inputs and outputs as declared, else empty).",
            {"200": _response("The model's metadata.", _ref("OipModelMetadata")), "404": oip_error},
            "inferenceToken",
        )
        answers = {
            "200": _response("The model version is READY.", ready),
            "503": _response("The model version is loading or FAILED.", ready),
            "404": oip_error,
        }
        return meta, op(f"oipModelReady{suffix}", "OIP model readiness.", answers, "inferenceToken")

    version = _param("model_version", "path", _t("string"), "The model version.")
    paths: Json = {
        "/v2": {
            "get": op(
                "oipServerMetadata",
                "OIP server metadata.",
                {"200": _response("The server's metadata.", _ref("OipServerMetadata"))},
                "inferenceToken",
            )
        },
        "/v2/health/live": {"get": health("live")},
        "/v2/health/ready": {"get": health("ready")},
    }
    for prefix, suffix, params in (
        ("/v2/models/{model_name}", "", [_MODEL_NAME]),
        ("/v2/models/{model_name}/versions/{model_version}", "Version", [_MODEL_NAME, version]),
    ):
        meta, readiness = model_ops(suffix)
        paths[prefix] = {"parameters": params, "get": meta}
        paths[f"{prefix}/ready"] = {"parameters": params, "get": readiness}
        paths[f"{prefix}/infer"] = {"parameters": params, "post": _oip_infer_op(suffix)}
    return paths


def _oip_infer_op(suffix: str) -> Json:
    """OIP v2 inference: JSON, or the binary tensor extension, in and out."""

    def error(code: int) -> Json:
        response = _error(code)
        response["content"] = _json(_ref("OipError"))
        return response

    described = (
        "The binary tensor extension: the length of the JSON header that starts the body; "
        "raw tensor bytes follow it."
    )
    header_length = {"description": described, "schema": _t("integer", minimum=0)}
    binary = {"schema": _t("string", format="binary")}
    answer = _response(
        "The outputs: JSON, or with binary outputs (`binary_data`, `binary_data_output`) a "
        "JSON header and their raw bytes (`Inference-Header-Content-Length`).",
        _ref("OipInferResponse"),
    )
    answer["content"]["application/octet-stream"] = binary
    answer["headers"] = {"Inference-Header-Content-Length": header_length}
    length = _param(
        "Inference-Header-Content-Length",
        "header",
        _t("integer", minimum=0),
        described,
    )
    return _op(
        "inference",
        f"oipInfer{suffix}",
        "OIP v2 inference (tensors by name; binary tensor extension supported).",
        {"200": answer, **{str(code): error(code) for code in (400, 404, 500, 503, 504, 507)}},
        token="inferenceToken",
        parameters=[length],
        requestBody={
            "required": True,
            "content": {
                **_json(_ref("OipInferRequest")),
                "application/octet-stream": binary,
            },
        },
    )


def _kserve_v1_paths() -> Json:
    """KServe v1: the model list, a model's status, ``:predict`` and ``:explain``."""

    def error(code: int) -> Json:
        response = _error(code)
        response["content"] = _json(_ref("OipError"))  # KServe's {"error": ...}
        return response

    def op(op_id: str, summary: str, responses: Json, **fields: Any) -> Json:
        return _op("inference", op_id, summary, responses, token="inferenceToken", **fields)

    ready = _ref("OipReady")
    status = {
        "200": _response("The default version is READY.", ready),
        "503": _response("The default version is loading or FAILED.", ready),
        "404": error(404),
    }
    listed = {"200": _response("Every model's name.", _ref("KServeV1Models"))}
    alive = {"200": _response("The server answers.", _ref("KServeV1Live"))}
    live = _op("inference", "kserveV1Live", "KServe v1 liveness (no token).", alive)
    paths: Json = {
        "/": {**_description_paths()["/"], "get": live},  # beside OPTIONS / (the description)
        "/v1/models": {"get": op("kserveV1Models", "KServe v1: the models.", listed)},
        "/v1/models/{model_name}": {
            "parameters": [_MODEL_NAME],
            "get": op("kserveV1Model", "KServe v1: is the model ready.", status),
        },
    }
    for verb, key in (("predict", "predictions"), ("explain", "explanations")):
        answers = {
            "200": _response(f"One of `{key}` per instance, in order.", _ref("KServeV1Answer")),
            **{str(code): error(code) for code in (400, 404, 500, 503, 504, 507)},
        }
        paths[f"/v1/models/{{model_name}}:{verb}"] = {
            "parameters": [_MODEL_NAME],
            "post": op(
                f"kserveV1{verb.title()}",
                f"KServe v1 {verb}: each instance is one request of the batch.",
                answers,
                requestBody={"required": True, "content": _json(_ref("KServeV1Request"))},
            ),
        }
    return paths


def _infer_paths(action: str) -> Json:
    """The three routes of ``/predictions`` or ``/explanations``, each with POST and PUT."""
    version = _param("model_version", "path", _t("string"), "The model version.")
    extra = _param(
        "extra_path",
        "path",
        _t("string"),
        "Further path segments (may contain `/`), passed to the handler as the request "
        "header `url_path`; without them `url_path` is empty.",
    )
    verb = "Predict" if action == "predictions" else "Explain"
    summary = (
        "Run the model on the request (the default version unless one is named)."
        if action == "predictions"
        else "Ask the model to explain its prediction (the handler sees header `explain: True`)."
    )
    responses = {"200": _INFER_OK, **_errors(400, 404, 413, 500, 503, 504, 507)}
    routes = {
        "": ("", [_MODEL_NAME]),
        "/{model_version}": ("Version", [_MODEL_NAME, version]),
        "/{model_version}/{extra_path}": ("VersionPath", [_MODEL_NAME, version, extra]),
    }
    paths: Json = {}
    for suffix, (id_suffix, params) in routes.items():
        item: Json = {"parameters": params}
        for method in ("post", "put"):
            op_id = f"{verb.lower()}{id_suffix}{method.title()}"
            item[method] = _op(
                "inference",
                op_id,
                summary,
                responses,
                requestBody=_INFER_BODY,
                token="inferenceToken",
            )
        paths[f"/{action}/{{model_name}}{suffix}"] = item
    return paths


# -- management -------------------------------------------------------------------------------

_REGISTER_FIELDS = {
    "url": _t("string", "A model archive or directory in the model store, or an allowed URL."),
    "model_name": _t("string", "The model's name (default: from the archive's manifest)."),
    "handler": _t("string", "The handler, `module[:function]` (default: from the manifest)."),
    "runtime": _t("string", "TorchServe's runtime; others are 400.", enum=["python", "python3"]),
    "batch_size": _t("integer", "The most requests in one batch.", minimum=1),
    "max_batch_delay": _t("number", "Milliseconds to wait to fill a batch.", minimum=0),
    "initial_workers": _t(
        "integer",
        "Workers to start (default: the archive's minWorkers, else the configured default "
        "workers, else 0).",
        minimum=0,
    ),
    "synchronous": _t("boolean", "Answer once the workers are up.", default=True),
    "response_timeout": _t("number", "Seconds a worker may take per batch.", exclusiveMinimum=0),
    "startup_timeout": _t("number", "Seconds a worker may take to load.", exclusiveMinimum=0),
    "set_default": _t(
        "boolean",
        "Make this version the default once its workers are up and its canaries pass "
        "(needs `synchronous`); otherwise it is rolled back.",
        default=False,
    ),
    "retire_old": _t(
        "boolean",
        "With `set_default`: then drain and unregister the previous default version.",
        default=False,
    ),
    "canaries": {
        "description": "Canaries to check the version with (instead of its `canaries.json`): "
        "a list, or the name of a canary file in the model store.",
        "anyOf": [_t("string"), _array(_ref("Canary"))],
    },
}
_CANARY_FILE = _t("string", "The name of a canary file (a JSON list) in the model store.")

_SCALE_PARAMS = [
    _param("min_worker", "query", _t("integer", minimum=0, default=1), "Workers to keep running."),
    _param("max_worker", "query", _t("integer", minimum=0), "The most workers (default: min)."),
    _param("synchronous", "query", _t("boolean", default=False), "Answer once scaling is done."),
    _param("timeout", "query", _t("number"), "Accepted for TorchServe compatibility; ignored."),
]
_VERSION_QUERY = _param(
    "model_version", "query", _t("string"), "The version to scale (default: the default one)."
)


def _management_paths() -> Json:
    return {
        "/models": {"get": _list_op(), "post": _register_op()},
        "/models/{model_name}": _model_item(versioned=False),
        "/models/{model_name}/{model_version}": _model_item(versioned=True),
        "/models/{model_name}/{model_version}/set-default": {
            "parameters": [
                _MODEL_NAME,
                _param("model_version", "path", _t("string"), "A version."),
            ],
            "put": _set_default_op(),
        },
        "/models/{model_name}/{model_version}/workers/{worker_id}/restart": {
            "parameters": [
                _MODEL_NAME,
                _param("model_version", "path", _t("string"), "A version."),
                _param("worker_id", "path", _t("string"), "The worker's slot (`w1`, `w2`...)."),
            ],
            "post": _restart_op(),
        },
        "/token": {"get": _token_op()},
    }


def _restart_op() -> Json:
    responses = {
        "202": _status("The worker stops after its batch in flight; a new incarnation follows."),
        **_errors(404, 503),
    }
    return _mgmt(
        "restartWorker",
        "Replace one worker's process (not counted by the restart policy).",
        responses,
    )


def _mgmt(op_id: str, summary: str, responses: Json, **fields: Any) -> Json:
    return _op("management", op_id, summary, responses, token="managementToken", **fields)


def _list_op() -> Json:
    params = [
        _param("limit", "query", _t("integer", minimum=1, maximum=100, default=100), "Page size."),
        _param("next_page_token", "query", _t("string"), "The previous page's `nextPageToken`."),
    ]
    ok = _response("One page of models, sorted by name.", _ref("ModelList"))
    return _mgmt("listModels", "List models (default versions).", {"200": ok}, parameters=params)


def _set_default_op() -> Json:
    params = [
        _param("canaries", "query", _CANARY_FILE, "Canaries to send instead of the version's own."),
        _param(
            "retire_old",
            "query",
            _t("boolean", default=False),
            "Then drain and unregister the previous default (needs the model API).",
        ),
    ]
    body = {
        "description": "Canaries to send instead of the version's own (wins over `canaries`).",
        "required": False,
        "content": _json(_array(_ref("Canary"))),
    }
    responses = {
        "200": _status("The version passed its canaries (if any) and is the default now."),
        **_errors(400, 404, 405, 422),
    }
    return _mgmt(
        "setDefaultVersion",
        "Make this version the model's default, once it passes its canaries.",
        responses,
        parameters=params,
        requestBody=body,
    )


def _register_op() -> Json:
    params = [
        _param(
            name,
            "query",
            _CANARY_FILE if name == "canaries" else schema,
            "Register parameter; or send them as a JSON body.",
        )
        for name, schema in _REGISTER_FIELDS.items()
    ]
    body = {
        "description": "The parameters as JSON, instead of the query string.",
        "required": False,
    }
    body["content"] = _json(_ref("RegisterRequest"))
    responses = {
        "200": _status("Registered (with its workers up, or with none)."),
        "202": _status(
            "Registered; workers are starting (`synchronous=false`, or still loading at "
            "0.8 x read_timeout; `Location` names the model to poll)."
        ),
        **_errors(400, 404, 405, 409, 422),
        "500": _error(500, "Workers failed to start; the registration was rolled back."),
        **_errors(503, 507),
    }
    return _mgmt(
        "registerModel", "Register a model.", responses, parameters=params, requestBody=body
    )


def _model_item(versioned: bool) -> Json:
    """Describe, scale and unregister, for ``/models/{name}`` or ``/models/{name}/{version}``."""
    params = [_MODEL_NAME]
    suffix = ""
    if versioned:
        text = "The model version; `all` (describe only) means every version."
        params.append(_param("model_version", "path", _t("string"), text))
        suffix = "Version"
    customized = _param(
        "customized",
        "query",
        _t("boolean", default=False),
        "Add the handler's own description (`customizedMetadata`); needs a worker.",
    )
    described = _response("The model's versions.", _array(_ref("ModelDescription")))
    scale_ok = {
        "200": _status("Scaled."),
        "202": _status(
            "Scaling started (`synchronous=false`, or still loading at 0.8 x read_timeout; "
            "`Location` names the model to poll)."
        ),
        "206": _status("Scaling is still in progress."),
    }
    forbidden = _error(403, "The default version cannot be removed while others exist.")
    return {
        "parameters": params,
        "get": _mgmt(
            f"describeModel{suffix}",
            "Describe a model's default version, a given version, or all of them.",
            {"200": described, **_errors(404, 503)},
            parameters=[customized],
        ),
        "put": _mgmt(
            f"scaleModel{suffix}",
            "Scale a model's workers.",
            {**scale_ok, **_errors(400, 404, 500)},
            parameters=_SCALE_PARAMS if versioned else [*_SCALE_PARAMS, _VERSION_QUERY],
        ),
        "delete": _mgmt(
            f"unregisterModel{suffix}",
            "Unregister a model version after draining it (queued requests are served).",
            {"200": _status("Unregistered."), "403": forbidden, **_errors(404, 405)},
        ),
    }


def _token_op() -> Json:
    key_types = _t("string", enum=["inference", "management"])
    kind = _param("type", "query", key_types, "Which key to replace.", required=True)
    responses = {
        "200": _response("The key was replaced.", _ref("TokenRotated")),
        "400": _error(400, "`type` is missing or unknown, or token authorization is off."),
    }
    summary = "Replace the inference or the management key (needs the API key)."
    return _op("management", "rotateToken", summary, responses, parameters=[kind], token="apiToken")


# -- metrics ------------------------------------------------------------------------------------


def _metrics_paths() -> Json:
    text = {_METRICS_CONTENT_TYPE: {"schema": _t("string")}}
    ok = {"description": "Prometheus text exposition format 0.0.4.", "content": text}
    return {"/metrics": {"get": _op("metrics", "getMetrics", "Scrape metrics.", {"200": ok})}}


# -- components ---------------------------------------------------------------------------------


def _common_schemas() -> Json:
    return {
        "Error": _object(
            ("code", "type", "message"),
            code=_t("integer", "The HTTP status."),
            type=_t("string", "The error type (TorchServe's name for the same case)."),
            message=_t("string"),
            logTail=_log_tail("the worker involved, if any"),
            canary=_ref("CanaryReport"),
        ),
        "CanaryReport": _object(
            "all",
            "The canary that failed (`CanaryFailedException` only).",
            index=_t("integer", "Its place in the list, from 1.", minimum=1),
            name=_t("string"),
            passed=_t("boolean"),
            status=_t("integer", "The status of its answer."),
            body=_t("string", "The start of its answer (or the error message)."),
            reason=_t("string", "Why it failed."),
            latencyMs=_t("number"),
        ),
        "Status": _object("all", status=_t("string", "What was done.")),
    }


def _token_schema() -> Json:
    return _object(
        "all",
        status=_t("string", "What was done."),
        key=_t("string", "The new key (the key file is updated too)."),
    )


def _inference_schemas() -> Json:
    return {
        "Health": _object(
            ("status",),
            status=_t("string", enum=["Healthy", "Unhealthy"]),
            failedModels=_array(_t("string"), "`name/version` of each FAILED default version."),
        ),
        **_oip_schemas(),
        **_kserve_v1_schemas(),
    }


def _kserve_v1_schemas() -> Json:
    instances = _t("array", minItems=1, maxItems=1024, items={})
    return {
        "KServeV1Live": _object("all", status=_t("string", enum=["alive"])),
        "KServeV1Models": _object("all", models=_array(_t("string"))),
        "KServeV1Request": _object(
            ("instances",),
            "Each instance reaches the handler as one request, its body the instance as JSON.",
            instances=instances,
            inputs={**instances, "description": "Taken instead of `instances` without them."},
        ),
        "KServeV1Answer": _object(
            description="`predictions` (`:predict`) or `explanations` (`:explain`).",
            predictions=_array({}),
            explanations=_array({}),
        ),
    }


def _oip_tensor_schemas() -> Json:
    """The inference request and response of OIP v2 (REST)."""
    datatype = _t("string", enum=list(DATATYPES))
    shape = _array(_t("integer", minimum=0))
    input_tensor = _object(
        ("name", "shape", "datatype"),
        name=_t("string"),
        shape=shape,
        datatype=datatype,
        parameters=_t("object", "`binary_data_size`: its bytes follow the JSON header."),
        data={"description": "The elements, flat or nested, row-major."},
    )
    asked = _object(
        ("name",),
        name=_t("string"),
        parameters=_t("object", "`binary_data`: send it as raw bytes."),
    )
    output_tensor = _object(
        ("name", "shape", "datatype"),
        name=_t("string"),
        shape=shape,
        datatype=datatype,
        parameters=_t("object", "`binary_data_size` for an output sent as raw bytes."),
        data=_array({}, "The elements, flat, row-major (absent for a binary output)."),
    )
    return {
        "OipInferRequest": _object(
            ("inputs",),
            id=_t("string", "Echoed in the response."),
            parameters=_t("object", "`binary_data_output`; unknown ones are ignored."),
            inputs=_t("array", minItems=1, items=input_tensor),
            outputs=_array(asked, "The outputs to send (all when absent)."),
        ),
        "OipInferResponse": _object(
            ("model_name", "outputs"),
            model_name=_t("string"),
            model_version=_t("string"),
            id=_t("string", "The request's `id`, if it had one."),
            outputs=_array(output_tensor),
        ),
    }


def _oip_schemas() -> Json:
    return {
        **_oip_tensor_schemas(),
        "OipError": _object("all", "The Open Inference Protocol's error.", error=_t("string")),
        "OipLive": _object("all", live=_t("boolean")),
        "OipReady": _object(
            ("ready",),
            name=_t("string", "The model (model readiness only)."),
            ready=_t(
                "boolean",
                "False while the default version of some model (or this "
                "version) is LOADING or FAILED.",
            ),
        ),
        "OipServerMetadata": _object(
            "all", name=_t("string"), version=_t("string"), extensions=_array(_t("string"))
        ),
        "OipModelMetadata": _object(
            "all",
            name=_t("string"),
            versions=_array(_t("string"), "Every version of the model."),
            platform=_t("string", enum=["pytorch_torchserve"]),
            inputs=_array(
                _t("object"), "As model-config.yaml declares them (`oip: inputs:`); else empty."
            ),
            outputs=_array(
                _t("object"), "As model-config.yaml declares them (`oip: outputs:`); else empty."
            ),
        ),
    }


def _management_schemas() -> Json:
    listed = _object("all", modelName=_t("string"), modelUrl=_t("string"))
    return {
        "ModelList": _object(
            ("models",),
            models=_array(listed),
            nextPageToken=_t("string", "Pass as `next_page_token` for the next page."),
        ),
        "TokenRotated": _token_schema(),
        "RegisterRequest": {**_t("object", properties=_REGISTER_FIELDS), "required": ["url"]},
        "Canary": _canary_schema(),
        "ModelDescription": _model_schema(),
        "RestartPolicy": _object(
            "all",
            maxRestarts=_t("integer", "Restarts allowed within `window` before FAILED."),
            window=_t("number", "Seconds."),
            backoffInitial=_t("number", "Seconds before the first restart."),
            backoffMax=_t("number", "The longest backoff, in seconds."),
            healthyAfter=_t("number", "Seconds of uptime that reset the backoff."),
        ),
        "Worker": _worker_schema(),
        "WorkerExit": _object(
            "all",
            description="How the worker's previous incarnation ended.",
            incarnation=_t("integer"),
            pid=_nullable(_t("integer")),
            reason=_t("string"),
            exitCode=_nullable(_t("integer", "Null when killed by a signal.")),
            signal=_nullable(_t("integer")),
            uptime=_t("number", "Seconds."),
            time=_t("string", format="date-time"),
            logTail=_log_tail(),
        ),
    }


def _canary_schema() -> Json:
    schema = _object(
        (),
        "One canary request and the answer it expects. Give `body` or `body_file`.",
        name=_t("string", "A label for reports."),
        body={"description": "A string is sent as text, anything else as JSON."},
        body_file=_t("string", "A file to send, relative to the canary file (or model store)."),
        content_type=_t("string", "Default: text/plain, application/json or octet-stream."),
        expect_status=_t(
            "integer", "The status the answer must have.", default=200, minimum=100, maximum=599
        ),
        expect_json={"description": "JSON the answer must equal."},
        expect_contains=_t("string", "Text the answer must contain."),
    )
    schema["additionalProperties"] = False
    schema["oneOf"] = [{"required": ["body"]}, {"required": ["body_file"]}]
    return schema


def _model_schema() -> Json:
    states = ["LOADING", "READY", "FAILED", "STOPPING", "STOPPED"]
    required = ("modelName", "modelVersion", "modelUrl", "state", "workers", "jobQueueStatus")
    return _object(
        required,
        modelName=_t("string"),
        modelVersion=_t("string"),
        modelUrl=_t("string", "The registration url, else the model directory, else the handler."),
        modelDir=_t("string", "Where the model's files are (an unpacked copy for archives)."),
        handler=_t("string"),
        runtime=_t("string"),
        state=_t("string", enum=states),
        isDefault=_t("boolean"),
        minWorkers=_t("integer"),
        maxWorkers=_t("integer"),
        batchSize=_t("integer"),
        maxBatchDelay=_t("integer", "Milliseconds."),
        responseTimeout=_t("number", "Seconds."),
        startupTimeout=_t("number", "Seconds."),
        memoryLimitMb=_t("integer", "A worker's memory limit in MiB (0: none)."),
        restartPolicy=_ref("RestartPolicy"),
        restarts=_t("integer"),
        warmSpare=_object(
            "all",
            "The standby worker (`pid` null while none is ready).",
            enabled=_t("boolean"),
            pid=_nullable(_t("integer")),
        ),
        workers=_array(_ref("Worker")),
        jobQueueStatus=_object(
            "all", remainingCapacity=_t("integer"), pendingRequests=_t("integer")
        ),
        failure=_object(
            "all",
            "Why the model is FAILED (present only then).",
            reason=_t("string"),
            logTail=_log_tail(),
        ),
        customizedMetadata=_t("object", "The handler's own description (`customized=true`)."),
    )


def _worker_schema() -> Json:
    states = ["STARTING", "READY", "BUSY", "STOPPING", "DEAD"]
    return _object(
        ("id", "incarnation", "state", "status"),
        id=_t("string"),
        pid=_nullable(_t("integer")),
        incarnation=_t("integer", "1 for the first process of this slot, then 2, 3, ..."),
        state=_t("string", enum=states),
        status=_t("string", "TorchServe's view of `state`.", enum=["READY", "UNLOADING"]),
        startTime=_t("string", format="date-time"),
        restarts=_t("integer"),
        batches=_t("integer"),
        gpu=_t("boolean"),
        gpuId=_nullable(_t("string", "The GPU, as CUDA_VISIBLE_DEVICES names it.")),
        memoryUsage=_nullable(_t("integer", "Resident memory in bytes; null if unknown.")),
        lastExit=_nullable(_ref("WorkerExit")),
        logTail=_log_tail(),
    )


# -- the documents ------------------------------------------------------------------------------

_BUILDERS = {
    "inference": (_inference_paths, _inference_schemas),
    "management": (_management_paths, _management_schemas),
    "metrics": (_metrics_paths, lambda: {}),
}


def openapi_document(kind: str, version: str) -> dict[str, Any]:
    """The OpenAPI document of one port.

    Args:
        kind: ``inference``, ``management`` or ``metrics``.
        version: the server's version, shown as ``info.version``.

    Returns:
        A JSON-ready dict that shares nothing with other calls' results.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown API kind {kind!r}; expected one of {', '.join(KINDS)}")
    paths, schemas = _BUILDERS[kind]
    schemes = {
        name: {"type": "http", "scheme": "bearer", "description": text}
        for name, text in _SECURITY_SCHEMES[kind].items()
    }
    components: Json = {"schemas": {**_common_schemas(), **schemas()}}
    if schemes:
        components["securitySchemes"] = schemes
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "trio-supervisor",
            "version": version,
            "summary": f"The {kind} API of trio-supervisor, a TorchServe-compatible model server.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name, "description": _TAGS[name]} for name in (kind, "description")],
        "paths": {**_description_paths(), **paths()},
        "components": components,
    }
    return copy.deepcopy(document)  # the helpers reuse module-level parts
