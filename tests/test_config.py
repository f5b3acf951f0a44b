"""The config loader: TOML sections, overrides, validation, the built-in model."""

from __future__ import annotations

import textwrap

import pytest

from supervisor.config import (
    DEFAULT_MODEL,
    KIB,
    MIB,
    MILLISECONDS,
    SECONDS,
    ConfigError,
    ModelConfig,
    ServerConfig,
    load_config,
    model_config,
)
from supervisor.policy import RestartPolicy

FULL = """
    [server]
    inference_address = "0.0.0.0:9000"
    model_store = "/srv/models"
    shutdown_grace = 3.5

    [defaults]
    workers = 2
    batch_size = 4
    [defaults.restart]
    max_restarts = 7
    window = 30.0

    [[models]]
    name = "iris"
    handler = "handlers.builtin.iris"

    [[models]]
    name = "resnet"
    version = "2.0"
    handler = "my_handler:Net"
    model_dir = "resnet"
    batch_size = 8
    memory_limit_mb = 512
    handler_config = { threshold = 0.5 }
    [models.restart]
    window = 5.0
"""


@pytest.fixture
def write(tmp_path):
    def write(source: str, name: str = "config.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


def test_units():
    assert (SECONDS, MILLISECONDS, KIB, MIB) == (1.0, 0.001, 1024, 1024 * 1024)


def test_full_file(write):
    config = load_config(write(FULL))
    assert isinstance(config, ServerConfig)
    assert config.inference_address == "0.0.0.0:9000"
    assert config.management_address == "127.0.0.1:8081"
    assert config.model_store == "/srv/models"
    assert config.shutdown_grace == 3.5
    iris, resnet = config.models
    assert (iris.name, iris.version, iris.workers, iris.batch_size) == ("iris", "1.0", 2, 4)
    assert iris.restart == RestartPolicy(max_restarts=7, window=30.0)
    assert (resnet.name, resnet.version, resnet.handler) == ("resnet", "2.0", "my_handler:Net")
    assert (resnet.workers, resnet.batch_size) == (2, 8)
    assert (iris.memory_limit_mb, resnet.memory_limit_mb) == (0, 512)  # off unless set
    assert resnet.model_dir == "/srv/models/resnet"  # relative dirs are found in the store
    assert resnet.handler_config == {"threshold": 0.5}
    # The model's restart table layers over the defaults' one, key by key.
    assert resnet.restart == RestartPolicy(max_restarts=7, window=5.0)


def test_path_may_be_a_string(write):
    assert load_config(str(write(FULL))).models[1].name == "resnet"


def test_server_overrides_win(write):
    config = load_config(write(FULL), server={"inference_address": "1.2.3.4:1", "model_store": ""})
    assert config.inference_address == "1.2.3.4:1"
    assert config.model_store == ""
    assert config.shutdown_grace == 3.5


def test_default_overrides_win_over_file_defaults_but_not_over_models(write):
    config = load_config(write(FULL), defaults={"workers": 3, "batch_size": 2})
    iris, resnet = config.models
    assert (iris.workers, iris.batch_size) == (3, 2)
    assert (resnet.workers, resnet.batch_size) == (3, 8)


def test_restart_overrides_merge_with_the_file_restart_defaults(write):
    config = load_config(write(FULL), defaults={"restart": {"window": 99.0}})
    iris, resnet = config.models
    assert iris.restart == RestartPolicy(max_restarts=7, window=99.0)
    assert resnet.restart == RestartPolicy(max_restarts=7, window=5.0)


def test_model_overrides_replace_the_file_models(write):
    config = load_config(write(FULL), models=[{"name": "only", "handler": "h"}])
    (only,) = config.models
    assert (only.name, only.handler, only.workers, only.batch_size) == ("only", "h", 2, 4)
    assert only.restart.max_restarts == 7


def test_no_file_and_no_models_serves_the_builtin_iris():
    config = load_config()
    assert config.models == (DEFAULT_MODEL,)
    assert DEFAULT_MODEL.name == "iris"
    assert DEFAULT_MODEL.handler == "handlers.builtin.iris"
    assert config == ServerConfig(models=(DEFAULT_MODEL,))


def test_file_without_models_serves_the_builtin_with_the_defaults(write):
    config = load_config(write("[defaults]\nworkers = 3\n"))
    (iris,) = config.models
    assert (iris.name, iris.handler, iris.workers) == ("iris", "handlers.builtin.iris", 3)


def test_empty_model_overrides_serve_the_builtin(write):
    (iris,) = load_config(write(FULL), models=[]).models
    assert (iris.name, iris.handler, iris.workers, iris.batch_size) == (
        "iris",
        "handlers.builtin.iris",
        2,
        4,
    )


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("[serverr]\n", ["serverr"]),
        ("[server]\n[bogus]\n[other]\n", ["bogus", "other"]),
        ("[server]\nport = 1\n", ["port"]),
        ("[defaults]\nwrkers = 1\n", ["wrkers"]),
        ("[defaults.restart]\nmax_restart = 1\n", ["max_restart"]),
        ('[[models]]\nname = "m"\nhandler = "h"\ncolour = "red"\n', ["colour"]),
        ('[[models]]\nname = "m"\nhandler = "h"\n[models.restart]\nwndow = 1\n', ["wndow"]),
    ],
)
def test_unknown_keys_and_sections_are_named(write, source, names):
    with pytest.raises(ConfigError) as info:
        load_config(write(source))
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("model", "where"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -3}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": "4"}, "batch_size"),
        ({"name": "a/b"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "-lead"}, "name"),
        ({"version": "1 0"}, "version"),
        ({"handler": ""}, "handler"),
        ({"workers": -1}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"max_workers": -1}, "max_workers"),
        ({"job_queue_size": 0}, "job_queue_size"),
        ({"max_batch_delay": -0.1}, "max_batch_delay"),
        ({"response_timeout": 0}, "response_timeout"),
        ({"startup_timeout": -1}, "startup_timeout"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_timeout": "10"}, "heartbeat_timeout"),
        ({"stop_grace": -1}, "stop_grace"),
        ({"log_lines": 0}, "log_lines"),
        ({"log_bytes": 0}, "log_bytes"),
        ({"memory_limit_mb": -1}, "memory_limit_mb"),
        ({"memory_limit_mb": 0.5}, "memory_limit_mb"),
        ({"restart": {"window": 0}}, "window"),
        ({"restart": {"jitter": 2}}, "jitter"),
        ({"restart": {"max_restarts": 1.5}}, "max_restarts"),
        ({"restart": {"window": "5"}}, "window"),
        ({"restart": {"backoff_max": "30s"}}, "backoff_max"),
    ],
)
def test_invalid_model_values_raise_config_error(model, where):
    with pytest.raises(ConfigError, match=where):
        load_config(models=[{"name": "m", "handler": "h", **model}])


def test_invalid_value_in_a_file_raises_config_error(write):
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(write('[[models]]\nname = "m"\nhandler = "h"\nbatch_size = 0\n'))
    with pytest.raises(ConfigError, match="shutdown_grace"):
        load_config(write("[server]\nshutdown_grace = -1\n"))
    with pytest.raises(ConfigError, match="shutdown_grace"):
        load_config(write('[server]\nshutdown_grace = "2s"\n'))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("missing", ["name", "handler"])
def test_name_and_handler_are_required(missing):
    table = {"name": "m", "handler": "h"}
    del table[missing]
    with pytest.raises(ConfigError, match="required"):
        model_config(table)


def test_duplicate_name_and_version_is_rejected(write):
    source = '[[models]]\nname = "m"\nhandler = "h"\n[[models]]\nname = "m"\nhandler = "g"\n'
    with pytest.raises(ConfigError, match=r"model m version 1\.0 is configured twice"):
        load_config(write(source))


def test_same_name_with_other_versions_is_allowed():
    config = load_config(
        models=[
            {"name": "m", "handler": "h", "version": "1"},
            {"name": "m", "handler": "h", "version": "2"},
        ]
    )
    assert [(m.name, m.version) for m in config.models] == [("m", "1"), ("m", "2")]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_bad_toml_is_a_config_error(write):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(write("[server\n"))


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)


@pytest.mark.parametrize(
    "source",
    [
        '[models]\nname = "m"\nhandler = "h"\n',  # a table where an array of tables belongs
        "models = 5\n",
        'models = ["m"]\n',
        "server = 5\n",
        "defaults = 5\n",
        "[defaults]\nrestart = 5\n",
        '[[models]]\nname = "m"\nhandler = "h"\nrestart = 5\n',
    ],
)
def test_wrong_shapes_are_config_errors(write, source):
    with pytest.raises(ConfigError):
        load_config(write(source))


def test_file_restart_defaults_of_the_wrong_shape_with_overrides(write):
    with pytest.raises(ConfigError, match="restart"):
        load_config(write("[defaults]\nrestart = 5\n"), defaults={"restart": {"window": 1.0}})


def test_model_config_layers_over_defaults():
    config = model_config(
        {"name": "m", "handler": "h", "batch_size": 3, "restart": {"jitter": 0.0}},
        {"batch_size": 1, "workers": 2, "restart": {"jitter": 0.5, "max_restarts": 1}},
    )
    assert (config.batch_size, config.workers) == (3, 2)
    assert config.restart == RestartPolicy(jitter=0.0, max_restarts=1)


def test_model_config_without_defaults():
    assert model_config({"name": "m", "handler": "h"}) == ModelConfig(name="m", handler="h")


def test_worker_limit_is_at_least_workers():
    assert ModelConfig(name="m", handler="h", workers=3, max_workers=1).worker_limit == 3
    assert ModelConfig(name="m", handler="h", workers=1, max_workers=4).worker_limit == 4


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        DEFAULT_MODEL.workers = 5  # type: ignore[misc]


def test_relative_model_dir_without_a_store_is_resolved_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(models=[{"name": "m", "handler": "h", "model_dir": "models/m"}])
    assert config.models[0].model_dir == str(tmp_path / "models" / "m")


@pytest.mark.parametrize(
    "server",
    [
        {"disable_token_authorization": "false"},  # a string is not a switch
        {"enable_model_api": "false"},
        {"allowed_urls": ["http://ok/.*", "(unclosed"]},
        {"allowed_urls": [5]},
    ],
)
def test_security_settings_are_checked_strictly(server):
    with pytest.raises(ConfigError):
        load_config(server=server)


def test_a_single_allowed_url_string_is_one_pattern():
    config = load_config(server={"allowed_urls": r"https://models\.example\.com/.*"})
    assert config.allowed_urls == (r"https://models\.example\.com/.*",)
