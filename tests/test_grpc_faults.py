"""gRPC calls under faults: deadlines, a full queue, a cancelled call, a killed worker, shutdown.

One worker (batch size 1, one queue slot) running the probe handler of
tests/test_grpc.py, which writes every request it receives to ``seen.log``, so
each test can say which requests reached a worker. The client is the one
grpcio generates from TorchServe's protos. The last tests stop servers with
calls in flight: in process (no grpc thread is left behind) and as a process
sent SIGTERM (each call is answered, the server exits 0).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from functools import partial

import attrs
import grpc
import pytest
import trio

from supervisor.grpc.listener import THREAD
from supervisor.grpc.protos import inference_pb2 as inference
from supervisor.grpc.protos import management_pb2 as management
from supervisor.server import serve
from tests.helpers import eventually
from tests.serveproc import ServeProcess, local_ports
from tests.test_grpc import (
    PROBE,
    Clients,
    bearer,
    grpc_config,
    in_thread,
    probe_model,
    rpc_error,
    seen,
    wait_workers,
)
from tests.test_security import read_keys

pytestmark = pytest.mark.slow

GRPC_LISTENING = re.compile(r"listening: gRPC inference (\S+), gRPC management (\S+)")


def start(clients: Clients, data: bytes, **kwargs) -> grpc.Future:
    """A Predictions call in flight (its ``result()`` waits for the answer)."""
    request = inference.PredictionsRequest(model_name="probe", input={"data": data})
    metadata = bearer(clients.keys["inference"])
    return clients.inference.Predictions.future(request, metadata=metadata, **kwargs)


async def pending(clients: Clients) -> int:
    request = management.DescribeModelRequest(model_name="probe")
    described = json.loads(await in_thread(clients.manage, "DescribeModel", request))
    return int(described[0]["jobQueueStatus"]["pendingRequests"])


async def wait_pending(clients: Clients, count: int) -> None:
    with trio.fail_after(30):
        while await pending(clients) != count:  # noqa: ASYNC110 (the server's state, over gRPC)
            await trio.sleep(0.02)


async def wait_seen(handler_dir, command: str) -> None:
    await eventually(lambda: command in seen(handler_dir), within=60)


def grpc_threads() -> list[str]:
    """Threads of the gRPC ports: the asyncio loop's (``grpc-asyncio``), any other ``grpc-...``."""
    return [t.name for t in threading.enumerate() if t.name.startswith("grpc-")]


@pytest.fixture
async def served(nursery, tmp_path, handler_dir):
    model = probe_model(handler_dir, batch_size=1, job_queue_size=1)
    config = grpc_config(tmp_path, model)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    clients = Clients(urls.grpc_inference, urls.grpc_management, read_keys(config))
    await wait_workers(clients, "probe", 1)
    yield clients
    clients.close()
    shutdown.set()


async def test_a_deadline_ends_the_call_and_the_job_never_reaches_a_worker(served, handler_dir):
    clients = served
    busy = start(clients, b"sleep 1.5 a")
    await wait_seen(handler_dir, "sleep 1.5 a")
    late = await in_thread(rpc_error, clients.predict, b"b", timeout=0.5)
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await in_thread(busy.result)).prediction == b"done sleep 1.5 a"
    assert (await in_thread(clients.predict, b"c")).prediction == b"done c"
    assert seen(handler_dir) == ["sleep 1.5 a", "c"]


async def test_a_full_queue_is_unavailable_at_once(served, handler_dir):
    clients = served
    busy = start(clients, b"sleep 1.5 a")
    await wait_seen(handler_dir, "sleep 1.5 a")
    queued = start(clients, b"q")
    await wait_pending(clients, 1)
    full = await in_thread(rpc_error, clients.predict, b"refused")
    assert full.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue" in full.details()
    assert (await in_thread(busy.result)).prediction == b"done sleep 1.5 a"
    assert (await in_thread(queued.result)).prediction == b"done q"
    assert "refused" not in seen(handler_dir)


async def test_a_call_over_the_concurrent_call_cap_is_resource_exhausted(
    nursery, tmp_path, handler_dir
):
    model = probe_model(handler_dir, batch_size=1)
    config = attrs.evolve(grpc_config(tmp_path, model), grpc_max_concurrent_calls=1)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    clients = Clients(urls.grpc_inference, urls.grpc_management, read_keys(config))
    await wait_workers(clients, "probe", 1)
    busy = start(clients, b"sleep 1.5 a")
    await wait_seen(handler_dir, "sleep 1.5 a")
    over = await in_thread(rpc_error, clients.predict, b"over")
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await in_thread(busy.result)).prediction == b"done sleep 1.5 a"
    assert "over" not in seen(handler_dir)
    clients.close()
    shutdown.set()


async def test_a_cancelled_call_drops_its_queued_job(served, handler_dir):
    clients = served
    busy = start(clients, b"sleep 1.5 a")
    await wait_seen(handler_dir, "sleep 1.5 a")
    queued = start(clients, b"cancelled")
    await wait_pending(clients, 1)
    assert queued.cancel()
    assert (await in_thread(busy.result)).prediction == b"done sleep 1.5 a"
    assert (await in_thread(clients.predict, b"d")).prediction == b"done d"
    assert seen(handler_dir) == ["sleep 1.5 a", "d"]


async def test_a_worker_killed_mid_call_is_internal_naming_worker_and_incarnation(
    served, handler_dir
):
    clients = served
    call = start(clients, b"sleep 60 k")
    await wait_seen(handler_dir, "sleep 60 k")
    path = handler_dir("probe_handler", PROBE) / "seen.log"
    pid = int(path.read_text().splitlines()[-1].split("|")[1])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as caught:
        await in_thread(call.result)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details()
    assert f"worker probe/1.0 w1#1 (pid {pid}) died while serving the request" in details
    assert "SIGKILL" in details
    assert "the worker's last log lines" in details
    await wait_workers(clients, "probe", 1)
    assert (await in_thread(clients.predict, b"after")).prediction == b"done after"


async def test_shutdown_answers_calls_in_flight_and_leaves_no_grpc_thread(tmp_path, handler_dir):
    model = probe_model(handler_dir, batch_size=1)
    config = attrs.evolve(grpc_config(tmp_path, model), shutdown_grace=20.0)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
        clients = Clients(urls.grpc_inference, urls.grpc_management, read_keys(config))
        await wait_workers(clients, "probe", 1)
        assert grpc_threads() == [THREAD]  # the asyncio loop's, by name
        calls = [start(clients, f"sleep 1 s{i}".encode()) for i in range(3)]
        await eventually(lambda: bool(seen(handler_dir)))  # one is on the worker,
        await wait_pending(clients, 2)  # the others queued
        shutdown.set()
        answers = [(await in_thread(call.result)).prediction for call in calls]
        assert answers == [f"done sleep 1 s{i}".encode() for i in range(3)]
        refused = await in_thread(rpc_error, clients.predict, b"late", timeout=5)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        clients.close()
    assert grpc_threads() == []
    assert "late" not in seen(handler_dir)


async def test_sigterm_answers_grpc_calls_in_flight_and_the_server_exits_0(
    nursery, tmp_path, handler_dir
):
    directory = handler_dir("probe_handler", PROBE)
    server = ServeProcess(
        tmp_path,
        "--models",
        f"probe=probe_handler@{directory}",
        *local_ports(),
        "--grpc-inference-address=127.0.0.1:0",
        "--grpc-management-address=127.0.0.1:0",
        "--pre-stop-delay=0",
        "--shutdown-grace=20",
        "--ncs",
    )
    await nursery.start(server.run)
    await server.wait_listening(within=60)
    match = await _grpc_line(server)
    keys = json.loads((tmp_path / "key_file.json").read_text())
    clients = Clients(match[0], match[1], {k: keys[k]["key"] for k in ("inference", "management")})
    await wait_workers(clients, "probe", 1)
    calls = [start(clients, f"sleep 1 t{i}".encode()) for i in range(3)]
    await eventually(lambda: bool(seen(handler_dir)))  # one is on the worker,
    await wait_pending(clients, 2)  # the others queued
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    answers = [(await in_thread(call.result)).prediction for call in calls]
    assert answers == [f"done sleep 1 t{i}".encode() for i in range(3)]
    with trio.fail_after(60):
        assert await server.process.wait() == 0
    clients.close()


async def _grpc_line(server: ServeProcess) -> tuple[str, str]:
    await eventually(lambda: server.find(GRPC_LISTENING) is not None, within=30)
    found = server.find(GRPC_LISTENING)
    assert found is not None
    return found.group(1), found.group(2)
