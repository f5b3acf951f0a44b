"""gRPC settings: on for the CLI, off embedded; flags, TOML, environment, config.properties."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from supervisor.cli import _parser, config_from_args
from supervisor.config import ConfigError
from supervisor.models import tsconfig
from supervisor.runner.state import serve_command
from tests.serveproc import local_ports


def config(*argv: str, environ: dict[str, str] | None = None):
    return config_from_args(_parser().parse_args(["serve", *argv]), environ or {})


def test_the_cli_serves_grpc_on_7070_and_7071_unless_told_otherwise(tmp_path):
    on = config()
    assert (on.grpc, on.grpc_inference_address, on.grpc_management_address) == (
        True,
        "127.0.0.1:7070",
        "127.0.0.1:7071",
    )
    assert not config("--no-grpc").grpc
    moved = config("--grpc-inference-address", "0.0.0.0:9090", "--grpc-management-address=[::1]:0")
    assert (moved.grpc_inference_address, moved.grpc_management_address) == (
        "0.0.0.0:9090",
        "[::1]:0",
    )
    toml = tmp_path / "server.toml"
    toml.write_text("[server]\ngrpc = false\n")
    assert not config("--config", str(toml)).grpc
    assert not config(environ={"SUPERVISOR_GRPC": "false"}).grpc
    env = {"SUPERVISOR_GRPC_INFERENCE_ADDRESS": "127.0.0.1:0"}
    assert config(environ=env).grpc_inference_address == "127.0.0.1:0"
    with pytest.raises(ConfigError, match="grpc_inference_address"):
        config("--grpc-inference-address", "http://127.0.0.1:7070")


def test_torchserves_grpc_properties_are_honoured(tmp_path):
    props = {"grpc_inference_port": "9070", "grpc_management_address": "0.0.0.0"}
    server, _, _ = tsconfig.server_settings(props)
    assert server == {
        "grpc_inference_address": "127.0.0.1:9070",
        "grpc_management_address": "0.0.0.0:7071",
    }
    server, _, _ = tsconfig.server_settings({"enable_grpc_ssl": "true"})
    assert server == {"grpc_tls": True}
    assert tsconfig.ignored_keys({**props, "enable_grpc_ssl": "true"}) == ([], [])
    with pytest.raises(ConfigError, match="grpc_inference_port"):
        tsconfig.server_settings({"grpc_inference_port": "lots"})
    properties = tmp_path / "config.properties"
    properties.write_text("grpc_inference_port=0\ngrpc_management_port=0\n")
    served = config("--ts-config", str(properties))
    assert (served.grpc_inference_address, served.grpc_management_address) == (
        "127.0.0.1:0",
        "127.0.0.1:0",
    )


def test_runners_start_servers_without_grpc_unless_asked(tmp_path):
    assert "--no-grpc" in serve_command([], tmp_path, "python")
    asked = serve_command(["--grpc-inference-address=127.0.0.1:0"], tmp_path, "python")
    assert "--no-grpc" not in asked


@pytest.mark.slow
def test_a_taken_grpc_port_stops_the_start_with_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "serve", *local_ports(), "--ncs",
             f"--grpc-inference-address=127.0.0.1:{port}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"error: cannot listen on 127.0.0.1:{port} (gRPC inference)" in result.stderr
    assert "Traceback" not in result.stderr


def test_runners_start_servers_without_a_pre_stop_delay_unless_asked(tmp_path):
    assert "--pre-stop-delay=0" in serve_command([], tmp_path, "python")
    asked = serve_command(["--pre-stop-delay=3"], tmp_path, "python")
    assert "--pre-stop-delay=0" not in asked
    assert asked.index("--pre-stop-delay=3") > asked.index("serve")
