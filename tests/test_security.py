"""Secure by default, end to end: tokens, model API control, URLs, archives, limits.

Every test runs a real server (Hypercorn on 127.0.0.1:0, real worker processes)
and talks to it over real sockets. The only other peer ever contacted is a tiny
archive server on 127.0.0.1 started by the test itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import h11
import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER, make_mar

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1:0"
LOOPBACK_ONLY = (r"http://127\.0\.0\.1:\d+/.*",)
TOKEN_FAILED = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)


def secure_config(tmp_path: Path, *models: ModelConfig, **settings) -> ServerConfig:
    """The default (secure) settings; only the ports and the key file's place differ."""
    return ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        key_file=str(tmp_path / "key_file.json"),
        models=models,
        shutdown_grace=1.0,
        **settings,
    )


def echo_model(handler_dir) -> ModelConfig:
    directory = handler_dir("echo_handler", ECHO_HANDLER)
    return ModelConfig(name="echo", handler="echo_handler", model_dir=str(directory))


def read_keys(config: ServerConfig) -> dict[str, str]:
    data = json.loads(Path(config.key_file).read_text())
    return {kind: data[kind]["key"] for kind in ("inference", "management", "API")}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def port_of(base_url: str) -> int:
    port = urlsplit(base_url).port
    assert port is not None
    return port


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


async def start(nursery: trio.Nursery, config: ServerConfig) -> BaseURLs:
    """Run a server in ``nursery`` (cancelled when the test ends)."""
    endpoints: BaseURLs = await nursery.start(
        partial(serve, config, shutdown=trio.Event(), handle_signals=False)
    )
    return endpoints


async def wait_ready(
    client: httpx.AsyncClient, endpoints: BaseURLs, name: str, headers: dict[str, str]
) -> None:
    with trio.fail_after(30):
        while True:
            r = await client.get(f"{endpoints.management}/models/{name}", headers=headers)
            assert r.status_code == 200, r.text
            if r.json()[0]["state"] == "READY":
                return
            await trio.sleep(0.05)


async def predict(
    client: httpx.AsyncClient, endpoints: BaseURLs, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(
        f"{endpoints.inference}/predictions/echo",
        content=body,
        headers={"Content-Type": "text/plain", **headers},
    )


def assert_error(r: httpx.Response, code: int, kind: str, message: str = "") -> None:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["code"] == code
    assert body["type"] == kind
    assert message in body["message"]


# --- 1. tokens -------------------------------------------------------------------------


async def test_tokens_are_on_by_default_and_the_key_file_goes_away(tmp_path, handler_dir, client):
    config = secure_config(tmp_path, echo_model(handler_dir))
    assert not config.disable_token_authorization  # the default, untouched
    key_file = trio.Path(config.key_file)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(
            partial(serve, config, shutdown=shutdown, handle_signals=False)
        )
        assert stat.S_IMODE((await key_file.stat()).st_mode) == 0o600
        layout = json.loads(await key_file.read_text())
        assert set(layout) == {"management", "inference", "API"}
        keys = read_keys(config)
        assert len(set(keys.values())) == 3
        assert all(len(key) >= 8 for key in keys.values())
        await wait_ready(client, endpoints, "echo", bearer(keys["management"]))
        await _check_inference_port(client, endpoints, keys)
        await _check_management_and_metrics_ports(client, endpoints, keys)
        shutdown.set()
    assert not await key_file.exists()
    assert list(tmp_path.glob(".key_file.*")) == []


async def _check_inference_port(
    client: httpx.AsyncClient, endpoints: BaseURLs, keys: dict[str, str]
) -> None:
    r = await predict(client, endpoints, b"hi", {})
    assert_error(r, 401, "InvalidKeyException", TOKEN_FAILED)
    assert r.headers["www-authenticate"].startswith("Bearer")
    for wrong in ("Bearer not-the-key", f"Bearer {keys['management']}", f"Bearer {keys['API']}"):
        r = await predict(client, endpoints, b"hi", {"Authorization": wrong})
        assert_error(r, 401, "InvalidKeyException")
    r = await predict(client, endpoints, b"hi", {"Authorization": keys["inference"]})
    assert_error(r, 401, "InvalidKeyException")  # no "Bearer"
    r = await predict(client, endpoints, b"hi", bearer(keys["inference"]))
    assert r.status_code == 200
    assert r.json()["echo"] == "hi"
    assert (await client.get(f"{endpoints.inference}/ping")).json() == {"status": "Healthy"}
    assert (await client.request("OPTIONS", f"{endpoints.inference}/")).status_code == 200
    assert (await client.get(f"{endpoints.inference}/api-description")).status_code == 200


async def _check_management_and_metrics_ports(
    client: httpx.AsyncClient, endpoints: BaseURLs, keys: dict[str, str]
) -> None:
    url = f"{endpoints.management}/models"
    assert_error(await client.get(url), 401, "InvalidKeyException", TOKEN_FAILED)
    r = await client.get(url, headers=bearer(keys["inference"]))
    assert_error(r, 401, "InvalidKeyException")
    r = await client.get(url, headers=bearer(keys["management"]))
    assert r.status_code == 200
    assert [m["modelName"] for m in r.json()["models"]] == ["echo"]
    assert (await client.request("OPTIONS", f"{endpoints.management}/")).status_code == 200
    r = await client.get(f"{endpoints.management}/api-description")
    assert r.status_code == 200
    assert "openapi" in r.json()
    r = await client.get(f"{endpoints.metrics}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


async def test_token_rotation_needs_the_api_key(nursery, tmp_path, handler_dir, client):
    config = secure_config(tmp_path, echo_model(handler_dir))
    endpoints = await start(nursery, config)
    keys = read_keys(config)
    await wait_ready(client, endpoints, "echo", bearer(keys["management"]))
    url = f"{endpoints.management}/token"
    r = await client.get(url, params={"type": "inference"})
    assert_error(r, 401, "InvalidKeyException", "API key")
    for not_api in (keys["management"], keys["inference"]):
        r = await client.get(url, params={"type": "inference"}, headers=bearer(not_api))
        assert_error(r, 401, "InvalidKeyException", "API key")
    r = await client.get(url, params={"type": "bogus"}, headers=bearer(keys["API"]))
    assert_error(r, 400, "BadRequestException")
    assert (await predict(client, endpoints, b"a", bearer(keys["inference"]))).status_code == 200

    r = await client.get(url, params={"type": "inference"}, headers=bearer(keys["API"]))
    assert r.status_code == 200
    new_key = r.json()["key"]
    assert new_key not in keys.values()
    r = await predict(client, endpoints, b"b", bearer(keys["inference"]))
    assert_error(r, 401, "InvalidKeyException")
    r = await predict(client, endpoints, b"c", bearer(new_key))
    assert r.status_code == 200
    assert r.json()["echo"] == "c"
    # the other keys are untouched
    r = await client.get(f"{endpoints.management}/models", headers=bearer(keys["management"]))
    assert r.status_code == 200


async def test_token_rotation_rewrites_the_key_file(nursery, tmp_path, client):
    config = secure_config(tmp_path)
    endpoints = await start(nursery, config)
    keys = read_keys(config)
    r = await client.get(
        f"{endpoints.management}/token", params={"type": "inference"}, headers=bearer(keys["API"])
    )
    assert r.status_code == 200
    assert read_keys(config)["inference"] == r.json()["key"]
    assert stat.S_IMODE((await trio.Path(config.key_file).stat()).st_mode) == 0o600


# --- 2. tokens disabled ----------------------------------------------------------------


async def test_disabled_tokens_need_none_and_write_no_key_file(
    nursery, tmp_path, handler_dir, client
):
    config = secure_config(tmp_path, echo_model(handler_dir), disable_token_authorization=True)
    endpoints = await start(nursery, config)
    await wait_ready(client, endpoints, "echo", {})
    r = await predict(client, endpoints, b"open", {})
    assert r.status_code == 200
    assert r.json()["echo"] == "open"
    assert (await client.get(f"{endpoints.management}/models")).status_code == 200
    assert (await client.get(f"{endpoints.management}/models/echo")).status_code == 200
    assert (await client.get(f"{endpoints.metrics}/metrics")).status_code == 200
    r = await client.get(f"{endpoints.management}/token", params={"type": "inference"})
    assert_error(r, 400, "BadRequestException", "disabled")
    assert not await trio.Path(config.key_file).exists()
    assert list(tmp_path.glob("*key_file*")) == []


# --- 3. model API control --------------------------------------------------------------


async def test_model_api_is_off_by_default(nursery, tmp_path, client):
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER, module="echo_handler")
    config = secure_config(tmp_path, model_store=str(store))
    assert not config.enable_model_api
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    r = await client.post(f"{endpoints.management}/models?url=echo.mar", headers=auth)
    assert_error(r, 405, "MethodNotAllowedException", "enable-model-api")
    r = await client.delete(f"{endpoints.management}/models/x", headers=auth)
    assert_error(r, 405, "MethodNotAllowedException")
    r = await client.get(f"{endpoints.management}/models", headers=auth)
    assert r.json() == {"models": []}
    # without a token the answer is 401, not a hint about the model API
    r = await client.post(f"{endpoints.management}/models?url=echo.mar")
    assert_error(r, 401, "InvalidKeyException")


async def test_model_api_registers_only_from_the_store(nursery, tmp_path, client):
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER, module="echo_handler")
    (tmp_path / "outside.mar").write_bytes((store / "echo.mar").read_bytes())
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    keys = read_keys(config)
    auth = bearer(keys["management"])
    models = f"{endpoints.management}/models"

    r = await client.post(models, params={"url": "echo.mar", "initial_workers": 1}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 'Model "echo" Version: 1.0 registered with 1 initial workers'}
    r = await predict(client, endpoints, b"registered", bearer(keys["inference"]))
    assert r.status_code == 200
    assert r.json()["echo"] == "registered"

    for url in ("../outside.mar", "..", "sub/echo.mar", "/etc/passwd", "..\\outside.mar"):
        r = await client.post(models, params={"url": url}, headers=auth)
        assert_error(r, 404, "ModelNotFoundException", "Relative path is not allowed")
    r = await client.post(models, params={"url": "missing.mar"}, headers=auth)
    assert_error(r, 404, "ModelNotFoundException", "Model not found at: missing.mar")
    r = await client.post(models, headers=auth)
    assert_error(r, 400, "BadRequestException", "Parameter url is required.")
    r = await client.post(models, params={"url": "echo.mar"}, headers=auth)
    assert_error(r, 409, "ConflictStatusException")
    r = await predict(client, endpoints, b"still", bearer(keys["inference"]))
    assert r.status_code == 200


# --- 4. allowed_urls -------------------------------------------------------------------


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await stream.receive_some()
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.ConnectionClosed):
            return None


class ArchiveServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 with one good archive and three traps.

    ``/echo.mar``: the archive; ``/redirect.mar``: a redirect to localhost (not
    allowed); ``/huge.mar``: an endless chunked body; ``/slow.mar``: a body that
    stalls after its first bytes. Every requested path is recorded in ``hits``.
    """

    def __init__(self, archive: bytes) -> None:
        self.archive = archive
        self.hits: list[str] = []
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await _read_request(stream, conn)
            if request is None:
                return
            path = request.target.decode()
            self.hits.append(path)
            await self._answer(stream, conn, path)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the downloader gave up, as it should
        finally:
            await stream.aclose()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, path: str) -> None:
        async def send(*events: h11.Event) -> None:
            for event in events:
                data = conn.send(event)
                if data:
                    await stream.send_all(data)

        if path == "/echo.mar":
            length = str(len(self.archive))
            await send(h11.Response(status_code=200, headers=[("Content-Length", length)]))
            await send(h11.Data(data=self.archive), h11.EndOfMessage())
        elif path in ("/redirect.mar", "/metadata.mar"):
            where = f"http://localhost:{self.port}/redirected.mar"
            if path == "/metadata.mar":  # a cloud metadata service, via an allowed URL
                where = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
            headers = [("Location", where), ("Content-Length", "0")]
            await send(h11.Response(status_code=302, headers=headers), h11.EndOfMessage())
        elif path == "/huge.mar":
            headers = [("Transfer-Encoding", "chunked")]
            await send(h11.Response(status_code=200, headers=headers))
            while True:
                await send(h11.Data(data=b"\0" * 65536))
        elif path == "/slow.mar":
            await send(h11.Response(status_code=200, headers=[("Content-Length", "100000")]))
            await send(h11.Data(data=b"PK"))
            await trio.sleep_forever()
        else:
            body = b"not here"
            await send(h11.Response(status_code=404, headers=[("Content-Length", "8")]))
            await send(h11.Data(data=body), h11.EndOfMessage())


@pytest.fixture
async def archives(nursery, tmp_path) -> ArchiveServer:
    source = make_mar(tmp_path / "published", "echo", ECHO_HANDLER, module="echo_handler")
    server = ArchiveServer(source.read_bytes())
    await nursery.start(server.serve)
    return server


async def test_remote_urls_are_refused_by_default(nursery, tmp_path, client, archives):
    store = tmp_path / "store"
    store.mkdir()
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    assert config.allowed_urls == ()
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    refused = (
        archives.url("/echo.mar"),
        f"file://{tmp_path}/published/echo.mar",
        "file:/etc/passwd",
        "FILE:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "HTTP://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{archives.port}/echo.mar",
        f"https://127.0.0.1:{archives.port}/echo.mar",
    )
    for url in refused:
        r = await client.post(f"{endpoints.management}/models", params={"url": url}, headers=auth)
        assert_error(r, 404, "ModelNotFoundException", "does not match any allowed URL(s)")
    # other schemes are no URLs at all: names with a "/" cannot be in the store
    for url in ("gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/echo.mar", "//169.254.169.254/x"):
        r = await client.post(f"{endpoints.management}/models", params={"url": url}, headers=auth)
        assert_error(r, 404, "ModelNotFoundException", "Relative path is not allowed")
    assert archives.hits == []
    assert list(store.iterdir()) == []


async def start_downloader(nursery: trio.Nursery, tmp_path: Path) -> tuple[BaseURLs, Path, dict]:
    """A server that may fetch archives from 127.0.0.1 only: 64 KiB at most, within 1 s."""
    store = tmp_path / "store"
    store.mkdir()
    config = secure_config(
        tmp_path,
        model_store=str(store),
        enable_model_api=True,
        allowed_urls=LOOPBACK_ONLY,
        max_download_size=64 * 1024,
        download_timeout=1.0,
    )
    endpoints = await start(nursery, config)
    return endpoints, store, read_keys(config)


async def register(
    client: httpx.AsyncClient, endpoints: BaseURLs, url: str, key: str
) -> httpx.Response:
    with trio.fail_after(10):
        return await client.post(
            f"{endpoints.management}/models",
            params={"url": url, "initial_workers": 1},
            headers=bearer(key),
        )


async def test_allowed_urls_are_downloaded_and_served(nursery, tmp_path, client, archives):
    endpoints, store, keys = await start_downloader(nursery, tmp_path)
    r = await register(client, endpoints, archives.url("/echo.mar"), keys["management"])
    assert r.status_code == 200, r.text
    assert (store / "echo.mar").read_bytes() == archives.archive
    r = await predict(client, endpoints, b"remote", bearer(keys["inference"]))
    assert r.status_code == 200
    assert r.json()["echo"] == "remote"

    r = await register(client, endpoints, archives.url("/echo.mar"), keys["management"])
    assert_error(r, 400, "DownloadArchiveException", "already exists")
    # unregistering removes the download, so the same URL can be registered again
    r = await client.delete(
        f"{endpoints.management}/models/echo", headers=bearer(keys["management"])
    )
    assert r.status_code == 200
    assert not (store / "echo.mar").exists()
    r = await register(client, endpoints, archives.url("/echo.mar"), keys["management"])
    assert r.status_code == 200, r.text
    for path in ("/redirect.mar", "/metadata.mar"):
        r = await register(client, endpoints, archives.url(path), keys["management"])
        assert_error(r, 400, "DownloadArchiveException", "redirect to a URL that is not allowed")
    assert "/redirected.mar" not in archives.hits
    for url in (
        f"http://localhost:{archives.port}/echo.mar",
        "file:///etc/passwd",
        f"http://127.0.0.1:{archives.port}@169.254.169.254/echo.mar",  # userinfo trick
        f"http://127.0.0.1.nip.io:{archives.port}/echo.mar",  # a name that resolves home
        "http://169.254.169.254/latest/meta-data/",
    ):
        r = await register(client, endpoints, url, keys["management"])
        assert_error(r, 404, "ModelNotFoundException", "does not match any allowed URL(s)")
    # refused URLs: no hit
    assert archives.hits == ["/echo.mar", "/echo.mar", "/redirect.mar", "/metadata.mar"]
    assert sorted(p.name for p in store.iterdir()) == ["echo.mar"]


# Abandoning a streamed httpx response under trio leaves httpx's and httpcore's
# internal async generators unexhausted; trio warns when they are collected
# (encode/httpx#3686). The connection itself is closed; only the warning is noise.
async def test_downloads_are_bounded_in_size_and_time(nursery, tmp_path, client, archives):
    endpoints, store, keys = await start_downloader(nursery, tmp_path)
    r = await register(client, endpoints, archives.url("/huge.mar"), keys["management"])
    assert_error(r, 400, "DownloadArchiveException", "over 65536 bytes")
    started = trio.current_time()
    r = await register(client, endpoints, archives.url("/slow.mar"), keys["management"])
    assert_error(r, 400, "DownloadArchiveException", "over 1 s")
    assert trio.current_time() - started < 5
    assert archives.hits == ["/huge.mar", "/slow.mar"]
    assert list(store.iterdir()) == []  # no partial downloads left behind


# --- 5. zip slip -----------------------------------------------------------------------


def _write_zip(path: Path, evil_name: str) -> None:
    manifest = {
        "runtime": "python",
        "model": {"modelName": path.stem, "modelVersion": "1.0", "handler": "echo_handler.py"},
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        archive.writestr("echo_handler.py", ECHO_HANDLER)
        archive.writestr(evil_name, "print('escaped')\n")


def _write_tar(path: Path, evil_name: str) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in (("echo_handler.py", ECHO_HANDLER), (evil_name, "print('escaped')\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


async def test_archives_cannot_write_outside_their_directory(
    nursery, tmp_path, client, monkeypatch
):
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_parent))  # the server's scratch dir
    store = tmp_path / "store"
    store.mkdir()
    _write_zip(store / "climb.mar", "../evil.py")
    _write_zip(store / "deep.mar", "sub/../../evil.py")
    _write_zip(store / "absolute.mar", "/abs.py")
    _write_tar(store / "climb.tar.gz", "../evil.py")
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    for name in ("climb.mar", "deep.mar", "absolute.mar", "climb.tar.gz"):
        r = await client.post(f"{endpoints.management}/models", params={"url": name}, headers=auth)
        assert_error(r, 400, "InvalidModelException", "unsafe entry")
    assert list(tmp_path.rglob("evil.py")) == []
    assert list(tmp_path.rglob("abs.py")) == []
    assert not await trio.Path("/abs.py").exists()
    [scratch] = scratch_parent.glob("trio-supervisor-*")
    # the refused archives' directories are gone; only the server's owner marker is there
    assert [p.name for p in scratch.iterdir()] == ["owner.json"]
    r = await client.get(f"{endpoints.management}/models", headers=auth)
    assert r.json() == {"models": []}


# --- 6. request size -------------------------------------------------------------------


async def _exchange_declaring(port: int, declared: int, body: bytes, key: str) -> tuple[int, bytes]:
    """Send headers that declare ``declared`` bytes, then only ``body``; read the answer."""
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "127.0.0.1"),
        ("Content-Length", str(declared)),
        ("Content-Type", "text/plain"),
        ("Authorization", f"Bearer {key}"),
    ]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = h11.Request(method="POST", target="/predictions/echo", headers=headers)
        await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)))
        status, received = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, received


async def test_oversized_bodies_get_413(nursery, tmp_path, handler_dir, client):
    config = secure_config(tmp_path, echo_model(handler_dir), max_request_size=1024)
    endpoints = await start(nursery, config)
    keys = read_keys(config)
    await wait_ready(client, endpoints, "echo", bearer(keys["management"]))
    auth = bearer(keys["inference"])
    r = await predict(client, endpoints, b"x" * 2048, auth)
    assert_error(r, 413, "RequestEntityTooLargeException")
    r = await predict(client, endpoints, b"y" * 512, auth)
    assert r.status_code == 200
    assert r.json()["echo"] == "y" * 512

    started = trio.current_time()
    with trio.fail_after(5):
        status, body = await _exchange_declaring(
            port_of(endpoints.inference), 10_000_000, b"tiny", keys["inference"]
        )
    assert status == 413
    assert json.loads(body)["code"] == 413
    assert trio.current_time() - started < 2  # answered from the headers alone


# --- 7. slow clients -------------------------------------------------------------------

PARTIAL_HEAD = b"POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-"


def partial_body(key: str) -> bytes:
    """A request whose headers are complete and whose body stops after 3 of 100 bytes."""
    return (
        "POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\nabc"
    ).encode()


async def _seconds_until_answered_or_closed(stream: trio.SocketStream, started: float) -> float:
    """Read until the server answers or closes; how long after ``started`` that was."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some()
    return trio.current_time() - started


async def _open_stalled(port: int, data: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    return stream


async def test_stalled_clients_are_dropped(nursery, tmp_path, handler_dir):
    # one connection per request: with keep-alive this short, a reused idle
    # connection can be closed by the server just as the client sends on it
    client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
    config = secure_config(tmp_path, echo_model(handler_dir), read_timeout=1, keep_alive_timeout=2)
    endpoints = await start(nursery, config)
    keys = read_keys(config)
    await wait_ready(client, endpoints, "echo", bearer(keys["management"]))
    port = port_of(endpoints.inference)
    started = trio.current_time()
    in_body = await _open_stalled(port, partial_body(keys["inference"]))
    in_head = await _open_stalled(port, PARTIAL_HEAD)
    async with in_body, in_head:
        r = await predict(client, endpoints, b"meanwhile", bearer(keys["inference"]))
        assert r.status_code == 200
        assert r.json()["echo"] == "meanwhile"
        with trio.fail_after(5):
            body_after = await _seconds_until_answered_or_closed(in_body, started)
            head_after = await _seconds_until_answered_or_closed(in_head, started)
    assert 0.5 < body_after < 3.0  # read_timeout
    assert 0.5 < head_after < 3.5  # keep_alive_timeout: no request has begun yet
    r = await predict(client, endpoints, b"after", bearer(keys["inference"]))
    assert r.status_code == 200
    await client.aclose()


async def test_a_client_stalled_in_its_headers_is_dropped_after_read_timeout(nursery, tmp_path):
    config = secure_config(tmp_path, read_timeout=1)
    endpoints = await start(nursery, config)
    started = trio.current_time()
    async with await _open_stalled(port_of(endpoints.inference), PARTIAL_HEAD) as stream:
        with trio.move_on_after(3):
            await _seconds_until_answered_or_closed(stream, started)
    assert trio.current_time() - started < 3.0


async def _trickle(stream: trio.SocketStream) -> None:
    try:
        while True:
            await trio.sleep(0.2)
            await stream.send_all(b"x")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def test_a_client_trickling_its_body_is_dropped(nursery, tmp_path):
    config = secure_config(tmp_path, read_timeout=1, disable_token_authorization=True)
    endpoints = await start(nursery, config)
    head = b"POST /predictions/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
    started = trio.current_time()
    elapsed = None
    stream = await _open_stalled(port_of(endpoints.inference), head)
    async with stream, trio.open_nursery() as trickling:
        trickling.start_soon(_trickle, stream)
        with trio.move_on_after(4):
            elapsed = await _seconds_until_answered_or_closed(stream, started)
        trickling.cancel_scope.cancel()
    assert elapsed is not None
    assert elapsed < 3.0
