"""Settings for orchestrators: ``SUPERVISOR_*`` variables, keys from a read-only file, in-flight.

Every server key can come from the environment (12-factor), between the TOML
file and the flags; the API keys can come from a key file made beforehand (a
Kubernetes Secret mounted read-only), which is used as it is and never
written, rotated or removed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from supervisor.auth import read_key_file
from supervisor.cli import _parser, config_from_args
from supervisor.config import ConfigError, env_defaults, env_settings
from supervisor.server import serve
from tests.docblocks import ROOT, blocks
from tests.test_oip_rest import wait_state
from tests.test_security import bearer, echo_model, secure_config

# --- SUPERVISOR_* variables ----------------------------------------------------------------------


def test_every_server_key_reads_its_type_from_the_environment():
    environ = {
        "SUPERVISOR_PRE_STOP_DELAY": "2.5",
        "SUPERVISOR_READINESS": "any",
        "SUPERVISOR_MAX_CONNECTIONS": "7",
        "SUPERVISOR_LEAN_HTTP": "no",
        "SUPERVISOR_ENABLE_MODEL_API": "TRUE",
        "SUPERVISOR_ACCESS_LOG": "requests.log",
        "SUPERVISOR_MODEL_LOG": "on",
        "SUPERVISOR_KEYS_FROM": "/etc/keys/key_file.json",
        "TS_PRE_STOP_DELAY": "9",  # not ours
    }
    assert env_settings(environ) == {
        "pre_stop_delay": 2.5,
        "readiness": "any",
        "max_connections": 7,
        "lean_http": False,
        "enable_model_api": True,
        "access_log": "requests.log",
        "model_log": True,
        "keys_from": "/etc/keys/key_file.json",
    }


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SUPERVISOR_PRE_STOP_DELAY", "soon", "SUPERVISOR_PRE_STOP_DELAY: expected a number"),
        ("SUPERVISOR_MAX_CONNECTIONS", "1.5", "SUPERVISOR_MAX_CONNECTIONS: expected a number"),
        ("SUPERVISOR_LEAN_HTTP", "maybe", "SUPERVISOR_LEAN_HTTP: expected true or false"),
    ],
)
def test_a_bad_value_names_its_variable(name, value, expected):
    with pytest.raises(ConfigError, match=expected):
        env_settings({name: value})


def test_a_bad_variable_stops_the_start_as_the_docs_show(tmp_path):
    page = ROOT / "docs" / "configuration.md"
    [shown] = [b.text for b in blocks(page) if b.run_by and b.run_by[1] == this_test()]
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SUPERVISOR_PRE_STOP_DELAY": "soon"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == shown + "\n"


def this_test() -> str:
    return test_a_bad_variable_stops_the_start_as_the_docs_show.__name__


def test_models_defaults_and_allowed_urls_do_not_come_from_the_environment():
    environ = {f"SUPERVISOR_{key}": "x" for key in ("MODELS", "DEFAULTS", "ALLOWED_URLS")}
    assert env_settings(environ) == {}


def serve_args(*argv: str):
    return _parser().parse_args(["serve", *argv])


def test_the_environment_wins_over_the_file_and_loses_to_flags(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text("[server]\npre_stop_delay = 1.0\nreadiness = 'any'\nshutdown_grace = 3.0\n")
    environ = {"SUPERVISOR_PRE_STOP_DELAY": "20", "SUPERVISOR_READINESS": "all"}
    config = config_from_args(serve_args("--config", str(toml)), environ)
    assert (config.pre_stop_delay, config.readiness, config.shutdown_grace) == (20.0, "all", 3.0)
    flags = serve_args("--config", str(toml), "--pre-stop-delay", "0", "--readiness", "any")
    config = config_from_args(flags, environ)
    assert (config.pre_stop_delay, config.readiness) == (0.0, "any")


def test_model_defaults_come_from_supervisor_defaults_variables():
    environ = {
        "SUPERVISOR_DEFAULTS_WORKERS": "2",
        "SUPERVISOR_DEFAULTS_WARM_SPARE": "yes",
        "SUPERVISOR_DEFAULTS_RESPONSE_TIMEOUT": "30",
        "SUPERVISOR_DEFAULTS_RESTART_MAX_RESTARTS": "9",
        "SUPERVISOR_DEFAULTS_NAME": "not-a-default",  # a model's identity is not a default
        "SUPERVISOR_DEFAULTS_HANDLER_CONFIG": "{}",  # nor a table
    }
    assert env_defaults(environ) == {
        "workers": 2,
        "warm_spare": True,
        "response_timeout": 30.0,
        "restart": {"max_restarts": 9},
    }
    with pytest.raises(ConfigError, match="SUPERVISOR_DEFAULTS_RESTART_WINDOW: expected a number"):
        env_defaults({"SUPERVISOR_DEFAULTS_RESTART_WINDOW": "a minute"})


def test_model_defaults_from_the_environment_sit_between_the_file_and_the_flags(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text("[defaults]\nworkers = 1\nbatch_size = 4\n[defaults.restart]\nwindow = 30.0\n")
    environ = {"SUPERVISOR_DEFAULTS_WORKERS": "2", "SUPERVISOR_DEFAULTS_RESTART_MAX_RESTARTS": "7"}
    [model] = config_from_args(serve_args("--config", str(toml)), environ).models
    assert (model.workers, model.batch_size) == (2, 4)
    assert (model.restart.max_restarts, model.restart.window) == (7, 30.0)
    flags = serve_args("--config", str(toml), "--workers", "3")
    [model] = config_from_args(flags, environ).models
    assert model.workers == 3


def test_the_toml_file_may_be_named_by_the_environment(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text("[server]\npre_stop_delay = 12.0\n")
    config = config_from_args(serve_args(), {"SUPERVISOR_CONFIG_FILE": str(toml)})
    assert config.pre_stop_delay == 12.0
    other = tmp_path / "other.toml"
    other.write_text("[server]\npre_stop_delay = 3.0\n")
    flag = serve_args("--config", str(other))
    assert config_from_args(flag, {"SUPERVISOR_CONFIG_FILE": str(toml)}).pre_stop_delay == 3.0


def test_an_invalid_variable_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="readiness"):
        config_from_args(serve_args(), {"SUPERVISOR_READINESS": "most"})


# --- keys from a provided (read-only) key file ---------------------------------------------------

KEYS = {
    "inference": {"key": "inference-key-from-the-secret"},
    "management": {"key": "management-key-from-the-secret"},
    "API": {"key": "api-key-from-the-secret"},
}


def mounted_keys(tmp_path: Path, body: object = KEYS) -> Path:
    """A key file in a read-only directory, as a Kubernetes Secret volume mounts it."""
    directory = tmp_path / "secret"
    directory.mkdir()
    path = directory / "key_file.json"
    path.write_text(json.dumps(body))
    path.chmod(0o444)
    directory.chmod(0o555)
    return path


def test_read_key_file_takes_the_keys_as_they_are(tmp_path):
    tokens = read_key_file(mounted_keys(tmp_path))
    assert (tokens.inference, tokens.management, tokens.api) == (
        "inference-key-from-the-secret",
        "management-key-from-the-secret",
        "api-key-from-the-secret",
    )
    assert tokens.fixed
    with pytest.raises(ValueError, match="provided key file"):
        tokens.rotate("inference")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("not json", "not JSON"),
        ({"inference": {"key": "k"}}, "management.key"),
        ({"inference": {"key": ""}, "management": {"key": "m"}}, "inference.key"),
        ({"inference": {"key": "a b"}, "management": {"key": "m"}}, "inference.key"),
        ([1, 2], "inference.key"),
    ],
)
def test_a_key_file_without_usable_keys_is_refused(tmp_path, body, expected):
    path = tmp_path / "keys.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(ValueError, match=expected):
        read_key_file(path)


def test_an_api_key_is_optional(tmp_path):
    body = {"inference": {"key": "i"}, "management": {"key": "m"}}
    tokens = read_key_file(mounted_keys(tmp_path, body))
    assert tokens.api  # random, unused: fixed keys are not rotated


@pytest.mark.slow
async def test_a_mounted_read_only_key_file_is_used_and_left_as_it_was(
    nursery, tmp_path, handler_dir
):
    path = mounted_keys(tmp_path)
    before = (path.read_bytes(), path.stat().st_mtime_ns, stat.S_IMODE(path.stat().st_mode))
    config = secure_config(tmp_path, echo_model(handler_dir), keys_from=str(path))
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[object]) -> None:
        await serve(config, shutdown=shutdown, handle_signals=False, task_status=task_status)
        stopped.set()

    urls = await nursery.start(run)
    keys = {kind: KEYS[kind]["key"] for kind in ("inference", "management")}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        await wait_state(client, f"{urls.management}/models/echo", keys, "READY")
        ok = await client.post(
            f"{urls.inference}/predictions/echo",
            content=b"hi",
            headers={"Content-Type": "text/plain", **bearer(keys["inference"])},
        )
        wrong = await client.post(f"{urls.inference}/predictions/echo", content=b"hi")
        rotate = await client.get(
            f"{urls.management}/token",
            params={"type": "inference"},
            headers=bearer("api-key-from-the-secret"),
        )
    assert (ok.status_code, ok.json()["echo"]) == (200, "hi")
    assert wrong.status_code == 401
    assert rotate.status_code == 400
    assert "provided key file" in rotate.json()["message"]
    shutdown.set()
    with trio.fail_after(30):
        await stopped.wait()
    assert (path.read_bytes(), path.stat().st_mtime_ns, stat.S_IMODE(path.stat().st_mode)) == before
    assert not await trio.Path(config.key_file).exists()  # no key file was written


def test_an_unreadable_keys_from_file_stops_the_start_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "--keys-from", "nowhere.json",
         "--inference-address=127.0.0.1:0", "--management-address=127.0.0.1:0",
         "--metrics-address=127.0.0.1:0", "--ncs"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SUPERVISOR_PRE_STOP_DELAY": "0"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: keys_from nowhere.json: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
