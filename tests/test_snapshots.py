"""Config snapshots: TorchServe's format both ways, durable writes, restores after kill -9.

The pure format (``supervisor.supervision.snapshot``) and the directory
(``supervisor.supervision.snapshotdir``) are tested on their own; the promise
itself, that a change answered 200 survives ``kill -9``, with a real
``python -m supervisor serve`` child, real workers and httpx.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from supervisor.config import ConfigError, ModelConfig, ServerConfig
from supervisor.models.tsconfig import parse_properties
from supervisor.supervision.snapshot import newest_first, render, restore, snapshot_name
from supervisor.supervision.snapshotdir import KEEP, SnapshotDir
from supervisor.supervision.stats import ModelStats
from tests.helpers import ECHO_HANDLER, make_mar
from tests.serveproc import ServeProcess, local_ports

SERVER = ServerConfig(model_store="/srv/store", enable_model_api=True)


def stats(config: ModelConfig, *, default: bool) -> ModelStats:
    return ModelStats(
        config=config,
        state="READY",
        is_default=default,
        failure=None,
        failure_log_tail=(),
        workers=(),
        restarts=0,
        queue_depth=0,
        queue_capacity=config.job_queue_size,
        requests=0,
        loaded_at=0.0,
    )


ONE = ModelConfig(name="echo", url="echo.mar", handler="model_handler", version="1.0", workers=2)
TWO = ModelConfig(
    name="echo",
    url="echo_v2.mar",
    handler="model_handler",
    version="2.0",
    workers=1,
    max_workers=4,
    batch_size=8,
    max_batch_delay=0.05,
    response_timeout=7.5,
)
PLAIN = ModelConfig(name="plain", handler="my_handler", model_dir="/srv/models/plain", workers=0)
MODELS = (stats(ONE, default=False), stats(TWO, default=True), stats(PLAIN, default=True))


# --- the format -----------------------------------------------------------------


def test_a_snapshot_reads_back_as_the_models_it_was_written_from():
    text = render(SERVER, MODELS, snapshot_name(1_765_000_000_123), 1_765_000_000_123)
    restored = restore(text, "x.cfg", {"memory_limit_mb": 512})
    by_key = {(m.name, m.version): m for m in restored.models}
    two = by_key[("echo", "2.0")]
    assert (two.url, two.workers, two.max_workers, two.batch_size) == ("echo_v2.mar", 1, 4, 8)
    assert (two.max_batch_delay, two.response_timeout, two.memory_limit_mb) == (0.05, 7.5, 512)
    assert by_key[("echo", "1.0")].workers == 2
    plain = by_key[("plain", "1.0")]
    assert (plain.url, plain.handler, plain.model_dir, plain.workers) == (
        "",
        "my_handler",
        "/srv/models/plain",
        0,
    )
    # the default version of each name is loaded first (the first loaded is the default)
    echo_order = [m.version for m in restored.models if m.name == "echo"]
    assert echo_order == ["2.0", "1.0"]
    assert restored.settings[("echo", "2.0")]["batch_size"] == 8


def test_a_snapshot_is_the_properties_file_torchserve_writes_and_reads():
    name = snapshot_name(1_765_000_000_123)
    assert name == "20251206054640123-snapshot.cfg"
    text = render(SERVER, MODELS, name, 1_765_000_000_123)
    lines = text.splitlines()
    assert lines[0] == "#Saving snapshot"
    assert "inference_address=http\\://127.0.0.1\\:8080" in lines
    props = parse_properties(text)
    assert props["model_store"] == "/srv/store"
    snapshot = json.loads(props["model_snapshot"])
    assert (snapshot["name"], snapshot["modelCount"], snapshot["created"]) == (
        name,
        3,
        1_765_000_000_123,
    )
    two = snapshot["models"]["echo"]["2.0"]
    # TorchServe's Model.setModelState reads these with getAsInt: whole numbers stay ints
    assert two == {
        "defaultVersion": True,
        "marName": "echo_v2.mar",
        "minWorkers": 1,
        "maxWorkers": 4,
        "batchSize": 8,
        "maxBatchDelay": 50,
        "responseTimeout": 7.5,
        "startupTimeout": 120,
        "jobQueueSize": 100,
        "handler": "model_handler",
    }
    assert snapshot["models"]["echo"]["1.0"]["defaultVersion"] is False
    assert "marName" not in snapshot["models"]["plain"]["1.0"]
    assert text.isascii()


# As TorchServe 0.12 writes one: Properties.store of Gson's pretty JSON, so the
# colons and newlines escaped; keys it has and we ignore; the default on the later version.
_TS_JSON = """{
  "name": "20261207210000000-snapshot.cfg",
  "modelCount": 2,
  "created": 1796677200000,
  "models": {
    "echo": {
      "1.0": {
        "defaultVersion": false,
        "marName": "echo.mar",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 1,
        "maxBatchDelay": 100,
        "responseTimeout": 120,
        "startupTimeout": 120,
        "runtimeType": "python"
      },
      "2.0": {
        "defaultVersion": true,
        "marName": "echo_v2.mar",
        "minWorkers": 2,
        "maxWorkers": 2,
        "batchSize": 1,
        "maxBatchDelay": 100,
        "responseTimeout": 120,
        "startupTimeout": 120,
        "runtimeType": "python"
      }
    }
  }
}"""
TORCHSERVE_SNAPSHOT = (
    "#Saving snapshot\n"
    "#Mon Dec 07 21:00:00 UTC 2026\n"
    "inference_address=http\\://127.0.0.1\\:0\n"
    "number_of_netty_threads=32\n"
    "model_store={store}\n"
    "model_snapshot=" + _TS_JSON.replace(":", "\\:").replace("\n", "\\n") + "\n"
)


def test_a_snapshot_written_by_torchserve_restores_with_its_default_version_first():
    restored = restore(TORCHSERVE_SNAPSHOT.replace("{store}", "/s"), "ts.cfg", {})
    assert [(m.version, m.url, m.workers) for m in restored.models] == [
        ("2.0", "echo_v2.mar", 2),
        ("1.0", "echo.mar", 1),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("inference_address=http\\://127.0.0.1\\:8080\n", "no model_snapshot"),
        ('model_snapshot={\\n  "name"\\: "x",\\n  "models"\\: {\\n    "echo', "invalid JSON"),
        ('model_snapshot={"models": {"e": {"1.0": {"minWorkers": "many"}}}}', "whole number"),
        ('model_snapshot={"models": {"e": {"1.0": {"minWorkers": 1}}}}', "handler"),
    ],
)
def test_a_cut_short_or_invalid_snapshot_is_refused_with_the_reason(text, why):
    with pytest.raises(ConfigError, match=why):
        restore(text, "bad.cfg", {})


def test_names_sort_by_their_time_stamp_and_other_files_are_ignored():
    names = [
        "20261207210000000-startup.cfg",
        "20261207210000001-snapshot.cfg",
        "20261207205959999-shutdown.cfg",
        ".snapshot-abc",
        "notes.txt",
        "20261399999999999-snapshot.cfg",  # no such date
    ]
    assert newest_first(names) == [
        "20261207210000001-snapshot.cfg",
        "20261207210000000-startup.cfg",
        "20261207205959999-shutdown.cfg",
    ]


# --- the directory --------------------------------------------------------------


async def test_a_cut_short_newest_snapshot_is_skipped_with_a_log_line(tmp_path, caplog):
    directory = SnapshotDir(tmp_path / "logs" / "config", SERVER)
    directory.open()
    await directory.write(lambda: MODELS[:1])
    await directory.write(lambda: MODELS)
    older, newest = sorted(os.listdir(directory.path))
    path = directory.path / newest
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # as a torn write would
    (directory.path / snapshot_name(1_000)).write_text("model_snapshot={}\n")  # old, empty
    with caplog.at_level(logging.WARNING, logger="supervisor.snapshot"):
        restored = directory.newest({})
    assert restored is not None
    assert restored.source == str(directory.path / older)
    assert [m.version for m in restored.models] == ["1.0"]
    assert f"skipping config snapshot {path}" in caplog.text


async def test_names_keep_increasing_only_the_newest_are_kept_and_crash_leftovers_go(tmp_path):
    path = tmp_path / "snapshots"
    path.mkdir()
    future = snapshot_name(32_503_680_000_000)  # the year 3000: a clock that stepped back
    (path / future).write_text("model_snapshot={}\n")
    (path / ".snapshot-leftover").write_text("half a snap")
    directory = SnapshotDir(path, SERVER)
    directory.open()
    assert not (path / ".snapshot-leftover").exists()
    for _ in range(KEEP + 5):
        await directory.write(lambda: MODELS)
    names = newest_first(os.listdir(path))
    assert len(names) == KEEP
    assert future not in names  # every new one is newer than it, so it was pruned
    assert sorted(os.listdir(path)) == sorted(names)  # and no temporary file is left


# --- the promise, with a real server ---------------------------------------------


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER)
    make_mar(store, "echo_v2", ECHO_HANDLER, version="2.0", manifest_model={"modelName": "echo"})
    return store


def _serve(cwd: Path, store: Path, *extra: str) -> ServeProcess:
    return ServeProcess(
        cwd, *local_ports(), "--model-store", str(store), "--enable-model-api", *extra
    )


async def _versions(server: ServeProcess, management: str, name: str) -> dict[str, tuple]:
    """version -> (isDefault, minWorkers, live workers), once every version is READY."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def get() -> list[dict]:
            r = await client.get(
                f"{management}/models/{name}/all", headers=server.headers("management")
            )
            assert r.status_code == 200, r.text
            return r.json()

        found: list[dict] = []

        def ready() -> bool:
            return bool(found) and all(d["state"] == "READY" for d in found)

        with trio.fail_after(60):
            while not ready():
                found = await get()
                if not ready():
                    await trio.sleep(0.1)
    return {d["modelVersion"]: (d["isDefault"], d["minWorkers"], len(d["workers"])) for d in found}


def _on_disk(cwd: Path) -> dict[str, tuple[bool, int]]:
    """The newest snapshot's versions of echo: version -> (defaultVersion, minWorkers)."""
    directory = cwd / "logs" / "config"
    text = (directory / newest_first(os.listdir(directory))[0]).read_text()
    echo = json.loads(parse_properties(text)["model_snapshot"])["models"]["echo"]
    return {v: (e["defaultVersion"], e["minWorkers"]) for v, e in echo.items()}


async def _kill_9(server: ServeProcess) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    with trio.fail_after(20):
        await server.process.wait()


async def test_register_scale_and_set_default_survive_kill_9(nursery, tmp_path):
    store = _store(tmp_path)
    first = _serve(tmp_path, store, "--models", "echo.mar")
    await nursery.start(first.run)
    _, management, _ = await first.wait_listening()
    headers = first.headers("management")
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        r = await client.post(f"{management}/models?url=echo_v2.mar&initial_workers=1")
        assert r.status_code == 200, r.text
        assert _on_disk(tmp_path) == {"1.0": (True, 1), "2.0": (False, 1)}
        r = await client.put(f"{management}/models/echo/2.0/set-default")
        assert r.status_code == 200, r.text
        assert _on_disk(tmp_path) == {"1.0": (False, 1), "2.0": (True, 1)}
        r = await client.put(f"{management}/models/echo/1.0?min_worker=2&synchronous=true")
        assert r.status_code == 200, r.text
        assert _on_disk(tmp_path) == {"1.0": (False, 2), "2.0": (True, 1)}
    await _kill_9(first)  # right after the last 200: nothing had time to happen since

    snapshots = newest_first(os.listdir(tmp_path / "logs" / "config"))
    assert snapshots, "a snapshot was written"
    torn = tmp_path.resolve() / "logs" / "config" / snapshot_name(32_503_680_000_000)
    torn.write_text((tmp_path / "logs" / "config" / snapshots[0]).read_text()[:200])

    second = _serve(tmp_path, store, "--models", "echo.mar")
    await nursery.start(second.run)
    _, management, _ = await second.wait_listening()
    assert await _versions(second, management, "echo") == {
        "1.0": (False, 2, 2),
        "2.0": (True, 1, 1),
    }
    assert second.has(f"skipping config snapshot {torn}")
    assert second.has("restoring 2 model version(s) from config snapshot")
    await _kill_9(second)


async def test_ncs_writes_no_snapshot_and_restores_none(nursery, tmp_path):
    store = _store(tmp_path)
    first = _serve(tmp_path, store, "--models", "echo.mar", "--ncs")
    await nursery.start(first.run)
    _, management, _ = await first.wait_listening()
    async with httpx.AsyncClient(timeout=60, headers=first.headers("management")) as client:
        r = await client.post(f"{management}/models?url=echo_v2.mar&initial_workers=1")
        assert r.status_code == 200, r.text
    await _kill_9(first)
    assert not (tmp_path / "logs").exists()

    second = _serve(tmp_path, store, "--models", "echo.mar", "--no-config-snapshots")
    await nursery.start(second.run)
    _, management, _ = await second.wait_listening()
    assert await _versions(second, management, "echo") == {"1.0": (True, 1, 1)}
    await _kill_9(second)


async def test_a_torchserve_snapshot_in_ts_config_makes_its_default_version_the_default(
    nursery, tmp_path
):
    store = _store(tmp_path)
    config = tmp_path / "config.properties"
    config.write_text(
        TORCHSERVE_SNAPSHOT.replace("{store}", str(store))
        + "management_address=http://127.0.0.1:0\nmetrics_address=http://127.0.0.1:0\n"
    )
    server = ServeProcess(tmp_path, "--ts-config", str(config))
    await nursery.start(server.run)
    _, management, _ = await server.wait_listening()
    assert await _versions(server, management, "echo") == {
        "1.0": (False, 1, 1),
        "2.0": (True, 2, 2),
    }
    assert not (tmp_path / "logs" / "config").exists()  # no change, so nothing written
    await _kill_9(server)
