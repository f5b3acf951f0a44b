"""ModelServerRunner: the state machine (pure), then both APIs with real child servers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from supervisor.runner.blocking import SyncModelServerRunner
from supervisor.runner.readyfile import (
    FAILED,
    READY,
    ModelOutcome,
    ReadyReport,
    remove_ready_file,
    write_ready_file,
)
from supervisor.runner.state import (
    Endpoint,
    Failure,
    FailureKind,
    Lifecycle,
    RunnerState,
    RunnerStateError,
    ServerStartFailed,
    serve_command,
    settle,
)
from supervisor.runner.trio_runner import ModelServerRunner
from tests.helpers import ECHO_HANDLER, eventually, gone, make_mar

SLOW_LOAD_HANDLER = """
import time

class Slow:
    def initialize(self, context):
        print("loading slowly", flush=True)
        time.sleep(120)

    def handle(self, batch, context):
        return batch
"""

REPORT = ReadyReport(
    4242,
    "http://127.0.0.1:1",
    "http://127.0.0.1:2",
    "http://127.0.0.1:3",
    (ModelOutcome("echo", "1.0", READY),),
)
KEYS = json.dumps({"inference": {"key": "i"}, "management": {"key": "m"}}).encode()


# --- the pure state machine ---------------------------------------------------------------


def test_lifecycle_goes_initial_scheduled_running_end():
    core = Lifecycle()
    assert core.state is RunnerState.INITIAL
    with pytest.raises(RunnerStateError, match="Initial"):
        core.endpoint_nowait()
    core.start()
    with pytest.raises(RunnerStateError, match="once"):
        core.start()
    core.observe(None)
    assert core.state is RunnerState.SCHEDULED
    found = settle(returncode=None, ready=REPORT.to_json(), keys=KEYS, log_tail=())
    assert isinstance(found, Endpoint)
    core.observe(found)
    assert core.state is RunnerState.RUNNING
    assert core.result() == core.endpoint_nowait() == found
    assert found.headers("management") == {"Authorization": "Bearer m"}
    core.end()
    with pytest.raises(RunnerStateError, match="End"):
        core.result()


def test_a_running_server_that_exits_aborts_the_runner():
    core = Lifecycle()
    core.start()
    core.observe(settle(returncode=None, ready=REPORT.to_json(), keys=None, log_tail=()))
    assert core.endpoint_nowait().headers() == {}  # token auth off: no key file
    core.observe(settle(returncode=-9, ready=REPORT.to_json(), keys=None, log_tail=("x",)))
    assert core.state is RunnerState.ABORTED
    with pytest.raises(ServerStartFailed, match=r"killed by signal 9 \(SIGKILL\)") as caught:
        core.result()
    assert caught.value.failure.log_tail == ("x",)
    with pytest.raises(RunnerStateError, match=r"Aborted: the server exited \(killed by signal"):
        core.endpoint_nowait()


def test_settle_waits_for_the_ready_file_and_blames_failed_models():
    assert settle(returncode=None, ready=None, keys=None, log_tail=()) is None
    exited = settle(returncode=2, ready=None, keys=None, log_tail=("error: bad flag",))
    assert exited == Failure(FailureKind.EXITED, "the server exited (exit code 2)",
                             ("error: bad flag",), 2)  # fmt: skip
    broken = ModelOutcome("b", "1.0", FAILED, "it raised", ("Traceback",))
    report = ReadyReport(1, "i", "m", "x", (REPORT.models[0], broken))
    failure = settle(returncode=None, ready=report.to_json(), keys=None, log_tail=())
    assert isinstance(failure, Failure)
    assert failure.kind is FailureKind.MODEL
    assert failure.reason == "model b 1.0 failed to load: it raised"
    assert failure.models == (broken,)
    garbled = settle(returncode=None, ready=b'{"pid": 1}', keys=None, log_tail=())
    assert isinstance(garbled, Failure)
    assert garbled.kind is FailureKind.READY_FILE


def test_ready_report_round_trips_through_json():
    broken = ModelOutcome("missing", None, FAILED, "Model not found", ())
    report = ReadyReport(7, "a", "b", "c", (REPORT.models[0], broken))
    assert ReadyReport.from_json(report.to_json()) == report
    with pytest.raises(ValueError, match="not a ready file"):
        ReadyReport.from_json(b"[]")


def test_the_ready_file_is_written_whole_and_removed(tmp_path):
    path = tmp_path / "ready.json"
    write_ready_file(path, REPORT)
    assert ReadyReport.from_json(path.read_bytes()) == REPORT
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary left
    remove_ready_file(path)
    remove_ready_file(path)  # gone already: no error
    assert not path.exists()


def test_serve_command_puts_the_runners_own_flags_last(tmp_path):
    command = serve_command(["--models", "a.mar"], tmp_path, "py")
    assert command[:6] == ["py", "-m", "supervisor", "serve", "--models", "a.mar"]
    assert f"--ready-file={tmp_path / 'ready.json'}" in command[6:]
    assert "--inference-address=127.0.0.1:0" in command[6:]


# --- real child servers ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER)
    make_mar(store, "slow", SLOW_LOAD_HANDLER)
    return store


def serve_args(store: Path, model: str) -> list[str]:
    return ["--model-store", str(store), "--models", f"{model}.mar", "--stop-grace", "0.5"]


def family(pid: int) -> list[int]:
    """``pid`` and its descendants now."""
    return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]


@pytest.mark.slow
async def test_trio_runner_through_every_state_with_a_real_server(store, tmp_path):
    runner = ModelServerRunner(serve_args(store, "echo"), cwd=tmp_path)
    async with runner:
        assert runner.state is RunnerState.INITIAL
        with pytest.raises(RunnerStateError):
            runner.get_endpoint()
        await runner.start()
        assert runner.state is RunnerState.SCHEDULED
        with pytest.raises(RunnerStateError, match="once"):
            await runner.start()
        endpoint = await runner.wait_until_running(trio.current_time() + 30)
        assert runner.state is RunnerState.RUNNING
        assert runner.get_endpoint() == endpoint
        assert [(m.name, m.version, m.state) for m in endpoint.models] == [("echo", "1.0", READY)]
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{endpoint.inference}/predictions/echo"
            answer = await client.post(url, content=b"hi", headers=endpoint.headers())
            refused = await client.post(url, content=b"hi")
        assert (answer.status_code, answer.json()["echo"]) == (200, "hi")
        assert refused.status_code == 401  # token auth stays on; the runner holds the keys
        processes = family(endpoint.pid)
        assert len(processes) >= 2  # the server and its worker
        await runner.stop()
        assert runner.state is RunnerState.END
        assert all(gone(pid) for pid in processes)
        await runner.stop()  # idempotent
        with pytest.raises(RunnerStateError):
            await runner.wait_until_running(trio.current_time() + 1)
    assert not list(tmp_path.glob("*.json"))  # key and ready files stayed in the runner's dir


@pytest.mark.slow
async def test_trio_runner_reports_a_server_killed_while_starting(store):
    async with ModelServerRunner(serve_args(store, "slow")) as runner:
        await runner.start()
        assert runner.pid is not None
        server = psutil.Process(runner.pid)
        await eventually(lambda: bool(server.children()))  # its worker is loading
        # and the server has said so (on a loaded machine the line can come later)
        await eventually(lambda: any("loading model slow" in x for x in runner.log_tail()))
        processes = family(runner.pid)
        os.kill(runner.pid, signal.SIGKILL)
        with pytest.raises(ServerStartFailed, match=r"killed by signal 9 \(SIGKILL\)") as caught:
            await runner.wait_until_running(trio.current_time() + 30)
        assert runner.state is RunnerState.ABORTED
        assert caught.value.failure.returncode == -signal.SIGKILL
        assert any("loading model slow" in line for line in caught.value.failure.log_tail)
    assert runner.state is RunnerState.END
    # The runner never saw this worker (the server died before it looked): the worker
    # notices that its supervisor is gone (EOF on its socket) and ends itself.
    await eventually(lambda: all(gone(pid) for pid in processes), within=5)


@pytest.mark.slow
async def test_a_cancelled_caller_still_stops_a_server_past_its_deadline(store):
    runner = ModelServerRunner(serve_args(store, "slow"))

    async def attempt() -> None:
        async with runner:
            await runner.start()
            await runner.wait_until_running(trio.current_time() + 1.0)

    with pytest.raises(ServerStartFailed, match="deadline"):  # unchanged, not in a group
        await attempt()
    assert runner.failure is not None
    assert runner.failure.kind is FailureKind.DEADLINE
    assert runner.pid is not None

    with trio.move_on_after(0.5) as scope:  # the caller gives up while the model loads
        async with ModelServerRunner(serve_args(store, "slow")) as cancelled:
            await cancelled.start()
            await cancelled.wait_until_running(trio.current_time() + 60)
    assert scope.cancelled_caught
    assert cancelled.state is RunnerState.END
    assert cancelled.pid is not None
    assert gone(cancelled.pid)
    assert gone(runner.pid)


@pytest.mark.slow
async def test_a_model_missing_from_the_store_aborts_the_runner(store):
    async with ModelServerRunner(serve_args(store, "missing")) as runner:
        await runner.start()
        with pytest.raises(ServerStartFailed, match="model missing failed") as caught:
            await runner.wait_until_running(trio.current_time() + 30)
    [outcome] = caught.value.failure.models
    assert (outcome.version, outcome.state) == (None, FAILED)
    assert "not found" in str(outcome.reason)


@pytest.mark.slow
def test_sync_runner_serves_then_stops_without_leftovers(store):
    with SyncModelServerRunner(serve_args(store, "echo")) as runner:
        with pytest.raises(RunnerStateError):
            runner.get_endpoint()
        runner.start()
        endpoint = runner.wait_until_running(time.monotonic() + 30)
        assert runner.get_endpoint() == endpoint
        answer = httpx.post(
            f"{endpoint.inference}/predictions/echo", content=b"x", headers=endpoint.headers()
        )
        assert answer.json()["echo"] == "x"
        with pytest.raises(RunnerStateError, match="once"):
            runner.start()
        processes = family(endpoint.pid)
    assert runner.state is RunnerState.END
    assert all(gone(pid) for pid in processes)
    runner.stop()  # idempotent


@pytest.mark.slow
def test_sync_runner_reports_a_server_that_fails_to_start(tmp_path):
    with SyncModelServerRunner(["--batch-size", "0"]) as runner:
        runner.start()
        with pytest.raises(ServerStartFailed, match=r"exited \(exit code 2\)") as caught:
            runner.wait_until_running(time.monotonic() + 30)
        assert runner.state is RunnerState.ABORTED
        assert any(line.startswith("error:") for line in caught.value.failure.log_tail)
        with pytest.raises(RunnerStateError, match="Aborted"):
            runner.get_endpoint()


def test_sync_runner_stop_before_start_is_harmless():
    runner = SyncModelServerRunner()
    runner.stop()
    assert runner.state is RunnerState.END
    with pytest.raises(RunnerStateError):
        runner.start()


async def test_a_server_that_cannot_be_launched_aborts_the_runner(tmp_path):
    async with ModelServerRunner(python=str(tmp_path / "no-python")) as runner:
        await runner.start()
        assert runner.state is RunnerState.ABORTED
        with pytest.raises(ServerStartFailed, match="cannot launch") as caught:
            await runner.wait_until_running(trio.current_time() + 5)
    assert caught.value.failure.kind is FailureKind.SPAWN
    assert runner.pid is None
