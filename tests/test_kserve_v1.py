"""KServe v1 over REST (``/v1/models``, ``:predict``, ``:explain``).

The pure parts (the path, the body, the rendering) are checked on values; the
routes on a real server with real workers, tokens on, on both HTTP front ends:
the built-in ``tensor_handler`` serving a TorchScript model (answers compared
with the model called here), a probe handler that shows what a handler gets
per instance, and one that is still loading.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import orjson
import pytest
import torch
import trio
from prometheus_client.parser import text_string_to_metric_families

from handlers.protocol import ReplyItem
from supervisor import ModelConfig
from supervisor.api import kservev1
from supervisor.api.predict import Outcome
from supervisor.errors import InvalidRequest, ModelUnavailable, Unauthorized
from supervisor.server import serve
from supervisor.supervision.stats import ModelStats
from tests.helpers import FAST_RESTARTS
from tests.test_builtin_handlers import linear_model, torchscript_bytes
from tests.test_oip_rest import SLOW_LOAD_HANDLER
from tests.test_security import bearer, read_keys, secure_config

PROBE_HANDLER = """
from handlers import PredictionException

class Probe:
    def handle(self, batch, context):
        if [row.get("body") for row in batch] == ["stream"]:
            context.send_intermediate(["streamed "])
            return ["and joined"]
        answers = []
        for index, row in enumerate(batch):
            body = row.get("body")
            if body == "refuse":
                raise PredictionException("probe: this instance is refused", 400)
            if body == "text":
                answers.append("plain words")
                continue
            explain = context.get_request_header(index, "explain")
            answers.append({"got": body, "explain": explain, "batch": len(batch)})
        return answers
"""


# --- the pure parts ------------------------------------------------------------------------------


def test_split_target_takes_only_predict_and_explain():
    assert kservev1.split_target("/v1/models/m:predict") == ("m", "predict")
    assert kservev1.split_target("/v1/models/a.b-c:explain") == ("a.b-c", "explain")
    for path in (
        "/v1/models/m",
        "/v1/models/m:infer",
        "/v1/models/:predict",
        "/v1/models/a/b:predict",
        "/v1/models/%6d:predict",
        "/v2/models/m:predict",
    ):
        assert kservev1.split_target(path) is None, path


def test_parse_instances_takes_instances_or_inputs():
    assert kservev1.parse_instances(b'{"instances": [1, [2, 3]]}') == [1, [2, 3]]
    assert kservev1.parse_instances(b'{"inputs": [{"data": "x"}]}') == [{"data": "x"}]
    too_many = orjson.dumps({"instances": [0] * (kservev1.MAX_INSTANCES + 1)})
    for body, words in (
        (b"{", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"instances": 3}', "must be a list, got a number"),
        (b'{"instances": "' + b"x" * 1000 + b'"}', "must be a list, got a string$"),
        (b'{"rows": []}', "must be a list, got nothing"),
        (b'{"inputs": {"a": [1]}}', "must be a list"),
        (b'{"instances": []}', "1 to 1024 items, not 0"),
        (too_many, "not 1025"),
    ):
        with pytest.raises(InvalidRequest, match=words):
            kservev1.parse_instances(body)


def _ok(body: bytes) -> Outcome:
    return Outcome(b"rid", reply=ReplyItem("r", True, body=body))


def test_render_parses_each_answer_and_keeps_order():
    answer = kservev1.render([_ok(b"[1, 2]"), _ok(b"words"), _ok(b"\xff\x00")], "predict")
    assert answer.status == 200
    assert (b"x-request-id", b"rid") in answer.headers
    assert orjson.loads(answer.body) == {"predictions": [[1, 2], "words", {"b64": "/wA="}]}
    explained = kservev1.render([_ok(b"{}")], "explain")
    assert orjson.loads(explained.body) == {"explanations": [{}]}


def test_render_answers_the_first_failure_in_order():
    refused = Outcome(b"rid", reply=ReplyItem("r", False, status=400, message="bad row"))
    full = Outcome(b"rid", error=ModelUnavailable("queue full", retry_after=1))
    answer = kservev1.render([_ok(b"1"), refused, full], "predict")
    assert (answer.status, orjson.loads(answer.body)) == (400, {"error": "bad row"})
    answer = kservev1.render([full, refused], "predict")
    assert answer.status == 503
    assert (b"retry-after", b"1") in answer.headers
    denied = kservev1.render([Outcome(b"rid", error=Unauthorized("no"))], "predict")
    assert denied.status == 401  # as on every route of the port
    assert orjson.loads(denied.body)["type"] == "InvalidKeyException"
    assert any(name == b"www-authenticate" for name, _ in denied.headers)
    said = Outcome(b"rid", reply=ReplyItem("r", True, status=400, body=b'{"message": "4 numbers"}'))
    answer = kservev1.render([said], "predict")
    assert (answer.status, orjson.loads(answer.body)) == (400, {"error": "4 numbers"})


def test_model_list_names_each_model_once():
    stats = [
        ModelStats(
            ModelConfig(name=n, handler="h", version=v), "READY", d, None, (), (), 0, 0, 1, 0, 0.0
        )
        for n, v, d in (("b", "1.0", True), ("a", "1.0", True), ("b", "2.0", False))
    ]
    assert kservev1.model_list(stats) == {"models": ["a", "b"]}


# --- a real server -------------------------------------------------------------------------------


def linear_dir(root: Path) -> Path:
    """The built-in tensor_handler with a TorchScript ``Linear(3, 2)``, as an unpacked archive."""
    directory = root / "linear"
    (directory / "MAR-INF").mkdir(parents=True)
    (directory / "linear.pt").write_bytes(torchscript_bytes(linear_model(), torch.zeros(1, 3)))
    manifest = {
        "runtime": "python",
        "model": {
            "modelName": "linear",
            "handler": "tensor_handler",
            "serializedFile": "linear.pt",
        },
    }
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


def models(tmp_path: Path, handler_dir) -> list[ModelConfig]:
    common = {"startup_timeout": 120.0, "restart": FAST_RESTARTS}
    return [
        ModelConfig(
            name="linear",
            handler="tensor_handler",
            model_dir=str(linear_dir(tmp_path)),
            batch_size=4,
            max_batch_delay=0.05,
            **common,
        ),
        ModelConfig(
            name="probe",
            handler="probe",
            model_dir=str(handler_dir("probe", PROBE_HANDLER)),
            batch_size=8,
            max_batch_delay=0.2,
            **common,
        ),
        ModelConfig(
            name="slow",
            handler="slow",
            model_dir=str(handler_dir("slow", SLOW_LOAD_HANDLER)),
            **common,
        ),
    ]


async def wait_ready(client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> None:
    with trio.fail_after(120):
        while True:
            if (await client.get(url, headers=auth)).status_code == 200:
                return
            await trio.sleep(0.05)


def v1_count(text: str, model: str) -> float:
    """Requests counted for ``model`` with the ``kserve-v1`` protocol label."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "supervisor_request_latency_seconds_count"
                and labels.get("model_name") == model
                and labels.get("protocol") == "kserve-v1"
            ):
                total += sample.value
    return total


@pytest.mark.slow
@pytest.mark.parametrize("lean_http", [True, False])
async def test_kserve_v1_on_a_real_server(nursery, tmp_path, handler_dir, lean_http):
    config = secure_config(tmp_path, *models(tmp_path, handler_dir), lean_http=lean_http)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    auth = bearer(read_keys(config)["inference"])
    base = f"{urls.inference}/v1/models"
    async with httpx.AsyncClient(timeout=60) as client:
        for name in ("linear", "probe"):
            await wait_ready(client, f"{base}/{name}", auth)
        await _check_listing(client, base, auth)
        await _check_tensor_handler(client, base, auth)
        await _check_what_the_handler_gets(client, base, auth)
        await _check_errors(client, base, auth)
        metrics = (await client.get(f"{urls.metrics}/metrics")).text
        assert v1_count(metrics, "linear") == 3  # one per instance
    shutdown.set()


async def _check_listing(client: httpx.AsyncClient, base: str, auth: dict[str, str]) -> None:
    r = await client.get(base, headers=auth)
    assert (r.status_code, r.json()) == (200, {"models": ["linear", "probe", "slow"]})
    assert (await client.get(base)).status_code == 401
    r = await client.get(f"{base}/linear", headers=auth)
    assert (r.status_code, r.json()) == (200, {"name": "linear", "ready": True})
    r = await client.get(f"{base}/slow", headers=auth)
    assert (r.status_code, r.json()) == (503, {"name": "slow", "ready": False})
    r = await client.get(f"{base}/nope", headers=auth)
    assert (r.status_code, r.json()) == (404, {"error": "Model not found: nope"})
    assert r.headers["content-type"] == "application/json"
    r = await client.get(base.removesuffix("/v1/models") + "/")  # liveness: no token
    assert (r.status_code, r.json()) == (200, {"status": "alive"})


async def _check_tensor_handler(client: httpx.AsyncClient, base: str, auth: dict[str, str]) -> None:
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0], [0.0, 0.0, 0.0]]
    with torch.no_grad():
        expected = linear_model()(torch.tensor(rows)).tolist()
    r = await client.post(f"{base}/linear:predict", json={"instances": rows}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json().keys() == {"predictions"}
    got = r.json()["predictions"]
    assert [len(row) for row in got] == [2, 2, 2]
    flat = [x for row in got for x in row]
    assert flat == pytest.approx([x for row in expected for x in row], abs=1e-5)


async def _check_what_the_handler_gets(
    client: httpx.AsyncClient, base: str, auth: dict[str, str]
) -> None:
    instances = [{"a": 1}, [1, 2], "text", 7]
    r = await client.post(f"{base}/probe:predict", json={"instances": instances}, headers=auth)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p if isinstance(p, str) else p["got"] for p in predictions] == [
        {"a": 1},
        [1, 2],
        "plain words",
        7,
    ]
    assert {p["explain"] for p in predictions if isinstance(p, dict)} == {None}
    r = await client.post(f"{base}/probe:explain", json={"inputs": [1, 2]}, headers=auth)
    assert r.status_code == 200, r.text
    explanations = r.json()["explanations"]
    assert [(e["got"], e["explain"]) for e in explanations] == [(1, "True"), (2, "True")]


async def _check_errors(client: httpx.AsyncClient, base: str, auth: dict[str, str]) -> None:
    post = partial(client.post, headers=auth)
    r = await post(f"{base}/probe:predict", json={"instances": [1, "refuse", 2]})
    assert (r.status_code, r.json()) == (400, {"error": "probe: this instance is refused"})
    r = await post(f"{base}/probe:predict", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"].startswith("KServe v1: the body is not JSON")
    r = await client.post(f"{base}/probe:predict", content=b"{not json")  # the token comes first
    assert r.status_code == 401
    assert "Token Authorization failed" in r.json()["message"]
    r = await post(f"{base}/nope:predict", json={"instances": [1]})
    assert (r.status_code, r.json()) == (404, {"error": "Model not found: nope"})
    r = await post(f"{base}/probe:infer", json={"instances": [1]})  # GET /v1/models/{name}'s
    assert r.status_code == 405
    r = await post(f"{base}/%70robe:predict", json={"instances": [5]})  # to the Quart route
    assert (r.status_code, r.json()["predictions"][0]["got"]) == (200, 5)
    r = await post(f"{base}/probe:predict", json={"instances": ["stream"]})
    assert (r.status_code, r.json()) == (200, {"predictions": ["streamed and joined"]})
    traced = {**auth, "X-Request-Id": "k-1"}
    r = await client.post(f"{base}/probe:predict", json={"instances": [1]}, headers=traced)
    assert r.headers["x-request-id"] == "k-1"
