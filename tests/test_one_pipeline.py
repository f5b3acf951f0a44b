"""One prediction pipeline, two front ends: the same request gets the same answer and metrics.

Two real servers run side by side as ``python -m supervisor serve`` processes, one
with the lean HTTP/1.1 front end and one with Hypercorn and Quart, serving the same
models. Each case sends the same request to both and compares what matters: the
status, the headers clients read, the body, and what the request added to the
metrics port's counters. A case also states what the answer must be, so two
equally wrong answers fail too. And the lean front end's modules must not load
Quart or Werkzeug.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import eventually

pytestmark = pytest.mark.slow

PROBE_HANDLER = """
import json, os, time
from pathlib import Path
from handlers import PredictionException


def wait_for(path):
    deadline = time.monotonic() + 30
    while not path.exists():  # the test creates it when it is ready
        if time.monotonic() > deadline:
            raise TimeoutError(str(path))
        time.sleep(0.01)


class Probe:
    def initialize(self, context):
        self.dir = Path(context.system_properties["model_dir"])

    def handle(self, batch, context):
        body = batch[0].get("body")
        body = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
        if body == "crash":
            os._exit(3)
        if body == "raise":
            raise ValueError("broken on purpose")
        if body == "refuse":
            raise PredictionException("this model takes numbers, not words", 400)
        if body.startswith("sleep "):
            time.sleep(float(body.split()[1]))
        if body == "gate":
            (self.dir / "taken").touch()
            wait_for(self.dir / "gate")
        if body == "stream":
            for part in ("a ", "b "):
                context.send_intermediate([part])
            return ["c"]
        if body == "cut":
            context.send_intermediate(["first "])
            wait_for(self.dir / "cut")
            raise ValueError("cut midway on purpose")
        context.set_response_header(0, "X-Seen-Id", context.get_request_id(0))
        context.set_response_content_type(0, "application/json")
        seen = {k: context.get_request_header(0, k) for k in ("url_path", "explain", "X-Trace")}
        return [json.dumps({"echo": body, **seen})]
"""

MODELS = {"probe": {}, "queue": {"job_queue_size": 1}, "crash": {}}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
HEADERS = ("content-type", "retry-after", "www-authenticate", "transfer-encoding", "x-seen-id")
COUNTED = (
    "Requests2XX",
    "Requests4XX",
    "Requests5XX",
    "ts_inference_requests_total",
    "supervisor_request_latency_seconds_count",
    "supervisor_queue_latency_seconds_count",
)


@dataclass
class Server:
    """One running server: its URLs, its inference key, its models' directories."""

    process: subprocess.Popen[bytes]
    home: Path
    inference: str = ""
    metrics: str = ""
    key: str = ""

    def url(self, path: str) -> str:
        return f"{self.inference}{path}"

    def bearer(self, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **headers}

    def model_dir(self, name: str) -> Path:
        return self.home / name


def _launch(home: Path, lean: bool) -> Server:
    for name in MODELS:
        (home / name).mkdir()
        (home / name / "probe.py").write_text(PROBE_HANDLER)
    models = "".join(
        f'[[models]]\nname = "{name}"\nhandler = "probe"\nmodel_dir = "{home / name}"\n'
        + "".join(f"{k} = {v}\n" for k, v in extra.items())
        for name, extra in MODELS.items()
    )
    (home / "config.toml").write_text(
        f"[server]\nlean_http = {str(lean).lower()}\nshutdown_grace = 1.0\n"
        f'inference_address = "127.0.0.1:0"\nmanagement_address = "127.0.0.1:0"\n'
        f'metrics_address = "127.0.0.1:0"\nkey_file = "{home / "keys.json"}"\n\n{models}'
    )
    args = ["serve", "--config", str(home / "config.toml"), "--ready-file", str(home / "ready")]
    with (home / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", *args], cwd=home, stdout=log, stderr=log
        )
    return Server(process, home)


def _wait_ready(server: Server) -> Server:
    """Wait for the server's ready file (written by the server process once all is up)."""
    ready = server.home / "ready"
    deadline = time.monotonic() + 90
    while not ready.exists():
        log = (server.home / "server.log").read_text()
        assert server.process.poll() is None, f"the server exited:\n{log}"
        assert time.monotonic() < deadline, f"the server did not get ready:\n{log}"
        time.sleep(0.05)  # another process's progress: nothing to wait on but the file
    report = json.loads(ready.read_text())
    assert {m["state"] for m in report["models"]} == {"READY"}, report
    keys = json.loads((server.home / "keys.json").read_text())
    server.inference, server.metrics = report["inference"], report["metrics"]
    server.key = keys["inference"]["key"]
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The lean server and the Quart one, with the same models."""
    launched = {
        name: _launch(tmp_path_factory.mktemp(name), lean)
        for name, lean in (("lean", True), ("quart", False))
    }
    try:
        yield {name: _wait_ready(server) for name, server in launched.items()}
    finally:
        for server in launched.values():
            server.process.terminate()
        for server in launched.values():
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


# --- what is compared ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a client sees of an answer, with the run-specific parts made comparable."""

    status: int
    headers: tuple[tuple[str, str], ...]
    request_id: str
    body: object
    complete: bool = True


def _seen(
    r: httpx.Response, body: bytes, sent_id: str | None = None, *, complete: bool = True
) -> Seen:
    rid = r.headers.get("x-request-id", "")
    seen_id = r.headers.get("x-seen-id")
    if sent_id is not None and rid == sent_id:
        kind = "the client's"
    elif seen_id is not None and rid == seen_id:
        kind = "the worker's"
    else:
        kind = "a uuid" if UUID.fullmatch(rid) else f"unexpected: {rid!r}"
    headers = tuple(
        (name, "(the worker's id)" if name == "x-seen-id" else r.headers[name])
        for name in HEADERS
        if name in r.headers
    )
    return Seen(r.status_code, headers, kind, _body(r, body), complete)


def _body(r: httpx.Response, body: bytes) -> object:
    if not r.headers.get("content-type", "").startswith("application/json") or not body:
        return body
    parsed = json.loads(body)
    if isinstance(parsed, dict):
        parsed.pop("logTail", None)  # the worker's log lines: pids and times
        if isinstance(parsed.get("message"), str):
            parsed["message"] = re.sub(r"pid \d+", "pid N", parsed["message"])
    return parsed


async def _metrics(client: httpx.AsyncClient, server: Server) -> dict[tuple, float]:
    text = (await client.get(f"{server.metrics}/metrics")).text
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTED:
                labels = {k: v for k, v in sample.labels.items() if k.lower() != "hostname"}
                counts[(sample.name, *sorted(labels.items()))] = sample.value
    return counts


def _delta(before: dict[tuple, float], after: dict[tuple, float]) -> dict[tuple, float]:
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    delta[("Requests2XX", ("Level", "Host"))] -= 1  # the first scrape's own answer
    return {k: v for k, v in delta.items() if v}


# --- the cases ----------------------------------------------------------------------------

Case = Callable[[httpx.AsyncClient, Server], Awaitable[Seen]]


async def _post(
    path: str,
    body: bytes,
    client: httpx.AsyncClient,
    server: Server,
    *,
    token: bool = True,
    **headers: str,
) -> Seen:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    sent.setdefault("Content-Type", "text/plain")
    if token:
        sent = server.bearer(**sent)
    r = await client.post(server.url(path), content=body, headers=sent)
    return _seen(r, r.content, sent.get("X-Request-Id"))


async def _form(client: httpx.AsyncClient, server: Server) -> Seen:
    r = await client.post(
        server.url("/predictions/probe"), data={"body": "from a form"}, headers=server.bearer()
    )
    return _seen(r, r.content)


async def _stream(client: httpx.AsyncClient, server: Server) -> Seen:
    url = server.url("/predictions/probe")
    async with client.stream("POST", url, content=b"stream", headers=server.bearer()) as r:
        chunks = [chunk async for chunk in r.aiter_raw()]
    return _seen(r, b"".join(chunks))


async def _cut(client: httpx.AsyncClient, server: Server) -> Seen:
    url = server.url("/predictions/probe")
    received = b""
    async with client.stream("POST", url, content=b"cut", headers=server.bearer()) as r:
        parts = r.aiter_raw()
        received += await anext(parts)
        (server.model_dir("probe") / "cut").touch()
        with pytest.raises(httpx.RemoteProtocolError):
            received += b"".join([chunk async for chunk in parts])
    return _seen(r, received, complete=False)


async def _queue_full(client: httpx.AsyncClient, server: Server) -> Seen:
    """One request in the worker, one in the queue of one, one refused at once."""
    url, here = server.url("/predictions/queue"), server.model_dir("queue")
    answers: list[httpx.Response] = []
    refused = trio.Event()

    async def post(body: bytes) -> None:
        answers.append(await client.post(url, content=body, headers=server.bearer()))
        if answers[-1].status_code == 503:
            refused.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, b"gate")
        await eventually(lambda: (here / "taken").exists())
        nursery.start_soon(post, b"queued or refused")
        nursery.start_soon(post, b"refused or queued")
        await refused.wait()  # the one that found the queue full, answered at once
        (here / "gate").touch()
    assert sorted(r.status_code for r in answers) == [200, 200, 503]
    [full] = [r for r in answers if r.status_code == 503]
    return _seen(full, full.content)


REST = ("protocol", "rest")


def _per_model(model: str, code: str, queued: bool = True) -> dict[tuple, float]:
    """The counters one answered request for ``model`` adds."""
    labels = (("model_name", model), ("model_version", "1.0"))
    counts = {
        ("ts_inference_requests_total", *labels): 1.0,
        ("supervisor_request_latency_seconds_count", ("code", code), *labels, REST): 1.0,
    }
    if queued:
        counts[("supervisor_queue_latency_seconds_count", *labels)] = 1.0
    return counts


def _responses(cls: int, count: float = 1.0) -> dict[tuple, float]:
    return {(f"Requests{cls}XX", ("Level", "Host")): count}


@dataclass(frozen=True)
class Expect:
    """What a case's answer must be, on both front ends."""

    status: int
    request_id: str = "a uuid"
    metrics: dict[tuple, float] | None = None
    complete: bool = True


_UNKNOWN = _responses(4)
CASES: dict[str, tuple[Case, Expect]] = {
    "success": (
        partial(_post, "/predictions/probe", b"hello", X_Trace="t-1"),
        Expect(200, "the worker's", {**_per_model("probe", "200"), **_responses(2)}),
    ),
    "explanation, version and path": (
        partial(_post, "/explanations/probe/1.0/a/b", b"why"),
        Expect(200, "the worker's", {**_per_model("probe", "200"), **_responses(2)}),
    ),
    "the client's request id": (
        partial(_post, "/predictions/probe", b"hi", X_Request_Id="trace-42.a:b"),
        Expect(200, "the client's"),
    ),
    "an unusable client request id": (
        partial(_post, "/predictions/probe", b"hi", X_Request_Id="no spaces, please"),
        Expect(200, "the worker's"),
    ),
    "percent-encoded name": (
        partial(_post, "/predictions/%70robe", b"hi"),
        Expect(200, "the worker's"),
    ),
    "form body": (_form, Expect(200, "the worker's")),
    "unknown model": (partial(_post, "/predictions/nope", b"x"), Expect(404, metrics=_UNKNOWN)),
    "unknown version": (
        partial(_post, "/predictions/probe/9.9", b"x"),
        Expect(404, metrics=_UNKNOWN),
    ),
    "missing token": (
        partial(_post, "/predictions/probe", b"x", token=False),
        Expect(401, metrics=_UNKNOWN),
    ),
    "wrong token": (
        partial(_post, "/predictions/probe", b"x", token=False, Authorization="Bearer nope"),
        Expect(401, metrics=_UNKNOWN),
    ),
    "bad deadline header": (
        partial(_post, "/predictions/probe", b"x", X_Client_Timeout_Ms="soon"),
        Expect(400, metrics={**_per_model("probe", "400", queued=False), **_responses(4)}),
    ),
    "deadline exceeded": (
        partial(_post, "/predictions/probe", b"sleep 1", X_Client_Timeout_Ms="100"),
        Expect(504, metrics={**_per_model("probe", "504"), **_responses(5)}),
    ),
    "the handler refuses the body": (
        partial(_post, "/predictions/probe", b"refuse"),
        Expect(400, metrics={**_per_model("probe", "400"), **_responses(4)}),
    ),
    "the handler fails": (partial(_post, "/predictions/probe", b"raise"), Expect(503)),
    "the worker dies": (
        partial(_post, "/predictions/crash", b"crash"),
        Expect(500, metrics={**_per_model("crash", "500"), **_responses(5)}),
    ),
    "queue full": (_queue_full, Expect(503)),
    "a stream": (_stream, Expect(200, metrics={**_per_model("probe", "200"), **_responses(2)})),
    "a stream cut midway": (
        _cut,
        Expect(200, complete=False, metrics={**_per_model("probe", "503"), **_responses(5)}),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_both_front_ends_answer_alike(servers: dict[str, Server], name: str) -> None:
    case, expect = CASES[name]
    seen: dict[str, tuple[Seen, dict[tuple, float]]] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for front_end, server in servers.items():
            before = await _metrics(client, server)
            answer = await case(client, server)
            seen[front_end] = answer, _delta(before, await _metrics(client, server))
    assert seen["lean"] == seen["quart"]
    answer, metrics = seen["lean"]
    assert (answer.status, answer.request_id, answer.complete) == (
        expect.status,
        expect.request_id,
        expect.complete,
    )
    if expect.metrics is not None:
        assert metrics == expect.metrics


def test_the_lean_front_end_loads_no_web_framework() -> None:
    code = (
        "import sys\n"
        "import supervisor.api.fastpath, supervisor.http.lean, supervisor.api.predict\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert "trio" in loaded  # the import ran
    assert not loaded & {"quart", "quart_trio", "werkzeug", "hypercorn", "flask"}
