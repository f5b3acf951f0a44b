"""Hardening (issue 11): URL normal form, download names, the key file, crash leftovers.

The pure URL rules get exhaustive tests; everything else runs real parts: servers
on 127.0.0.1 (in-process ``serve()`` or ``python -m supervisor serve`` children
that are really SIGKILLed), a real ``http.server`` publishing archives, real
clients.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import posixpath
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import DownloadFailed, InvalidRequest, ModelNotFound
from supervisor.models.sweep import OWNER_FILE, open_scratch, sweep_leftovers
from supervisor.models.urlpolicy import (
    allowed_url,
    archive_name,
    normalize_url,
    remove_dot_segments,
)
from supervisor.server import serve
from tests.helpers import ECHO_HANDLER, eventually, make_mar
from tests.serveproc import ServeProcess, local_ports
from tests.test_security import (
    assert_error,
    bearer,
    read_keys,
    register,
    secure_config,
    start,
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield client


# --- the normal form (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://h/ok/../other/x.mar", "http://h/other/x.mar"),
        ("http://h/ok/%2e%2e/other/x.mar", "http://h/other/x.mar"),
        ("http://h/ok/%2E%2e/other/x.mar", "http://h/other/x.mar"),
        ("http://h/ok/.%2E/other/x.mar", "http://h/other/x.mar"),
        ("http://h/ok/./x.mar", "http://h/ok/x.mar"),
        ("http://h/ok/a/b/../../../../x.mar", "http://h/x.mar"),
        (
            "HTTP://Models.Example.COM:8080/A/%7e/%7A.mar",
            "http://models.example.com:8080/A/~/z.mar",
        ),
        ("http://User:Pw@HOST/x.mar", "http://User:Pw@host/x.mar"),
        ("http://h/x%20y.mar?v=%2f&w=%41#/ok/", "http://h/x%20y.mar?v=%2F&w=A"),
        ("file:///srv/published/../outside/x.mar", "file:///srv/outside/x.mar"),
        ("file:///srv/published/%2e%2e/outside/x.mar", "file:///srv/outside/x.mar"),
        ("file:/srv/x.mar", "file:///srv/x.mar"),
        ("FILE:///srv/x.mar", "file:///srv/x.mar"),
    ],
)
def test_urls_are_put_in_normal_form(url, normal):
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h/x%00.mar", "control character"),
        ("http://h/x%0a.mar", "control character"),
        ("http://h/x\x00.mar", "control character"),
        ("http://h/ok/..%2Fother/x.mar", "encoded '/'"),
        ("http://h/ok/..%2fother/x.mar", "encoded '/'"),
        ("http://h/ok/..%5Cother/x.mar", "encoded '/'"),
        ("http://h/ok/..\\other/x.mar", "encoded '/'"),
        ("http://h/%zz.mar", "starts no escape"),
        ("http://h/x%2.mar", "starts no escape"),
        ("http://h:99999/x.mar", "Malformed URL"),
        ("http://[::1/x.mar", "Malformed URL"),
    ],
)
def test_malformed_urls_are_refused(url, why):
    with pytest.raises(InvalidRequest, match=re.escape(why)):
        normalize_url(url)


def test_rfc3986_examples_of_dot_segment_removal():
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("mid/content=5/../6") == "mid/6"
    assert remove_dot_segments("/..") == "/"
    assert remove_dot_segments("/a/.") == "/a/"
    assert remove_dot_segments("") == ""


_SEGMENTS = st.sampled_from(["ok", "other", "x.mar", "~a", ".", "..", "%2e%2e", ".%2E", "%2E."])


@given(st.lists(st.sampled_from(["a", "b", ".", ".."]), max_size=12))
def test_dot_segment_removal_agrees_with_normpath(segments):
    path = "/" + "/".join(segments)
    result = remove_dot_segments(path)
    assert not {".", ".."} & set(result.split("/"))
    assert posixpath.normpath(result) == posixpath.normpath(path)
    assert remove_dot_segments(result) == result


@given(st.lists(_SEGMENTS, max_size=10), st.sampled_from(["http://h", "HTTP://H", "file://"]))
def test_the_normal_form_is_a_fixed_point(segments, base):
    normal = normalize_url(f"{base}/{'/'.join(segments)}")
    assert normalize_url(normal) == normal


@given(st.lists(_SEGMENTS, max_size=10))
def test_what_matches_an_allowed_prefix_is_fetched_and_resolved_under_it(segments):
    url = "http://h/ok/" + "/".join(segments)
    try:
        normal = allowed_url(url, (r"http://h/ok/.*",))
    except ModelNotFound:
        return
    sent = httpx.URL(normal).raw_path.decode()
    assert sent == urlsplit(normal).path  # httpx sends the very path that matched
    # a server that decodes and resolves the path still stays under /ok/
    assert posixpath.normpath(unquote(sent)).startswith("/ok")


def test_archive_names_are_file_names():
    assert archive_name("http://h/a/echo%20v2.mar") == "echo v2.mar"
    assert archive_name("http://h/" + "a" * 251 + ".mar") == "a" * 251 + ".mar"
    for url, why in (
        ("http://h/" + "a" * 300 + ".mar", "file name too long: 304 bytes, at most 255"),
        ("http://h/dir/", "no file name"),
        ("http://h/.hidden.mar", "no file name"),
    ):
        with pytest.raises(DownloadFailed, match=re.escape(why)):
            archive_name(url)


# --- a real http.server publishing archives ------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files from the published root, plus a redirect, any-name archives and a stall."""

    server: _Published

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        if self.path == "/ok/jump.mar":  # an allowed URL that redirects out of /ok/
            self.send_response(302)
            self.send_header("Location", "/ok/%2e%2e/other/echo.mar")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/ok/any/"):  # names no file system could hold
            self._send(self.server.archive)
        elif self.path == "/ok/stall.mar":  # a download that never ends
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"PK" * 512)
            self.wfile.flush()
            self.server.release.wait(60)
        else:
            super().do_GET()  # decodes the path and resolves its dot segments

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Published(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.archive = (root / "ok" / "echo.mar").read_bytes()
        self.hits: list[str] = []
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def allowed(self) -> tuple[str, ...]:
        return (rf"http://127\.0\.0\.1:{self.server_address[1]}/ok/.*",)


@pytest.fixture
def published(tmp_path) -> Iterator[_Published]:
    """``/ok/echo.mar`` (allowed) and ``/other/echo.mar`` (not) on a real http.server."""
    root = tmp_path / "www"
    make_mar(root / "ok", "echo", ECHO_HANDLER, module="echo_handler")
    make_mar(root / "other", "echo", ECHO_HANDLER, module="echo_handler", version="6.6.6")
    server = _Published(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


async def _downloader(nursery, tmp_path, allowed):
    store = tmp_path / "store"
    store.mkdir()
    config = secure_config(
        tmp_path, model_store=str(store), enable_model_api=True, allowed_urls=allowed
    )
    endpoints = await start(nursery, config)
    return endpoints, store, read_keys(config)["management"]


def _left_ok(hits: list[str]) -> list[str]:
    """The requests that a decoding server resolved outside /ok/."""
    return [h for h in hits if not posixpath.normpath(unquote(h)).startswith("/ok/")]


async def test_dot_segments_cannot_leave_an_allowed_http_prefix(
    nursery, tmp_path, client, published
):
    endpoints, store, key = await _downloader(nursery, tmp_path, published.allowed)
    for path in (
        "/ok/../other/echo.mar",
        "/ok/%2e%2e/other/echo.mar",
        "/ok/%2E%2e/other/echo.mar",
        "/ok/./sub/../../other/echo.mar",
    ):
        r = await register(client, endpoints, published.url(path), key)
        assert_error(r, 404, "ModelNotFoundException", "does not match any allowed URL(s)")
    r = await register(client, endpoints, published.url("/ok/..%2Fother/echo.mar"), key)
    assert_error(r, 400, "BadRequestException", "encoded '/'")
    r = await register(client, endpoints, published.url("/ok/jump.mar"), key)
    assert_error(r, 400, "DownloadArchiveException", "redirect to a URL that is not allowed")
    assert _left_ok(published.hits) == []
    assert list(store.iterdir()) == []
    # a dot segment that stays inside is fine: the normal form is what is fetched
    r = await register(client, endpoints, published.url("/ok/sub/%2e%2e/./echo.mar"), key)
    assert r.status_code == 200, r.text
    assert published.hits == ["/ok/jump.mar", "/ok/echo.mar"]
    assert sorted(p.name for p in store.iterdir()) == ["echo.mar"]


async def test_dot_segments_and_links_cannot_leave_an_allowed_directory(nursery, tmp_path, client):
    published = tmp_path / "published"
    make_mar(published, "echo", ECHO_HANDLER, module="echo_handler")
    outside = make_mar(tmp_path / "outside", "secret", ECHO_HANDLER, module="echo_handler")
    (published / "link.mar").symlink_to(outside)
    allowed = (f"file://{re.escape(str(published))}/.*",)
    endpoints, store, key = await _downloader(nursery, tmp_path, allowed)
    for url in (
        f"file://{published}/../outside/secret.mar",
        f"file://{published}/%2e%2e/outside/secret.mar",
        f"file://{published}/.%2E/outside/secret.mar",
        f"file:{published}/../outside/secret.mar",
    ):
        r = await register(client, endpoints, url, key)
        assert_error(r, 404, "ModelNotFoundException", "does not match any allowed URL(s)")
    r = await register(client, endpoints, f"file://{published}/link.mar", key)
    assert_error(r, 400, "DownloadArchiveException", "a link leads outside the allowed URLs")
    assert list(store.iterdir()) == []
    r = await register(client, endpoints, f"file://{published}/sub/../echo.mar", key)
    assert r.status_code == 200, r.text
    assert (store / "echo.mar").read_bytes() == (published / "echo.mar").read_bytes()
    assert sorted(p.name for p in store.iterdir()) == ["echo.mar"]


async def test_nul_bytes_and_overlong_names_in_download_urls_get_400(
    nursery, tmp_path, client, published
):
    (tmp_path / "published").mkdir()
    allowed = (*published.allowed, f"file://{re.escape(str(tmp_path))}/published/.*")
    endpoints, store, key = await _downloader(nursery, tmp_path, allowed)
    long_name = "a" * 300 + ".mar"
    for url, kind, why in (
        (published.url("/ok/any/x%00.mar"), "BadRequestException", "control character"),
        (published.url(f"/ok/any/{long_name}"), "DownloadArchiveException", "file name too long"),
        (f"file://{tmp_path}/published/x%00.mar", "BadRequestException", "control character"),
        (f"file://{tmp_path}/published/{long_name}", "DownloadArchiveException", "too long"),
        (f"file://{tmp_path}/published/{'d' * 300}/x.mar", "DownloadArchiveException", "too long"),
        (published.url("/ok/any/%zz.mar"), "BadRequestException", "starts no escape"),
    ):
        r = await register(client, endpoints, url, key)
        assert_error(r, 400, kind, why)
    assert list(store.iterdir()) == []


async def test_an_unrelated_file_of_the_same_name_is_still_refused(
    nursery, tmp_path, client, published
):
    endpoints, store, key = await _downloader(nursery, tmp_path, published.allowed)
    (store / "echo.mar").write_bytes(b"the operator's own archive")
    r = await register(client, endpoints, published.url("/ok/echo.mar"), key)
    assert_error(r, 400, "DownloadArchiveException", "Model file already exists echo.mar")
    assert (store / "echo.mar").read_bytes() == b"the operator's own archive"


# --- the key file ------------------------------------------------------------------------


async def test_a_symlinked_key_file_is_replaced_never_followed(nursery, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("not yours to overwrite\n")
    (run / "key_file.json").symlink_to(precious)
    server = ServeProcess(run, *local_ports())
    await nursery.start(server.run)
    _, management, _ = await server.wait_listening()
    key_file = run / "key_file.json"
    assert not key_file.is_symlink()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert precious.read_text() == "not yours to overwrite\n"
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.get(f"{management}/models", headers=server.headers("management"))
    assert r.status_code == 200
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await server.process.wait() == 0
    assert precious.read_text() == "not yours to overwrite\n"
    assert not key_file.exists()


async def test_a_key_file_that_is_no_longer_ours_is_left_at_exit(tmp_path, client):
    config = secure_config(tmp_path)
    key_file = Path(config.key_file)
    for theirs in (False, True):
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            endpoints = await start_until(nursery, config, shutdown)
            keys = read_keys(config)
            r = await client.get(
                f"{endpoints.management}/token",
                params={"type": "management"},
                headers=bearer(keys["API"]),
            )
            assert r.status_code == 200  # a rotated file is still ours
            if theirs:
                (tmp_path / "theirs").write_text("someone else's file\n")
                os.replace(tmp_path / "theirs", key_file)
            shutdown.set()
        assert await trio.Path(key_file).exists() == theirs
    assert await trio.Path(key_file).read_text() == "someone else's file\n"


async def start_until(nursery, config, shutdown):
    return await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))


# --- leftovers of a killed server ----------------------------------------------------------

_KILLED_MID_DOWNLOAD = """
import os, signal, sys
from pathlib import Path
from supervisor.models.sweep import DOWNLOAD_JOURNAL, open_scratch, record_file

store = Path(sys.argv[1])
with open_scratch(sys.argv[2]) as scratch:
    (scratch / "model-unpacked").mkdir()
    (scratch / "model-unpacked" / "weights.bin").write_bytes(b"0" * 4096)
    for name in ("echo.mar", "replaced.mar"):
        (store / name).write_bytes(b"downloaded")
        record_file(scratch / DOWNLOAD_JOURNAL, store / name, os.lstat(store / name), finished=True)
    (store / ".download.abc123").write_bytes(b"half")
    record_file(scratch / DOWNLOAD_JOURNAL, store / ".download.abc123",
                os.lstat(store / ".download.abc123"))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_sweep_removes_only_what_a_dead_server_recorded(tmp_path):
    store, scratch_parent = tmp_path / "store", tmp_path / "tmp"
    store.mkdir()
    scratch_parent.mkdir()
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_DOWNLOAD, str(store), str(scratch_parent)],
        check=False,
    )
    assert died.returncode == -signal.SIGKILL
    [dead] = scratch_parent.glob("trio-supervisor-*")
    (store / "replaced.mar").unlink()
    (store / "replaced.mar").write_bytes(b"the operator's own")  # same name, another file
    foreign = scratch_parent / "trio-supervisor-foreign"
    foreign.mkdir()
    (foreign / OWNER_FILE).write_text('{"kind": "something else", "pid": 1}')
    with open_scratch(scratch_parent) as live:  # a server that still runs: this process
        assert sweep_leftovers(scratch_parent) == [dead]
        assert live.exists()
    assert not dead.exists()
    assert sorted(p.name for p in store.iterdir()) == ["replaced.mar"]
    assert (store / "replaced.mar").read_bytes() == b"the operator's own"
    assert (foreign / OWNER_FILE).exists()
    assert sweep_leftovers(scratch_parent) == []


def _write_server_toml(path: Path, store: Path, allowed: tuple[str, ...]) -> Path:
    patterns = ", ".join(f"'{p}'" for p in allowed)
    path.write_text(
        "[server]\n"
        + "".join(f'{kind}_address = "127.0.0.1:0"\n' for kind in ("inference", "management"))
        + 'metrics_address = "127.0.0.1:0"\n'
        + f'model_store = "{store}"\nenable_model_api = true\nallowed_urls = [{patterns}]\n'
        + "shutdown_grace = 1.0\n"
        # these tests are about what a crash leaves on disk; a config snapshot would
        # register the killed server's models again (tests/test_snapshots.py covers that)
        + "config_snapshots = false\n"
    )
    return path


async def _register_in_background(url: str, management: str, headers: dict[str, str]) -> None:
    """A registration that the server's death cuts off."""
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        with contextlib.suppress(httpx.HTTPError):
            await http.post(f"{management}/models", params={"url": url}, headers=headers)


async def test_a_killed_servers_leftovers_are_swept_and_its_url_registers_again(
    nursery, tmp_path, client, published, monkeypatch
):
    scratch_parent, store, run = tmp_path / "tmp", tmp_path / "store", tmp_path / "run"
    for directory in (scratch_parent, store, run):
        directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch_parent))  # the children's temporary directory
    config = _write_server_toml(tmp_path / "server.toml", store, published.allowed)
    first = ServeProcess(run, "--config", str(config))
    await nursery.start(first.run)
    _, management, _ = await first.wait_listening()
    url = published.url("/ok/echo.mar")
    r = await register(client, _Base(management), url, _key(first))
    assert r.status_code == 200, r.text
    stall = published.url("/ok/stall.mar")
    nursery.start_soon(_register_in_background, stall, management, first.headers("management"))
    await eventually(lambda: any(store.glob(".download.*")))
    [scratch] = scratch_parent.glob("trio-supervisor-*")
    assert any(scratch.glob("model-*/MAR-INF/MANIFEST.json"))  # unpacked
    foreign = scratch_parent / "trio-supervisor-foreign"
    foreign.mkdir()
    (foreign / "data").write_text("not the server's")
    (store / ".download.foreign").write_text("not the server's")

    assert first.process is not None
    first.process.kill()
    await first.process.wait()
    assert scratch.exists()
    assert (store / "echo.mar").exists()

    second = ServeProcess(run, "--config", str(config))
    await nursery.start(second.run)
    _, management, _ = await second.wait_listening()
    assert not scratch.exists()
    assert sorted(p.name for p in store.iterdir()) == [".download.foreign"]
    assert (foreign / "data").read_text() == "not the server's"
    r = await register(client, _Base(management), url, _key(second))
    assert r.status_code == 200, r.text
    assert sorted(p.name for p in store.iterdir()) == [".download.foreign", "echo.mar"]
    assert second.process is not None
    second.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await second.process.wait() == 0
    assert sorted(p.name for p in scratch_parent.iterdir()) == ["trio-supervisor-foreign"]


class _Base:
    """What ``register`` needs of an ``BaseURLs``: the management URL."""

    def __init__(self, management: str) -> None:
        self.management = management


def _key(server: ServeProcess) -> str:
    return server.headers("management")["Authorization"].removeprefix("Bearer ")
