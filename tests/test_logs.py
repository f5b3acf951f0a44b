"""The logs a TorchServe operator expects: access log, model log, JSON lines, handler levels.

Real servers on 127.0.0.1 (in-process, and ``python -m supervisor serve`` as a
child), real workers, httpx as the client.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig, open_supervisor
from supervisor.http.access import access_line
from supervisor.logsetup import JsonFormatter, log_file, open_log_files
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER, eventually
from tests.serveproc import ServeProcess, local_ports

LOCAL = "127.0.0.1:0"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}"  # log4j2's ISO8601

CHATTY_HANDLER = """
import logging

log = logging.getLogger("chatty")

class Chatty:
    def initialize(self, context):
        log.debug("debug line at load")
        log.info("info line at load")

    def handle(self, batch, context):
        return [{"ok": True} for _ in batch]
"""


# --- pure parts ----------------------------------------------------------------------


def test_access_line_is_torchserves_format():
    line = access_line("/127.0.0.1:53478", "POST /predictions/x HTTP/1.1", 200, 12.9)
    assert line == '/127.0.0.1:53478 "POST /predictions/x HTTP/1.1" 200 12'


def test_log_file_settings():
    assert log_file(False, "logs", "access_log.log") is None
    assert log_file("", "logs", "access_log.log") is None
    assert log_file(True, "logs", "access_log.log") == "logs/access_log.log"
    assert log_file("/var/log/a.log", "logs", "access_log.log") == "/var/log/a.log"


def test_json_lines_carry_the_fields():
    record = logging.LogRecord(
        "supervisor.worker", logging.INFO, __file__, 1, "hi %s", ("x",), None
    )
    record.model, record.worker, record.incarnation = "echo", "w1", 2
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hi x"
    assert line["level"] == "INFO"
    assert line["logger"] == "supervisor.worker"
    assert (line["model"], line["worker"], line["incarnation"]) == ("echo", "w1", 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_bad_log_settings_are_config_errors():
    with pytest.raises(ValueError, match="log_format"):
        ServerConfig(log_format="xml")
    with pytest.raises(TypeError, match="access_log"):
        ServerConfig(access_log=3)  # type: ignore[arg-type]


def test_log_files_are_written_off_the_caller_and_closed(tmp_path):
    config = ServerConfig(access_log=True, log_dir=str(tmp_path / "logs"))
    with open_log_files(config):
        for i in range(3):
            logging.getLogger("supervisor.access").info("line %d", i)
        assert not logging.getLogger("supervisor.model").isEnabledFor(logging.CRITICAL)
    written = lines(tmp_path / "logs" / "access_log.log")
    assert [x.split(" - ", 1)[1] for x in written] == ["line 0", "line 1", "line 2"]
    assert all(re.match(STAMP + " - ", x) for x in written)
    assert not (tmp_path / "logs" / "model_log.log").exists()


def test_log_files_rotate_at_their_size(tmp_path):
    config = ServerConfig(access_log=True, log_dir=str(tmp_path), log_max_size=300, log_backups=2)
    with open_log_files(config):
        for i in range(40):
            logging.getLogger("supervisor.access").info("line %02d", i)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access_log.log", "access_log.log.1", "access_log.log.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    assert lines(tmp_path / "access_log.log")[-1].endswith(" - line 39")
    kept = [x[-2:] for name in reversed(names) for x in lines(tmp_path / name)]
    assert kept == [f"{i:02d}" for i in range(40 - len(kept), 40)]  # the newest, in order


def test_log_files_off_by_default_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_log_files(ServerConfig()):
        access = logging.getLogger("supervisor.access")
        assert not access.isEnabledFor(logging.CRITICAL)
        access.info("nowhere")
    assert not list(tmp_path.iterdir())


# --- a real server ---------------------------------------------------------------------


def echo_model(handler_dir) -> ModelConfig:
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    return ModelConfig(name="echo", handler="echo_handler", model_dir=str(model_dir))


async def ready(client: httpx.AsyncClient, endpoints: BaseURLs, name: str) -> int:
    """Wait until ``name`` is ready; how many GET /models/NAME requests that took."""
    calls = 0
    with trio.fail_after(30):
        while True:
            calls += 1
            desc = (await client.get(f"{endpoints.management}/models/{name}")).json()[0]
            if desc["state"] == "READY":
                return calls
            await trio.sleep(0.05)


class Collect(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def count(found: list[str], pattern: str) -> int:
    return sum(1 for line in found if re.fullmatch(STAMP + " - " + pattern, line))


@pytest.mark.slow
@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "hypercorn"])
async def test_access_and_model_logs(tmp_path, handler_dir, lean_http):
    access, model_log = tmp_path / "logs" / "access.log", tmp_path / "logs" / "model.log"
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        models=(echo_model(handler_dir),),
        shutdown_grace=1.0,
        disable_token_authorization=True,
        lean_http=lean_http,
        access_log=str(access),
        model_log=str(model_log),
    )
    shutdown = trio.Event()
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        run = partial(serve, config, shutdown=shutdown, handle_signals=False)
        endpoints: BaseURLs = await nursery.start(run)
        records = Collect()
        logging.getLogger("supervisor.access").addHandler(records)  # the server removes it
        polls = await ready(client, endpoints, "echo")
        ok = await client.post(f"{endpoints.inference}/predictions/echo", content=b"hello")
        missing = await client.post(f"{endpoints.inference}/predictions/nope", content=b"x")
        failed = await client.post(f"{endpoints.inference}/predictions/echo", content=b"raise")
        scaled = await client.put(f"{endpoints.management}/models/echo?min_worker=1")
        shutdown.set()
    assert (ok.status_code, missing.status_code, failed.status_code) == (200, 404, 503)
    assert scaled.status_code in (200, 202)
    found = lines(access)
    client_re = r"/127\.0\.0\.1:\d+ "
    assert count(found, client_re + r'"POST /predictions/echo HTTP/1\.1" 200 \d+') == 1
    assert count(found, client_re + r'"POST /predictions/nope HTTP/1\.1" 404 \d+') == 1
    assert count(found, client_re + r'"POST /predictions/echo HTTP/1\.1" 503 \d+') == 1
    scale = rf'"PUT /models/echo HTTP/1\.1" {scaled.status_code} \d+'  # no query string
    assert count(found, client_re + scale) == 1
    assert count(found, client_re + r'"GET /models/echo HTTP/1\.1" 200 \d+') == polls
    assert len(found) == polls + 4, found  # one line per request, no more
    models = {r.getMessage().split('"')[1]: getattr(r, "model", None) for r in records.records}
    assert models["POST /predictions/echo HTTP/1.1"] == "echo"  # written by the prediction route
    assert models["POST /predictions/nope HTTP/1.1"] == "nope"
    assert models["GET /models/echo HTTP/1.1"] is None
    worker_lines = lines(model_log)
    tag = r" \[INFO \] W-w1#1-echo_1\.0 MODEL_LOG - "
    assert any(re.fullmatch(STAMP + tag + "echo handler ready", x) for x in worker_lines)
    assert any("ValueError: bad input on purpose" in x for x in worker_lines)


# --- python -m supervisor serve --------------------------------------------------------


def json_lines(proc: ServeProcess) -> Iterator[dict]:
    for line in list(proc.lines):
        yield json.loads(line)


def listening(proc: ServeProcess) -> str | None:
    """The inference URL, once the JSON "listening" line is out."""
    for line in json_lines(proc):
        if line["message"].startswith("listening: inference "):
            return str(line["message"].split()[2].rstrip(","))
    return None


@pytest.mark.slow
async def test_serve_log_format_json_and_no_log_files_by_default(tmp_path, handler_dir):
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    proc = ServeProcess(
        tmp_path,
        "--log-format=json",
        "--log-level=DEBUG",
        "--disable-token-auth",
        f"--models=echo=echo_handler@{model_dir}",
        *local_ports(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(proc.run)
        await eventually(lambda: listening(proc) is not None, within=30)
        url = listening(proc)
        async with httpx.AsyncClient(timeout=30) as client:
            # queued until the worker is ready
            answer = await client.post(f"{url}/predictions/echo", content=b"hi")
        assert answer.status_code == 200

        def worker_line() -> bool:
            return any(
                x["logger"] == "supervisor.worker" and "echo handler ready" in x["message"]
                for x in json_lines(proc)
            )

        await eventually(worker_line)
        assert proc.process is not None
        proc.process.send_signal(signal.SIGTERM)
    assert proc.process.returncode == 0
    records = list(json_lines(proc))  # every line is a JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    from_worker = next(r for r in records if "echo handler ready" in r["message"])
    assert (from_worker["model"], from_worker["version"]) == ("echo", "1.0")
    assert (from_worker["worker"], from_worker["incarnation"]) == ("w1", 1)
    assert not list(tmp_path.rglob("access_log*"))
    assert not list(tmp_path.rglob("model_log*"))


# --- a handler's logging ---------------------------------------------------------------


@pytest.fixture
def server_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("supervisor")
    before = logger.level
    yield logger
    logger.setLevel(before)


def tail(sup, name: str) -> tuple[str, ...]:
    return tuple(sup.describe(name)[0].workers[0].log_tail)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
async def test_handler_logging_follows_the_server_level(handler_dir, server_level, level):
    server_level.setLevel(level)
    model_dir = handler_dir("chatty", CHATTY_HANDLER)
    config = ModelConfig(name="chatty", handler="chatty", model_dir=str(model_dir))
    async with open_supervisor() as sup:
        await sup.load_model(config)
        await eventually(lambda: any("info line at load" in x for x in tail(sup, "chatty")))
        found = tail(sup, "chatty")
    assert "INFO chatty: info line at load" in found
    assert ("DEBUG chatty: debug line at load" in found) == (level == "DEBUG")


@pytest.mark.slow
async def test_unwritable_log_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = ServeProcess(tmp_path, f"--access-log={blocker}/access.log", *local_ports())
    async with trio.open_nursery() as nursery:
        await nursery.start(proc.run)
        assert proc.process is not None
        with trio.fail_after(30):
            await proc.process.wait()
    assert proc.process.returncode == 2
    assert any(line.startswith("error: cannot open the log file") for line in proc.lines)
