"""The OpenAPI documents: valid, complete, and honest about which routes need a token."""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
import openapi_schema_validator
import pytest
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate

from supervisor.api.describe import describe_model
from supervisor.api.openapi import KINDS, openapi_document
from supervisor.config import ModelConfig
from supervisor.errors import CanaryFailed, ModelUnavailable, WorkerDied, WorkerTimeout
from supervisor.models.canary import CanaryResult, parse_canaries
from supervisor.supervision.metrics import CONTENT_TYPE
from supervisor.supervision.stats import ExitRecord, ModelStats, WorkerStats

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

INFER_CODES = {"200", "400", "401", "404", "413", "500", "503", "504", "507"}

EXPECTED = {
    "inference": {
        "/": {"get", "options"},
        "/api-description": {"get", "options"},
        "/ping": {"get", "post"},
        **{
            f"/{action}/{{model_name}}{suffix}": {"post", "put"}
            for action in ("predictions", "explanations")
            for suffix in ("", "/{model_version}", "/{model_version}/{extra_path}")
        },
        "/v2": {"get"},
        "/v2/health/live": {"get"},
        "/v2/health/ready": {"get"},
        **{
            f"/v2/models/{{model_name}}{version}{ready}": {"get"}
            for version in ("", "/versions/{model_version}")
            for ready in ("", "/ready")
        },
        "/v2/models/{model_name}/infer": {"post"},
        "/v2/models/{model_name}/versions/{model_version}/infer": {"post"},
        "/v1/models": {"get"},
        "/v1/models/{model_name}": {"get"},
        "/v1/models/{model_name}:predict": {"post"},
        "/v1/models/{model_name}:explain": {"post"},
    },
    "management": {
        "/": {"options"},
        "/api-description": {"get", "options"},
        "/models": {"get", "post"},
        "/models/{model_name}": {"get", "put", "delete"},
        "/models/{model_name}/{model_version}": {"get", "put", "delete"},
        "/models/{model_name}/{model_version}/set-default": {"put"},
        "/models/{model_name}/{model_version}/workers/{worker_id}/restart": {"post"},
        "/token": {"get"},
    },
    "metrics": {
        "/": {"options"},
        "/api-description": {"get", "options"},
        "/metrics": {"get"},
    },
}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def wipe(node: Any) -> None:
    """Empty every dict and list in ``node``, innermost first."""
    children = node.values() if isinstance(node, dict) else node
    for child in list(children):
        if isinstance(child, dict | list):
            wipe(child)
    node.clear()


def schema_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A component schema, wrapped so that its local ``$ref``s resolve."""
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def check(instance: Any, doc: dict[str, Any], name: str) -> None:
    openapi_schema_validator.validate(
        instance, schema_of(doc, name), cls=openapi_schema_validator.OAS31Validator
    )


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    return {kind: openapi_document(kind, "9.8.7") for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_document_is_valid_openapi(docs, kind):
    validate(docs[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_document_is_json_and_fresh(docs, kind):
    doc = openapi_document(kind, "9.8.7")
    assert json.loads(json.dumps(doc)) == docs[kind]
    assert doc["info"]["title"] == "trio-supervisor"
    assert doc["info"]["version"] == "9.8.7"
    wipe(doc)  # a caller that edits its copy must not change the next one
    assert openapi_document(kind, "9.8.7") == docs[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_every_route_and_method_is_described(docs, kind):
    described = {path: set(item) & HTTP_METHODS for path, item in docs[kind]["paths"].items()}
    assert described == EXPECTED[kind]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown API kind 'workflow'"):
        openapi_document("workflow", "1")


def test_operation_ids_are_unique(docs):
    for doc in docs.values():
        ids = [op["operationId"] for op in operations(doc).values()]
        assert len(ids) == len(set(ids))


def test_bearer_schemes_are_http_bearer(docs):
    for kind in ("inference", "management"):
        for scheme in docs[kind]["components"]["securitySchemes"].values():
            assert scheme["type"] == "http"
            assert scheme["scheme"] == "bearer"
    assert "securitySchemes" not in docs["metrics"]["components"]


def test_inference_token_on_predictions_explanations_and_oip_metadata(docs):
    doc = docs["inference"]
    assert "security" not in doc
    for (path, method), op in operations(doc).items():
        if path.startswith(("/predictions/", "/explanations/")):
            assert op["security"] == [{"inferenceToken": []}], (path, method)
            assert set(op["responses"]) == INFER_CODES, (path, method)
        elif path.startswith(("/v2", "/v1/")) and not path.startswith("/v2/health/"):
            assert op["security"] == [{"inferenceToken": []}], (path, method)
            assert "401" in op["responses"], (path, method)
        else:
            assert "security" not in op, (path, method)
            assert "401" not in op["responses"], (path, method)


def test_management_token_on_every_model_route(docs):
    doc = docs["management"]
    assert "security" not in doc
    for (path, method), op in operations(doc).items():
        if path in ("/", "/api-description"):
            assert "security" not in op
        elif path == "/token":
            assert op["security"] == [{"apiToken": []}]
        else:
            assert op["security"] == [{"managementToken": []}], (path, method)
        if "security" in op:
            assert "401" in op["responses"]


def test_metrics_need_no_token(docs):
    doc = docs["metrics"]
    assert "security" not in doc
    assert all("security" not in op for op in operations(doc).values())
    content = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [CONTENT_TYPE]


def test_ping_answers_health_not_errors(docs):
    responses = docs["inference"]["paths"]["/ping"]["get"]["responses"]
    assert set(responses) == {"200", "500"}
    check({"status": "Healthy"}, docs["inference"], "Health")
    check({"status": "Unhealthy", "failedModels": ["a/1.0"]}, docs["inference"], "Health")
    with pytest.raises(ValidationError):
        check({"status": "Sick"}, docs["inference"], "Health")


def test_predictions_accept_raw_and_form_bodies(docs):
    item = docs["inference"]["paths"]["/predictions/{model_name}/{model_version}/{extra_path}"]
    assert [p["name"] for p in item["parameters"]] == ["model_name", "model_version", "extra_path"]
    content = item["post"]["requestBody"]["content"]
    assert {"*/*", "multipart/form-data", "application/x-www-form-urlencoded"} <= set(content)
    assert "Retry-After" in item["post"]["responses"]["503"]["headers"]


@pytest.mark.parametrize(
    ("path", "method", "codes"),
    [
        (
            "/models",
            "post",
            {"200", "202", "400", "404", "405", "409", "422", "500", "503", "507"},
        ),
        ("/models/{model_name}", "put", {"200", "202", "206", "400", "404", "500"}),
        ("/models/{model_name}/{model_version}", "delete", {"200", "403", "404", "405"}),
        (
            "/models/{model_name}/{model_version}/set-default",
            "put",
            {"200", "400", "404", "405", "422"},
        ),
        ("/token", "get", {"200", "400"}),
    ],
)
def test_management_status_codes(docs, path, method, codes):
    responses = docs["management"]["paths"][path][method]["responses"]
    assert set(responses) == codes | {"401"}


def test_token_rotation_answers_the_new_key(docs):
    op = docs["management"]["paths"]["/token"]["get"]
    (kind,) = op["parameters"]
    assert (kind["name"], kind["required"]) == ("type", True)
    assert kind["schema"]["enum"] == ["inference", "management"]
    check({"status": "Token regenerated", "key": "abc"}, docs["management"], "TokenRotated")


def test_register_takes_query_or_json(docs):
    op = docs["management"]["paths"]["/models"]["post"]
    query = {p["name"] for p in op["parameters"] if p["in"] == "query"}
    body = docs["management"]["components"]["schemas"]["RegisterRequest"]
    assert query == set(body["properties"])
    assert "url" in query
    assert body["required"] == ["url"]
    assert body["properties"]["synchronous"]["default"] is True


def test_canaries_and_their_failure_match_the_schemas(docs):
    doc = docs["management"]
    good = [
        {"body": {"x": 1}, "expect_json": {"y": 2}},
        {"body_file": "a.jpg", "content_type": "image/jpeg", "expect_status": 200},
    ]
    for entry in good:
        check(entry, doc, "Canary")
    for bad in ({"body": "x", "body_file": "y"}, {"expected_status": 200, "body": "x"}, {}):
        with pytest.raises(ValidationError):
            check(bad, doc, "Canary")
    (canary,) = parse_canaries([good[0]])
    report = CanaryResult(1, canary, 200, b"{}", "the answer differs").to_json()
    error = CanaryFailed("Canary 1 of 1 failed", canary=report, log_tail=("x",))
    check(error.to_json(), doc, "Error")
    item = doc["paths"]["/models/{model_name}/{model_version}/set-default"]["put"]
    assert item["requestBody"]["content"]["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/Canary"
    }


def test_error_bodies_match_the_error_schema(docs):
    for error in (
        ModelUnavailable("queue full"),
        WorkerDied("died", log_tail=("a", "b")),
        WorkerTimeout("slow"),
    ):
        check(error.to_json(), docs["inference"], "Error")
    with pytest.raises(ValidationError):
        check({"code": 500}, docs["inference"], "Error")


def test_describe_output_matches_the_schema(docs):
    """The real describe renderer, with a live worker, a restarted one and a FAILED model."""
    died = ExitRecord(
        incarnation=1,
        pid=8216,
        reason="the process exited",
        returncode=-9,
        uptime=5.7361,
        ended_at=1_700_000_000.0,
        log_tail=("worker: loaded iris",),
    )
    live = WorkerStats(
        id="w1",
        pid=os.getpid(),
        incarnation=2,
        state="READY",
        started_at=1_700_000_001.0,
        restarts=1,
        batches=3,
        last_exit=died,
        log_tail=("ready",),
    )
    dead = attrs.evolve(live, id="w2", pid=None, state="DEAD", last_exit=None, log_tail=())
    stats = ModelStats(
        config=ModelConfig(name="iris", handler="handlers.builtin.iris", workers=2),
        state="FAILED",
        is_default=True,
        failure="more than 2 restarts in 60 s",
        failure_log_tail=("boom",),
        workers=(live, dead),
        restarts=1,
        queue_depth=0,
        queue_capacity=100,
        requests=7,
        loaded_at=1_700_000_000.0,
    )
    body = describe_model(stats)
    assert body["workers"][1]["lastExit"] is None
    check(body, docs["management"], "ModelDescription")
    with pytest.raises(ValidationError):
        check({**body, "state": "SLEEPING"}, docs["management"], "ModelDescription")


def test_oip_bodies_match_their_schemas():
    from supervisor.api import oip

    doc = openapi_document("inference", "9.8.7")
    config = ModelConfig(name="m", handler="h")
    stats = ModelStats(config, "LOADING", True, None, (), (), 0, 0, 10, 0, 0.0)
    check(oip.server_metadata("1.2.3"), doc, "OipServerMetadata")
    check(oip.server_ready([stats])[1], doc, "OipReady")
    check(oip.model_ready([stats], "m", None)[1], doc, "OipReady")
    check(oip.model_metadata([stats], "m", "1.0")[1], doc, "OipModelMetadata")
    check(oip.model_metadata([stats], "x", None)[1], doc, "OipError")
    check({"live": True}, doc, "OipLive")
