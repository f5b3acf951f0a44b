"""GPU assignment: pure decisions, and what a real worker is given."""

from __future__ import annotations

import shutil
from functools import partial

import httpx
import pytest
import trio

from supervisor import InvalidRequest, ModelConfig, ServerConfig, open_supervisor
from supervisor.server import serve
from supervisor.supervision.devices import Device, device_for, parse_visible, visible_gpus
from supervisor.supervision.factory import threads_per_worker


def test_visible_devices_are_parsed_from_the_environment_value():
    assert parse_visible("0,1, 3") == ("0", "1", "3")
    assert parse_visible("") == ()
    assert parse_visible("-1") == ()
    assert parse_visible("GPU-1a2b,GPU-3c4d") == ("GPU-1a2b", "GPU-3c4d")


def test_workers_take_the_visible_gpus_round_robin_and_see_only_their_own():
    visible = ("4", "5")
    devices = [device_for(n, {}, visible) for n in range(3)]
    assert [d.env["CUDA_VISIBLE_DEVICES"] for d in devices] == ["4", "5", "4"]
    assert {d.gpu_id for d in devices} == {0}  # the one visible device is cuda:0


def test_device_ids_index_the_visible_gpus():
    visible = ("4", "5", "6")
    devices = [device_for(n, {"deviceIds": [2, 0]}, visible) for n in range(3)]
    assert [d.physical for d in devices] == ["6", "4", "6"]


def test_cpu_models_and_machines_without_gpus_get_none():
    assert device_for(0, {}, ()) == Device(gpu_id=None)
    cpu = device_for(0, {"deviceType": "cpu"}, ("0",))
    assert cpu.gpu_id is None
    assert cpu.env == {"CUDA_VISIBLE_DEVICES": ""}  # a CPU model sees no GPU at all


def test_a_device_id_that_is_not_visible_is_an_error():
    with pytest.raises(ValueError, match="deviceIds names GPU 3"):
        device_for(0, {"deviceIds": [3]}, ("0", "1"))
    with pytest.raises(ValueError, match="deviceIds names GPU -1"):
        device_for(0, {"deviceIds": [-1]}, ("0", "1"))


DEVICE_REPORTER = """
import os

class Reporter:
    def initialize(self, context):
        self.gpu_id = context.system_properties["gpu_id"]

    def handle(self, batch, context):
        return [{"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_id": self.gpu_id}
                for _ in batch]
"""


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend the machine has GPUs 7 and 9 (workers need no real GPU to be told)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    visible_gpus.cache_clear()
    yield
    visible_gpus.cache_clear()


@pytest.mark.slow
async def test_real_workers_are_given_their_gpu(fake_gpus, handler_dir):
    model_dir = handler_dir("reporter", DEVICE_REPORTER)
    config = ModelConfig(name="r", handler="reporter", model_dir=str(model_dir), workers=2)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        seen = set()
        for worker in sup.describe("r")[0].workers:
            seen.add(worker.gpu)
        assert seen == {"7", "9"}
        reply = await sup.predict("r", b"x")
        assert b'"gpu_id": 0' in reply.body
        assert reply.body.count(b'"visible": "7"') + reply.body.count(b'"visible": "9"') == 1
        with pytest.raises(InvalidRequest):
            await sup.load_model(
                ModelConfig(
                    name="bad",
                    handler="reporter",
                    model_dir=str(model_dir),
                    handler_config={"deviceIds": [5]},
                )
            )


@pytest.mark.gpu
@pytest.mark.slow
async def test_a_worker_runs_on_its_gpu(handler_dir):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU on this machine (nvidia-smi not found)")
    source = """
import torch

class OnGpu:
    def initialize(self, context):
        self.device = torch.device(f"cuda:{context.system_properties['gpu_id']}")

    def handle(self, batch, context):
        x = torch.ones(4, device=self.device) * 2
        return [{"device": str(x.device), "sum": float(x.sum())} for _ in batch]
"""
    model_dir = handler_dir("on_gpu", source)
    async with open_supervisor() as sup:
        await sup.load_model(ModelConfig(name="g", handler="on_gpu", model_dir=str(model_dir)))
        reply = await sup.predict("g", b"x")
        assert reply.ok, reply.message
        assert b'"device": "cuda:0"' in reply.body
        assert b'"sum": 8.0' in reply.body


@pytest.mark.slow
async def test_a_bad_device_id_skips_that_model_not_the_server(fake_gpus, handler_dir, nursery):
    model_dir = str(handler_dir("reporter", DEVICE_REPORTER))
    good = ModelConfig(name="good", handler="reporter", model_dir=model_dir)
    bad = ModelConfig(
        name="bad", handler="reporter", model_dir=model_dir, handler_config={"deviceIds": [5]}
    )
    config = ServerConfig(
        inference_address="127.0.0.1:0",
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=(good, bad),
        disable_token_authorization=True,
        shutdown_grace=1.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{endpoints.inference}/predictions/good", content=b"x")
        assert r.status_code == 200
        r = await client.post(f"{endpoints.inference}/predictions/bad", content=b"x")
        assert r.status_code == 404
    shutdown.set()


THREAD_REPORTER = """
import os

class Threads:
    def handle(self, batch, context):
        return [{"omp": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()} for _ in batch]
"""


def test_threads_are_the_cores_shared_among_the_workers():
    assert threads_per_worker(17, 4) == 4
    assert threads_per_worker(2, 1) == 2
    assert threads_per_worker(2, 2) == 1
    assert threads_per_worker(2, 3) == 1  # never zero
    assert threads_per_worker(9, 0) == 9


@pytest.mark.slow
async def test_workers_get_their_share_of_the_cores(handler_dir, monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    model_dir = str(handler_dir("threads", THREAD_REPORTER))
    async with open_supervisor() as sup:
        await sup.load_model(
            ModelConfig(name="t", handler="threads", model_dir=model_dir, workers=2)
        )
        reply = await sup.predict("t", b"x")
        share = threads_per_worker(os.cpu_count() or 1, 2)
        assert f'"omp": "{share}"'.encode() in reply.body
        await sup.load_model(
            ModelConfig(name="fixed", handler="threads", model_dir=model_dir, torch_threads=3)
        )
        reply = await sup.predict("fixed", b"x")
        assert b'"omp": "3"' in reply.body  # configured wins
