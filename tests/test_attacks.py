"""Bad input and attacks against a real server: fuzzing, tokens, slow clients, path tricks.

The server is ``python -m supervisor serve`` in a child process on 127.0.0.1:0
with the built-in iris model. The fuzzer (schemathesis, positive and negative
cases) is driven by the OpenAPI documents the server itself serves, so a new
route is fuzzed, and checked for tokens, the day it is described. Archive and
URL attacks are in test_security.py (ZipSlip, SSRF, downloads) and
test_archive_fuzz.py (malformed archives).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.invariants import report
from tests.serveproc import ServeProcess, local_ports

pytestmark = pytest.mark.slow

IRIS = b"[5.1, 3.5, 1.4, 0.2]"
PATH_PARAMS = {"model_name": "iris", "model_version": "1.0", "extra_path": "x", "worker_id": "w1"}
# Scaling or unregistering the one real model would only test process limits, not input.
MUTATING = r"^/models/\{model_name\}(/\{model_version\})?$"
RESTART = r"/workers/\{worker_id\}/restart$"  # restarting its worker too (a new incarnation)


@pytest.fixture
async def server(nursery, tmp_path) -> ServeProcess:
    """The default server (tokens on, iris), with the model API on and an empty store."""
    store = tmp_path / "store"
    store.mkdir()
    args = (*local_ports(), "--enable-model-api", "--model-store", str(store))
    server = ServeProcess(tmp_path, *args)
    await nursery.start(server.run)
    await server.wait_listening()
    await eventually_ready(server)
    return server


async def eventually_ready(server: ServeProcess) -> None:
    inference = (await server.wait_listening())[0]
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(30):
            while True:
                r = await client.post(
                    f"{inference}/predictions/iris",
                    content=IRIS,
                    headers=server.headers("inference"),
                )
                if r.status_code == 200:
                    return
                await trio.sleep(0.05)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def assert_json_error(status: int, content: bytes, what: str) -> None:
    """Bad input gets a JSON error naming its status, never a 5xx or a traceback."""
    assert status < 500, f"{what}: {status} {content[:300]!r}"
    if status >= 400:
        body = json.loads(content)
        if what.split(" ")[-1].startswith(("/v2", "/v1/")) and "code" not in body:  # OIP, KServe
            assert body["error"], what
            return
        assert body["code"] == status, what
        assert body["type"]
        assert body["message"]
        assert "Traceback" not in body["message"]


# --- fuzzing from the server's own OpenAPI documents --------------------------------------


def fuzz(
    document: dict[str, Any], base_url: str, headers: dict[str, str], examples: int
) -> Counter:
    """Send ``examples`` generated requests per mode; returns the statuses seen per operation.

    Half the cases name the real model (``iris``), so bodies reach a worker; the
    other half get generated names. Scale and unregister keep generated names.
    """
    schema = schemathesis.openapi.from_dict(document)
    safe = schema.exclude(method=["PUT", "DELETE"], path_regex=MUTATING).exclude(path_regex=RESTART)
    strategies = [
        s.as_strategy(mode, path_parameters=params)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for s, params in ((safe, PATH_PARAMS), (schema, None))
    ]
    seen: Counter = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def send(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        seen[f"{case.method} {case.path} {response.status_code}"] += 1
        assert_json_error(response.status_code, response.content, f"{case.method} {case.path}")

    send()
    return seen


@pytest.mark.parametrize(
    "examples",
    [pytest.param(150, id="150"), pytest.param(3000, id="3000", marks=pytest.mark.chaos)],
)
async def test_fuzzing_the_api_from_its_own_documents_gets_no_5xx(server, examples):
    urls = await server.wait_listening()
    headers = {"inference": server.headers("inference"), "management": server.headers("management")}
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for kind, base in zip(("inference", "management", "metrics"), urls, strict=True):
            document = (await client.get(f"{base}/api-description")).json()
            seen = await trio.to_thread.run_sync(
                fuzz, document, base, headers.get(kind, {}), examples
            )
            statuses: Counter = Counter()
            for key, count in seen.items():
                statuses[key.rsplit(" ", 1)[1]] += count
            figures[kind] = {
                "requests": sum(seen.values()),
                "by_status": dict(sorted(statuses.items())),
            }
            assert seen
            if kind != "metrics":  # many requests, and the real model was reached, not only 404s
                assert sum(seen.values()) >= examples
                assert any(key.endswith((" 200", " 400")) and "{model_name}" in key for key in seen)
        # bad input never cost a worker: the first incarnation still serves
        [desc] = (await client.get(f"{urls[1]}/models/iris", headers=headers["management"])).json()
        assert desc["workers"][0]["incarnation"] == 1
        r = await client.post(
            f"{urls[0]}/predictions/iris", content=IRIS, headers=headers["inference"]
        )
        assert r.status_code == 200
    report(f"fuzz-{examples}", figures)


# --- tokens on every endpoint that needs one -------------------------------------------------


def secured_operations(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(method, path with parameters filled in, scheme)`` for every operation with a token."""
    found = []
    for template, item in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_PARAMS[m.group(1)], template)
        for method, op in item.items():
            if method != "parameters" and op.get("security"):
                [requirement] = op["security"]
                found.append((method.upper(), path, next(iter(requirement))))
    return found


async def test_every_endpoint_the_documents_secure_refuses_missing_and_wrong_tokens(server):
    urls = await server.wait_listening()
    keys = {kind: server.headers(kind)["Authorization"] for kind in ("inference", "management")}
    keys["API"] = server.headers("API")["Authorization"]
    right = {"inferenceToken": "inference", "managementToken": "management", "apiToken": "API"}
    checked = 0
    async with httpx.AsyncClient(timeout=30) as client:
        for kind, base in zip(("inference", "management", "metrics"), urls, strict=True):
            document = (await client.get(f"{base}/api-description")).json()
            for method, path, scheme in secured_operations(document):
                wrong_keys = [k for name, k in keys.items() if name != right[scheme]]
                for auth in (None, "Bearer not-a-key", "Bearer", keys[right[scheme]], *wrong_keys):
                    if auth == keys[right[scheme]]:
                        auth = auth.removeprefix("Bearer ")  # the right key without "Bearer"
                    headers = {"Authorization": auth} if auth is not None else {}
                    r = await client.request(method, f"{base}{path}", headers=headers)
                    assert r.status_code == 401, (method, path, auth, r.text)
                    assert r.json()["type"] == "InvalidKeyException"
                    assert r.headers["www-authenticate"].startswith("Bearer")
                checked += 1
            if kind == "metrics":
                assert secured_operations(document) == []
    assert checked >= 20  # predictions, explanations and every management route


async def test_the_right_token_opens_what_it_should(server):
    inference, management, metrics = await server.wait_listening()
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{management}/models", headers=server.headers("management"))
        assert r.status_code == 200
        r = await client.post(
            f"{inference}/predictions/iris", content=IRIS, headers=server.headers("inference")
        )
        assert r.status_code == 200
        for url in (f"{inference}/ping", f"{metrics}/metrics", f"{management}/api-description"):
            assert (await client.get(url)).status_code == 200  # open without a token


# --- slow clients ---------------------------------------------------------------------------

HEAD = b"POST /predictions/iris HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 400


async def trickle_head(port: int, every: float, closed: list[float]) -> None:
    """Send a request head one byte every ``every`` s; record when the server hung up."""
    started = trio.current_time()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for byte in HEAD:
            try:
                await stream.send_all(bytes([byte]))
                with trio.move_on_after(every):
                    if not await stream.receive_some():
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
        closed.append(trio.current_time() - started)


async def test_clients_trickling_their_headers_are_dropped_while_others_are_served(
    nursery, tmp_path
):
    server = ServeProcess(
        tmp_path, *local_ports(), "--dt", "--config", str(_config(tmp_path, read_timeout=2))
    )
    await nursery.start(server.run)
    inference = (await server.wait_listening())[0]
    closed: list[float] = []
    # one connection per request, as in test_security.py: a keep-alive this short can close
    # a reused idle connection just as the client sends on it
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=fresh) as client, trio.open_nursery() as slow:
        for _ in range(100):
            slow.start_soon(trickle_head, port_of(inference), 0.5, closed)
        for _ in range(10):  # meanwhile, a normal client is served at once
            with trio.fail_after(5):
                r = await client.post(f"{inference}/predictions/iris", content=IRIS)
            assert r.status_code == 200
            await trio.sleep(0.1)
    assert len(closed) == 100
    assert max(closed) < 5.0  # a trickle of bytes does not keep a connection open
    assert len(HEAD) * 0.5 > 100  # ... which it would for minutes if it did


def _config(tmp_path: Path, **server: object) -> Path:
    lines = ["[server]", *(f"{key} = {value!r}" for key, value in server.items())]
    path = tmp_path / "server.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- path tricks and malformed bodies --------------------------------------------------------

TRICKY_NAMES = [  # httpx resolves literal dot segments itself; raw ones are sent below
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fkey_file.json",
    "iris%00",
    "iris%2f1.0",
    "iris;1.0",
    "iris%20",
    "IRIS",
    "%C0%AE%C0%AE",  # overlong UTF-8 dots
    "%ff%fe",
    "x" * 5000,
    "\u2024\u2024",  # one-dot leaders
]


async def test_path_tricks_in_model_names_find_nothing_and_answer_json(server):
    inference, management, _ = await server.wait_listening()
    infer, manage = server.headers("inference"), server.headers("management")
    async with httpx.AsyncClient(timeout=30) as client:
        for name in TRICKY_NAMES:
            for url, headers in (
                (f"{inference}/predictions/{name}", infer),
                (f"{inference}/predictions/iris/{name}", infer),
                (f"{inference}/explanations/{name}/1.0/{name}", infer),
                (f"{management}/models/{name}", manage),
                (f"{management}/models/iris/{name}", manage),
            ):
                method = "GET" if url.startswith(management) else "POST"
                r = await client.request(method, url, content=IRIS, headers=headers)
                assert_json_error(r.status_code, r.content, url)
                # werkzeug decodes %2F before routing: "iris%2f1.0" is iris version 1.0
                same_model = r.status_code == 200 and name.lower().startswith("iris%2f")
                assert r.status_code in (400, 404, 405, 414) or same_model, (url, r.status_code)
    for base, headers in ((inference, infer), (management, manage)):
        for target in RAW_TARGETS:
            status, content = await raw_request(base, target, headers)
            assert_json_error(status, content, target)
            assert status in (400, 404, 405), (target, status)
            assert b"Bearer" not in content  # the key file is never served


RAW_TARGETS = [
    "/predictions/../key_file.json",
    "/predictions/iris/../../key_file.json",
    "/models/iris/../../../etc/passwd",
    "/../key_file.json",
    "/key_file.json",
    "/%2e%2e/key_file.json",
    "//predictions/iris",
]


async def raw_request(base: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side path normalisation)."""
    conn = h11.Connection(h11.CLIENT)
    head = [("Host", "127.0.0.1"), *headers.items()]
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(base))
    status, body = 0, b""
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=head)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, body


MULTIPART_BODIES = [
    ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="data"\r\n\r\nabc'),
    ("multipart/form-data; boundary=x", b"no boundary in here"),
    (
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--x--",
    ),
    ("multipart/form-data; boundary=x", b"--x\r\n\r\n\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"'),
    (
        "multipart/form-data; boundary=x",
        b'--y\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--y--\r\n',
    ),
    ("multipart/form-data; boundary=" + "b" * 200, b"--" + b"b" * 200 + b"\r\n"),
    (
        "multipart/form-data; boundary=x",
        b"".join(
            b'--x\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n' % i
            for i in range(2000)
        )
        + b"--x--\r\n",
    ),
    ("application/x-www-form-urlencoded", b"%zz=%zz&&&=&data"),
    ("application/x-www-form-urlencoded", b"\xff\xfe=\x00"),
]


@pytest.mark.parametrize(("content_type", "body"), MULTIPART_BODIES)
async def test_malformed_forms_get_a_json_answer_and_cost_no_worker(server, content_type, body):
    inference, management, _ = await server.wait_listening()
    headers = {**server.headers("inference"), "Content-Type": content_type}
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{inference}/predictions/iris", content=body, headers=headers)
        assert_json_error(r.status_code, r.content, content_type)
        [desc] = (
            await client.get(f"{management}/models/iris", headers=server.headers("management"))
        ).json()
        assert desc["workers"][0]["incarnation"] == 1


MALFORMED_JSON = [
    b"{",
    b'{"url": ',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"url": "iris.mar", "initial_workers": "many"}',
    b'{"url": "iris.mar", "batch_size": 1e999}',
    b'{"url": NaN}',
    b"\xff\xfe\x00{",
    b'"just a string"',
    b"null",
]


@pytest.mark.parametrize("body", MALFORMED_JSON, ids=range(len(MALFORMED_JSON)))
async def test_malformed_json_bodies_of_management_calls_get_400(server, body):
    management = (await server.wait_listening())[1]
    headers = {**server.headers("management"), "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        for method, path in (("POST", "/models"), ("PUT", "/models/iris/1.0/set-default")):
            r = await client.request(method, f"{management}{path}", content=body, headers=headers)
            assert_json_error(r.status_code, r.content, f"{path} {body[:40]!r}")
            assert r.status_code in (400, 404)


# --- answers given before the body arrived ------------------------------------------------


async def exchange_split(stream, conn: h11.Connection, target: str, headers) -> int:
    """Send the head, then the body 50 ms later; return the status (0: connection closed)."""
    body = IRIS
    head = [("Host", "127.0.0.1"), ("Content-Length", str(len(body))), *headers]
    await stream.send_all(conn.send(h11.Request(method="POST", target=target, headers=head)))
    await trio.sleep(0.05)
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status


@pytest.mark.parametrize(
    ("port", "target", "auth"),
    [
        (0, "/predictions/iris", "Bearer wrong"),  # 401 from the token check
        (0, "/no/such/route", "inference"),  # 404 from routing
        (1, "/models/iris", "management"),  # a route that never reads a body (405)
        (1, "/models/nope/1.0/set-default", "management"),  # 404 before the body is read
    ],
)
async def test_an_answer_given_before_the_body_arrived_keeps_the_connection_usable(
    server, port, target, auth
):
    base = (await server.wait_listening())[port]
    if not auth.startswith("Bearer"):
        auth = server.headers(auth)["Authorization"]
    answered = reconnected = 0
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(base))
    conn = h11.Connection(h11.CLIENT)
    try:
        for _ in range(30):
            with trio.fail_after(5):  # a hang until read_timeout was the bug
                status = await exchange_split(stream, conn, target, [("Authorization", auth)])
            assert status >= 400
            answered += 1
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:  # the server said it would close: a fresh connection, as a client would
                reconnected += 1
                await stream.aclose()
                stream = await trio.open_tcp_stream("127.0.0.1", port_of(base))
                conn = h11.Connection(h11.CLIENT)
    finally:
        await stream.aclose()
    assert answered == 30
    assert reconnected == 0  # the body was received: the connection stays open
