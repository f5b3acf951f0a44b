"""TorchServe's command line and environment: --start/--stop, abbreviations, TS_* variables.

The daemon tests run the real thing: ``python -m supervisor --start`` in a
subprocess (as a script or systemd would), real predictions over HTTP, then
``--stop``, and psutil to check that no process of the server is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from supervisor import daemon, tscommand
from supervisor.cli import _parser, config_from_args, main
from supervisor.config import ConfigError
from supervisor.models import tsconfig
from supervisor.runner import SyncModelServerRunner
from supervisor.runner.state import serve_command
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, eventually, gone, make_mar
from tests.serveproc import ServeProcess

LISTENING = re.compile(r"listening: inference (\S+), management (\S+), metrics (\S+)")


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 90):
    """``python -m supervisor ARGS`` in a subprocess; its CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_ports() -> list[str]:
    return [f"--{api}-address=127.0.0.1:0" for api in ("inference", "management", "metrics")]


def processes_naming(text: str) -> list[psutil.Process]:
    """The live processes whose command line mentions ``text`` (a test's own tmp path)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in cmdline):
            found.append(process)
    return found


# --- abbreviations and program names -----------------------------------------------------


def walk(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from walk(child)


def test_no_parser_takes_abbreviations():
    parsers = list(walk(_parser()))
    assert {p.prog.split()[-1] for p in parsers} >= {"supervisor", "serve", "archive", "validate"}
    assert not [p.prog for p in parsers if p.allow_abbrev], "these expand abbreviations"


def test_stop_is_not_read_as_stop_grace(tmp_path, capsys):
    assert main(["serve", "--stop", "--pid-file", str(tmp_path / "pid")]) == 0
    assert "no model server is running" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--stop-grac", "1"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --stop-grac" in capsys.readouterr().err


def test_usage_names_the_program_it_was_called_by(tmp_path):
    answer = run_cli("serve", "--help", cwd=tmp_path)
    assert answer.returncode == 0
    assert answer.stdout.startswith("usage: python -m supervisor serve ")
    script = Path(sys.executable).parent / "trio-supervisor"
    if not script.exists():
        pytest.skip(f"the console script is not installed ({script})")
    answer = subprocess.run(
        [str(script), "serve", "--help"], capture_output=True, text=True, check=False
    )
    assert answer.returncode == 0
    assert answer.stdout.startswith("usage: trio-supervisor serve ")
    refused = subprocess.run([str(script), "bogus"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("usage: trio-supervisor ")


def test_torchserve_style_command_lines_are_serve_ones(capsys):
    assert tscommand.serve_argv(["--start", "--ncs"]) == ["serve", "--start", "--ncs"]
    assert tscommand.serve_argv(["--help"]) == ["--help"]
    assert tscommand.serve_argv(["validate", "x.mar"]) == ["validate", "x.mar"]
    with pytest.raises(SystemExit) as shown:
        main(["--version"])
    assert shown.value.code == 0
    assert capsys.readouterr().out.startswith("trio-supervisor ")


def test_the_default_pid_file_is_torchserves():
    assert daemon.default_pid_file() == Path(tempfile.gettempdir()) / ".model_server.pid"
    assert Path("logs/ts_log.log") == daemon.DEFAULT_LOG_FILE


# --- --stop without a server ---------------------------------------------------------------


def test_stop_with_a_stale_pid_file_removes_it(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(f"{dead.pid}\n")
    assert main(["--stop", "--pid-file", str(pid_file)]) == 0
    assert "no model server is running" in capsys.readouterr().out
    assert not pid_file.exists()


@pytest.fixture
def lookalike():
    """A live process whose command line names ``supervisor`` (as a server's does)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "supervisor"])
    yield process
    process.kill()
    process.wait()


def pid_file_for(path: Path, pid: int, *, written: float) -> Path:
    path.write_text(f"{pid}\n")
    os.utime(path, (written, written))
    return path


def test_a_pid_file_held_by_a_live_server_is_refused(tmp_path, lookalike):
    began = psutil.Process(lookalike.pid).create_time()
    pid_file = pid_file_for(tmp_path / "server.pid", lookalike.pid, written=began + 1)
    assert daemon.running_pid(pid_file) == lookalike.pid
    with pytest.raises(daemon.DaemonError, match="already running"):
        daemon.holding_pid_file(pid_file).__enter__()
    assert pid_file.read_text() == f"{lookalike.pid}\n"


def test_a_pid_file_older_than_its_process_is_stale(tmp_path, lookalike):
    """A reused pid: the live process began after the pid file was written."""
    began = psutil.Process(lookalike.pid).create_time()
    pid_file = pid_file_for(tmp_path / "server.pid", lookalike.pid, written=began - 60)
    assert daemon.running_pid(pid_file) is None
    assert not pid_file.exists()


def test_a_pid_file_naming_another_program_is_stale(tmp_path):
    """--stop never signals a process that is not a model server."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        began = psutil.Process(other.pid).create_time()
        pid_file = pid_file_for(tmp_path / "server.pid", other.pid, written=began + 1)
        assert main(["--stop", "--pid-file", str(pid_file)]) == 0
        assert not pid_file.exists()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_pid_file_is_written_whole_and_removed_after(tmp_path):
    pid_file = tmp_path / "run" / "server.pid"
    with daemon.holding_pid_file(pid_file):
        assert pid_file.read_text() == f"{os.getpid()}\n"
        assert pid_file.stat().st_mode & 0o777 == 0o644
    assert not pid_file.exists()


# --- --start and --stop, real ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    make_mar(tmp_path / "store", "echo", ECHO_HANDLER)
    make_mar(tmp_path / "store", "broken", CRASH_AT_LOAD_HANDLER)
    return tmp_path / "store"


def start_args(tmp_path: Path, *models: str) -> list[str]:
    return [
        "--start",
        "--model-store",
        str(tmp_path / "store"),
        "--models",
        *models,
        "--pid-file",
        str(tmp_path / "server.pid"),
        "--daemon-log",
        str(tmp_path / "logs" / "server.log"),
        "--key-file",
        str(tmp_path / "keys.json"),
        *local_ports(),
    ]


@pytest.mark.slow
def test_start_serves_predictions_then_stop_leaves_no_process(tmp_path, store):
    started = run_cli(*start_args(tmp_path, "echo.mar"), cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    match = LISTENING.search(started.stdout)
    assert match, started.stdout
    pid = int((tmp_path / "server.pid").read_text())
    try:
        keys = json.loads((tmp_path / "keys.json").read_text())
        answer = httpx.post(
            f"{match[1]}/predictions/echo",
            content=b"hello",
            headers={"Authorization": f"Bearer {keys['inference']['key']}"},
        )
        assert answer.status_code == 200
        assert answer.json()["echo"] == "hello"
        family = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        assert len(family) >= 2  # the server and its worker
        again = run_cli(*start_args(tmp_path, "echo.mar"), cwd=tmp_path)
        assert again.returncode == 1
        assert f"already running (pid {pid})" in again.stderr
    finally:
        stopped = run_cli("--stop", "--pid-file", str(tmp_path / "server.pid"), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"model server stopped (pid {pid})" in stopped.stdout
    assert all(gone(p) for p in family)
    assert not (tmp_path / "server.pid").exists()
    assert not processes_naming(str(tmp_path))
    assert "listening:" in (tmp_path / "logs" / "server.log").read_text()


@pytest.mark.slow
def test_a_failed_start_says_why_and_leaves_nothing_running(tmp_path, store):
    started = run_cli(*start_args(tmp_path, "broken.mar"), "--max-restarts", "0", cwd=tmp_path)
    assert started.returncode == 1
    assert "error: the server did not start: model broken 1.0 failed to load" in started.stderr
    assert "the last lines of" in started.stderr
    assert "weights file is corrupt" in started.stderr  # the log's tail
    assert not (tmp_path / "server.pid").exists()
    assert not processes_naming(str(tmp_path))


def test_a_bad_flag_with_start_fails_before_launching(tmp_path):
    started = run_cli(
        "--start", "--batch-size", "0", "--pid-file", str(tmp_path / "p"), cwd=tmp_path
    )
    assert started.returncode == 2
    assert "batch_size" in started.stderr
    assert not (tmp_path / "logs").exists()


# --- TS_* environment variables --------------------------------------------------------------


def args_for(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["serve", *argv])


def test_ts_variables_need_enable_envvars_config(tmp_path):
    props = tmp_path / "ts.properties"
    props.write_text("job_queue_size=7\n")
    env = {"TS_JOB_QUEUE_SIZE": "9", "TS_MODEL_STORE": str(tmp_path)}
    config = config_from_args(args_for("--ts-config", str(props)), env)
    assert config.models[0].job_queue_size == 7
    props.write_text("job_queue_size=7\nenable_envvars_config=true\n")
    config = config_from_args(args_for("--ts-config", str(props)), env)
    assert config.models[0].job_queue_size == 9
    assert config.model_store == str(tmp_path)


def test_flags_beat_ts_variables_which_beat_the_files(tmp_path):
    props = tmp_path / "ts.properties"
    props.write_text("enable_envvars_config=true\ninference_address=http://127.0.0.1:7001\n")
    toml = tmp_path / "server.toml"
    toml.write_text('[server]\nmanagement_address = "127.0.0.1:7002"\n')
    env = {
        "TS_INFERENCE_ADDRESS": "http://127.0.0.1:7101",
        "TS_MANAGEMENT_ADDRESS": "127.0.0.1:7102",
        "TS_METRICS_ADDRESS": "127.0.0.1:7103",
    }
    argv = ["--ts-config", str(props), "--config", str(toml), "--metrics-address", "127.0.0.1:7203"]
    config = config_from_args(args_for(*argv), env)
    assert (config.inference_address, config.management_address, config.metrics_address) == (
        "127.0.0.1:7101",
        "127.0.0.1:7102",
        "127.0.0.1:7203",
    )


def test_ts_load_models_loads_models_tuned_by_the_models_json(tmp_path):
    props = tmp_path / "ts.properties"
    props.write_text(
        "enable_envvars_config=true\nload_models=other.mar\n"
        'models={"echo": {"1.0": {"marName": "echo.mar", "batchSize": 4}}}\n'
    )
    config = config_from_args(args_for("--ts-config", str(props)), {"TS_LOAD_MODELS": "echo.mar"})
    [model] = config.models
    assert (model.url, model.batch_size) == ("echo.mar", 4)


def test_ts_allowed_urls_needs_use_env_allowed_urls_too():
    env = {"TS_ALLOWED_URLS": "https://.*", "TS_NUMBER_OF_NETTY_THREADS": "4"}
    keys, ignored = tsconfig.env_properties({"enable_envvars_config": "true"}, env)
    assert keys == {}
    assert ignored == ["TS_NUMBER_OF_NETTY_THREADS"]
    props = {"enable_envvars_config": "TRUE", "use_env_allowed_urls": "true"}
    keys, _ = tsconfig.env_properties(props, env)
    assert keys == {"allowed_urls": "https://.*"}


def test_a_bad_ts_variable_names_the_environment(tmp_path):
    props = tmp_path / "ts.properties"
    props.write_text("enable_envvars_config=true\n")
    with pytest.raises(ConfigError, match=r"environment \(TS_\* variables\) job_queue_size"):
        config_from_args(args_for("--ts-config", str(props)), {"TS_JOB_QUEUE_SIZE": "many"})


def test_ts_config_file_is_read_when_no_flag_names_one(tmp_path):
    props = tmp_path / "from-env.properties"
    props.write_text("job_queue_size=11\n")
    other = tmp_path / "from-flag.properties"
    other.write_text("job_queue_size=12\n")
    env = {"TS_CONFIG_FILE": str(props)}
    assert config_from_args(args_for(), env).models[0].job_queue_size == 11
    config = config_from_args(args_for("--ts-config", str(other)), env)
    assert config.models[0].job_queue_size == 12


async def test_a_real_server_listens_where_ts_inference_address_says(tmp_path, monkeypatch):
    props = tmp_path / "config.properties"
    props.write_text("enable_envvars_config=true\n")
    port = free_port()
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", f"http://127.0.0.1:{port}")
    others = [f"--{api}-address=127.0.0.1:0" for api in ("management", "metrics")]
    server = ServeProcess(tmp_path, "--ts-config", str(props), *others)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        inference, _, _ = await server.wait_listening()
        assert inference == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{inference}/ping")
        assert answer.json() == {"status": "Healthy"}
        assert server.process is not None
        server.process.terminate()
        await eventually(lambda: server.process is not None and server.process.poll() is not None)


# --- errors name the file given -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("default_workers_per_model=abc\n", "default_workers_per_model: expected a whole number"),
        ("job_queue_size=\\u12\n", "malformed \\\\uxxxx escape"),
        ("models={not json\n", "models: invalid JSON"),
        ("key_file=$$TS_CLI_TEST_UNSET$$\n", "environment variable TS_CLI_TEST_UNSET"),
    ],
)
def test_a_properties_error_names_the_file_given(tmp_path, capsys, text, problem):
    props = tmp_path / "prod-ts.properties"
    props.write_text(text)
    assert main(["serve", "--ts-config", str(props)]) == 2
    err = capsys.readouterr().err
    assert f"error: {props}" in err
    assert re.search(problem, err)
    assert "config.properties" not in err


# --- --log-config ------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def log_config_args(path: Path) -> argparse.Namespace:
    return args_for("--log-config", str(path))


def test_log_config_applies_a_python_dict_config(tmp_path, restore_logging):
    target = tmp_path / "server.log"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(target)}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    assert tscommand.apply_log_config(log_config_args(path)) is None
    logging.getLogger("supervisor").info("through the log config")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "through the log config" in target.read_text()


def test_log_config_for_log4j_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "log4j2.xml"
    path.write_text("<Configuration/>")
    with caplog.at_level(logging.WARNING, logger="supervisor"):
        assert tscommand.apply_log_config(log_config_args(path)) is None
    assert "ignoring --log-config" in caplog.text
    assert "not log4j2" in caplog.text


def test_log_config_problems_are_reported(tmp_path):
    assert "not found" in str(tscommand.apply_log_config(log_config_args(tmp_path / "no.json")))
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 2}')
    assert "--log-config" in str(tscommand.apply_log_config(log_config_args(bad)))


def test_torchserve_flags_without_effect_are_accepted_and_logged(tmp_path, caplog):
    args = args_for("--workflow-store", str(tmp_path), "--ppath", "plugins")
    with caplog.at_level(logging.WARNING, logger="supervisor"):
        assert tscommand.apply_log_config(args) is None
    assert "ignoring --workflow-store" in caplog.text
    assert "ignoring --plugins-path plugins" in caplog.text


# --- the runner and validate on fixed addresses ----------------------------------------------


def test_serve_command_takes_fixed_addresses(tmp_path):
    command = serve_command([], tmp_path, "python", {"inference": "127.0.0.1:8080"})
    assert "--inference-address=127.0.0.1:8080" in command
    assert "--management-address=127.0.0.1:0" in command
    with pytest.raises(ValueError, match="no such API: grpc"):
        serve_command([], tmp_path, "python", {"grpc": "127.0.0.1:7070"})
    with pytest.raises(ValueError, match="no such API"):
        SyncModelServerRunner(addresses={"inferenc": "127.0.0.1:1"})


@pytest.mark.slow
def test_the_runner_listens_on_a_fixed_address(tmp_path, store):
    port = free_port()
    args = ["--model-store", str(store), "--models", "echo.mar"]
    with SyncModelServerRunner(args, addresses={"inference": f"127.0.0.1:{port}"}) as runner:
        runner.start()
        endpoint = runner.wait_until_running(time.monotonic() + 60)
        assert endpoint.inference == f"http://127.0.0.1:{port}"
        assert endpoint.management != f"http://127.0.0.1:{port}"


@pytest.mark.slow
def test_validate_binds_the_address_given(tmp_path, store, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["validate", str(store / "echo.mar"), "--inference-address", f"127.0.0.1:{port}"]
        assert main([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["passed"]
    assert str(port) in json.dumps(report["tries"])
