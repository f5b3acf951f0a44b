"""TorchServe's config.properties and model-config.yaml, read as-is; the CLI that layers them."""

from __future__ import annotations

import logging
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli import _parser, config_from_args
from supervisor.config import (
    MILLISECONDS,
    ConfigError,
    ModelConfig,
    load_config,
    model_config,
    name_from_url,
)
from supervisor.models import tsconfig
from supervisor.models.tsconfig import (
    ignored_keys,
    model_yaml_settings,
    parse_properties,
    read_properties,
    server_settings,
    store_tables,
    substitute_env,
)
from supervisor.policy import RestartPolicy

# Shaped like the examples in TorchServe's docs/configuration.md and docker/ (the
# models JSON continued over lines with backslashes, as the docs write it).
REALISTIC = r"""
# TorchServe settings
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
number_of_netty_threads=32
job_queue_size=1000
model_store=/home/model-server/model-store
load_models=noop.mar,resnet=resnet-18.mar
default_workers_per_model=2
default_response_timeout=300
max_request_size=10485760
vmargs=-Xmx4g -XX:+ExitOnOutOfMemoryError
enable_envvars_config=true
install_py_dep_per_model=true
allowed_urls=https://s3.amazonaws.com/.*,https://torchserve.pytorch.org/.*
disable_token_authorization=true
enable_model_api=true
models={\
  "noop": {\
    "1.0": {\
        "defaultVersion": true,\
        "marName": "noop.mar",\
        "minWorkers": 1,\
        "maxWorkers": 2,\
        "batchSize": 4,\
        "maxBatchDelay": 100,\
        "responseTimeout": 120,\
        "startupTimeout": 60\
    }\
  }\
}
"""


def load(props, store_entries=()):
    server, defaults, models = server_settings(props, store_entries=store_entries)
    return load_config(server=server, defaults=defaults, models=models)


def test_exported_members():
    assert set(tsconfig.__all__) == {
        "ALL_MODELS",
        "ENV_VARS",
        "MAX_YAML_BYTES",
        "env_properties",
        "ignored_keys",
        "model_yaml_settings",
        "parse_properties",
        "parse_snapshot_models",
        "read_properties",
        "server_settings",
        "store_tables",
        "substitute_env",
        "with_model_params",
    }


# --- .properties syntax -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=1\nb: 2\nc 3\n", {"a": "1", "b": "2", "c": "3"}),
        ("  a  =  1\n\tb\t:\t2", {"a": "1", "b": "2"}),
        ("# comment\n! also a comment\n   # indented\n\n   \na=1", {"a": "1"}),
        ("a=1 # not a comment", {"a": "1 # not a comment"}),
        ("a=b=c\nd:e:f", {"a": "b=c", "d": "e:f"}),
        ("a = = v", {"a": "= v"}),
        ("a\nb=\nc:", {"a": "", "b": "", "c": ""}),
        ("=v", {"": "v"}),
        ("a=1\na=2", {"a": "2"}),
        ("a=x  ", {"a": "x  "}),  # trailing blanks stay, as in Java
        ("a=1\r\nb=2\rc=3", {"a": "1", "b": "2", "c": "3"}),
        # continuations: the next line's leading blanks are dropped
        ("a=one\\\n    two\\\n\tthree\nb=4", {"a": "onetwothree", "b": "4"}),
        ("a=x\\\\\nb=y", {"a": "x\\", "b": "y"}),  # an even run of backslashes ends the line
        ("a=x\\\\\\\n  y", {"a": "x\\y"}),
        ("# comment \\\na=1", {"a": "1"}),  # a comment line never continues
        ("a=x\\\n# still a\nb=2", {"a": "x# still a", "b": "2"}),
        ("a=x\\\n\nb=2", {"a": "x", "b": "2"}),  # a blank line ends the continuation
        ("a=x\\", {"a": "x"}),  # a backslash at the end of the file
        # escapes
        (r"my\:key=v", {"my:key": "v"}),
        (r"my\=key=v", {"my=key": "v"}),
        (r"my\ key = v", {"my key": "v"}),
        (r"\#a=1", {"#a": "1"}),
        (r"a=\t\n\r\f", {"a": "\t\n\r\f"}),
        (r"a=\u00e9t\u00C9", {"a": "étÉ"}),
        (r"a=\q\\\=\:", {"a": "q\\=:"}),
        (r"a=C:\\models\\store", {"a": "C:\\models\\store"}),
        (r"a=\ lead", {"a": " lead"}),
    ],
)
def test_properties_syntax(text, expected):
    assert parse_properties(text) == expected


@pytest.mark.parametrize("text", [r"a=\u12", r"a=\uXYZW", r"a\u=1"])
def test_malformed_unicode_escape_is_a_config_error(text):
    with pytest.raises(ConfigError, match="malformed"):
        parse_properties(text)


def _java_escape(text: str, *, key: bool) -> str:
    """What java.util.Properties.store writes for ``text``."""
    out = []
    for i, ch in enumerate(text):
        if ch == " ":
            out.append("\\ " if key or i == 0 else " ")
        elif ch in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[ch])
        elif ch in "\\=:#!":
            out.append("\\" + ch)
        elif not " " < ch < "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


_texts = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=20)


@given(st.dictionaries(_texts, _texts, max_size=5))
def test_properties_read_what_java_writes(props):
    lines = [f"{_java_escape(k, key=True)}={_java_escape(v, key=False)}" for k, v in props.items()]
    assert parse_properties("# written by java\n" + "\n".join(lines)) == props


def test_read_properties(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("model_store=/srv/store\n")
    assert read_properties(path) == {"model_store": "/srv/store"}
    with pytest.raises(ConfigError, match="cannot read TorchServe config"):
        read_properties(tmp_path / "absent.properties")
    path.write_bytes(b"a=\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read TorchServe config"):
        read_properties(path)


def test_env_references_are_substituted():
    props = {"model_store": "$$STORE$$/models", "pair": "$$AB$$:$$CD$$", "plain": "$x$"}
    environ = {"STORE": "/srv", "AB": "1", "CD": "2"}
    assert substitute_env(props, environ) == {
        "model_store": "/srv/models",
        "pair": "1:2",
        "plain": "$x$",
    }
    with pytest.raises(ConfigError, match="MISSING is not set"):
        substitute_env({"model_store": "$$MISSING$$"}, environ)


# --- config.properties -> our config ---------------------------------------------


def test_realistic_config_maps_to_our_config(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text(REALISTIC)
    props = read_properties(path)
    config = load(props)
    assert config.inference_address == "0.0.0.0:8080"
    assert config.management_address == "0.0.0.0:8081"
    assert config.metrics_address == "0.0.0.0:8082"
    assert config.model_store == "/home/model-server/model-store"
    assert config.max_request_size == 10485760
    assert config.allowed_urls == (
        "https://s3.amazonaws.com/.*",
        "https://torchserve.pytorch.org/.*",
    )
    assert config.disable_token_authorization is True
    assert config.enable_model_api is True
    noop, resnet = config.models
    assert noop == ModelConfig(
        name="noop",
        url="noop.mar",
        version="1.0",
        workers=1,
        max_workers=2,
        batch_size=4,
        max_batch_delay=100 * MILLISECONDS,
        job_queue_size=1000,
        response_timeout=120,
        startup_timeout=60,
    )
    assert (resnet.name, resnet.url, resnet.handler, resnet.version) == (
        "resnet",
        "resnet-18.mar",
        "",
        "1.0",
    )
    assert (resnet.workers, resnet.job_queue_size, resnet.response_timeout) == (2, 1000, 300)
    assert ignored_keys(props) == (
        ["install_py_dep_per_model", "number_of_netty_threads", "vmargs"],
        [],
    )


def test_an_empty_file_changes_nothing():
    assert server_settings({}) == ({}, {}, [])
    assert load({}) == load_config()


def test_unknown_keys_are_ignored_and_named():
    props = {"job_queue_sizee": "5", "cors_allowed_origin": "*", "job_queue_size": "7"}
    assert ignored_keys(props) == (["cors_allowed_origin"], ["job_queue_sizee"])
    assert server_settings(props) == ({}, {"job_queue_size": 7}, [])


@pytest.mark.parametrize(
    ("value", "ours"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("HTTP://localhost:9000/", "localhost:9000"),
        ("http://[::1]:8080", "[::1]:8080"),
        ("http://example.com", "example.com:80"),
        ("127.0.0.1:8085", "127.0.0.1:8085"),
        (" http://0.0.0.0:8081 ", "0.0.0.0:8081"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("HTTPS://[::1]", "https://[::1]:443"),
    ],
)
def test_addresses(value, ours):
    server, _, _ = server_settings({"management_address": value})
    assert server == {"management_address": ours}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("unix:/tmp/management.sock", "unix listeners are not supported"),
        ("ftp://127.0.0.1:21", "ftp listeners are not supported"),
        ("https://127.0.0.1:8443/x", "expected https://HOST:PORT"),
        ("http://127.0.0.1:99999", "inference_address"),
        ("http://127.0.0.1:port", "inference_address"),
        ("http://:8080", "expected http://HOST:PORT"),
        ("http://127.0.0.1:8080/predictions", "expected http://HOST:PORT"),
        ("", "inference_address"),
    ],
)
def test_bad_addresses(value, message):
    with pytest.raises(ConfigError, match=message):
        server_settings({"inference_address": value})


@pytest.mark.parametrize(
    ("props", "key"),
    [
        ({"job_queue_size": "lots"}, "job_queue_size"),
        ({"job_queue_size": "0"}, "job_queue_size"),  # valid for TorchServe's parser, not for us
        ({"default_workers_per_model": "-1"}, "default_workers_per_model"),
        ({"default_workers_per_model": "two"}, "default_workers_per_model"),
        ({"default_response_timeout": "soon"}, "default_response_timeout"),
        ({"default_response_timeout": "0"}, "response_timeout"),
        ({"default_startup_timeout": "-5"}, "startup_timeout"),
        ({"max_request_size": "1.5"}, "max_request_size"),
        ({"max_request_size": "0"}, "max_request_size"),
        ({"enable_model_api": "yes"}, "enable_model_api"),
        ({"disable_token_authorization": "1"}, "disable_token_authorization"),
        ({"allowed_urls": "https://(unclosed"}, "allowed_urls"),
        ({"model_store": ""}, "model_store"),
        ({"models": "{not json"}, "models: invalid JSON"),
        ({"models": "[1]"}, "models"),
        ({"models": '{"a": 5}'}, "models a"),
        ({"models": '{"a": {"1.0": 5}}'}, r"models a 1\.0"),
        ({"models": '{"a": {"1.0": {"batchSize": "x"}}}'}, "batchSize"),
        ({"models": '{"a": {"1.0": {"batchSize": true}}}'}, "batchSize"),
        ({"models": '{"a": {"1.0": {"maxBatchDelay": [1]}}}'}, "maxBatchDelay"),
        ({"models": '{"a": {"1.0": {"defaultVersion": "maybe"}}}'}, "defaultVersion"),
        ({"models": '{"a": {"1.0": {"marName": 3}}}'}, "marName"),
        ({"model_snapshot": "nope"}, "model_snapshot"),
        ({"model_snapshot": '{"models": 5}'}, "model_snapshot"),
        ({"load_models": "bad name.mar"}, "name"),  # the stem is no model name
    ],
)
def test_bad_values_are_config_errors_naming_the_key(props, key):
    with pytest.raises(ConfigError, match=key):
        load(props)


def test_default_workers_zero_means_our_default_and_num_workers_is_the_fallback():
    assert server_settings({"default_workers_per_model": "0"})[1] == {}
    assert server_settings({"default_workers_per_model": "0", "NUM_WORKERS": "3"})[1] == {
        "workers": 3
    }
    assert server_settings({"default_workers_per_model": "2", "NUM_WORKERS": "3"})[1] == {
        "workers": 2
    }


@pytest.mark.parametrize(
    ("load_models", "tables"),
    [
        ("", []),
        ("noop.mar", [{"url": "noop.mar"}]),
        (
            "a=x.mar, b.mar ,,c=",
            [{"name": "a", "url": "x.mar"}, {"url": "b.mar"}],
        ),
        ("=x.mar", [{"url": "x.mar"}]),
        ("https://host/m.mar?sig=a=b", [{"url": "https://host/m.mar?sig=a=b"}]),
        ("n=https://host/m.mar", [{"name": "n", "url": "https://host/m.mar"}]),
        ("model_dir", [{"url": "model_dir"}]),
    ],
)
def test_load_models_forms(load_models, tables):
    assert server_settings({"load_models": load_models})[2] == tables


@pytest.mark.parametrize("word", ["all", "ALL", " All "])
def test_load_models_all_takes_archives_and_directories_from_the_store(word):
    entries = ["b.mar", "a_dir/", ".hidden/", ".x.mar", "notes.txt", "c.tar.gz", "d.tgz", "e.zip"]
    _, _, tables = server_settings({"load_models": word}, store_entries=entries)
    assert tables == [
        {"url": "a_dir"},
        {"url": "b.mar"},
        {"url": "c.tar.gz"},
        {"url": "d.tgz"},
        {"url": "e.zip"},
    ]
    assert store_tables(entries) == tables
    assert server_settings({"load_models": word})[2] == []


MULTI_VERSION = (
    '{"m": {"1.0": {"marName": "m1.mar", "batchSize": 2},'
    ' "2.0": {"marName": "m2.mar", "batchSize": 8, "defaultVersion": true}},'
    ' "solo": {"3.1": {"minWorkers": 3}}}'
)


@pytest.mark.parametrize(
    ("load_models", "expected"),
    [
        ("m1.mar", {"name": "m", "version": "1.0", "url": "m1.mar", "batch_size": 2}),
        ("m=m1.mar", {"name": "m", "version": "1.0", "url": "m1.mar", "batch_size": 2}),
        ("m=other.mar", {"name": "m", "version": "2.0", "url": "other.mar", "batch_size": 8}),
        ("m.mar", {"name": "m", "version": "2.0", "url": "m.mar", "batch_size": 8}),
        ("solo.mar", {"name": "solo", "version": "3.1", "url": "solo.mar", "workers": 3}),
        ("x=solo.mar", {"name": "x", "url": "solo.mar"}),
        ("unrelated.mar", {"url": "unrelated.mar"}),
    ],
)
def test_models_json_tunes_the_loaded_models(load_models, expected):
    props = {"load_models": load_models, "models": MULTI_VERSION}
    assert server_settings(props)[2] == [expected]


def test_models_json_alone_loads_nothing():
    # As in TorchServe: the JSON holds settings for models that load_models loads.
    assert server_settings({"models": MULTI_VERSION})[2] == []


def test_model_snapshot_is_loaded_instead_of_load_models():
    # From TorchServe's kubernetes/kserve/config.properties.
    props = {
        "load_models": "all",
        "model_snapshot": '{"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":'
        '{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,'
        '"batchSize":5,"maxBatchDelay":200,"responseTimeout":60}}}}',
    }
    (mnist,) = load(props).models
    assert (mnist.name, mnist.version, mnist.url) == ("mnist", "1.0", "mnist.mar")
    assert (mnist.workers, mnist.max_workers, mnist.batch_size) == (1, 5, 5)
    assert mnist.max_batch_delay == pytest.approx(0.2)
    assert mnist.response_timeout == 60


# --- model-config.yaml -------------------------------------------------------------

MODEL_YAML = """
minWorkers: 1
maxWorkers: 4
batchSize: 8
maxBatchDelay: 50
responseTimeout: 30
startupTimeout: 600
maxRetryTimeoutInSec: 120
jobQueueSize: 16
deviceType: gpu
deviceIds: [0, 1]
clientTimeoutInMills: 5000
memoryLimitMb: 512
handler:
  model_path: model.pt
  threshold: 0.5
"""


def test_model_yaml_maps_frontend_keys_and_keeps_everything_for_the_handler():
    table, handler_config = model_yaml_settings(MODEL_YAML)
    assert table == {
        "workers": 1,
        "max_workers": 4,
        "batch_size": 8,
        "max_batch_delay": pytest.approx(0.05),
        "response_timeout": 30,
        "startup_timeout": 600,
        "job_queue_size": 16,
        "client_timeout": pytest.approx(5.0),  # clientTimeoutInMills: 5000
        "memory_limit_mb": 512,
        "restart": {"window": 120},
    }
    assert handler_config["deviceIds"] == [0, 1]
    assert handler_config["clientTimeoutInMills"] == 5000
    assert handler_config["handler"] == {"model_path": "model.pt", "threshold": 0.5}
    assert handler_config["minWorkers"] == 1  # the whole file, as context.model_yaml_config
    config = model_config(
        {"url": "m.mar", **table, "handler_config": handler_config}, {"restart": {"jitter": 0.0}}
    )
    assert (config.name, config.workers, config.max_workers) == ("m", 1, 4)
    assert config.restart == RestartPolicy(window=120, jitter=0.0)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n"])
def test_empty_model_yaml(text):
    assert model_yaml_settings(text) == ({}, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("minWorkers: [1, 2\n", "invalid YAML"),
        ("- minWorkers: 1\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        ("batchSize: four\n", "batchSize"),
        ("batchSize: true\n", "batchSize"),
        ("maxBatchDelay: {a: 1}\n", "maxBatchDelay"),
        ("responseTimeout: soon\n", "responseTimeout"),
        ("memoryLimitMb: 1.5\n", "memoryLimitMb"),
        ("maxRetryTimeoutInSec: [1]\n", "maxRetryTimeoutInSec"),
        ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),  # safe_load only
    ],
)
def test_bad_model_yaml_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        model_yaml_settings(text)


# --- ModelConfig.url -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("resnet-18.mar", "resnet-18"),
        ("resnet-18.tar.gz", "resnet-18"),
        ("resnet-18.tgz", "resnet-18"),
        ("resnet-18.zip", "resnet-18"),
        ("model_dir", "model_dir"),
        ("model_dir/", "model_dir"),
        ("https://host/models/resnet-18.mar?sig=x", "resnet-18"),
        ("file:///srv/models/m.mar", "m"),
    ],
)
def test_name_from_url(url, name):
    assert name_from_url(url) == name


def test_a_url_stands_in_for_the_handler_and_names_the_model():
    config = model_config({"url": "noop.mar"})
    assert (config.name, config.url, config.handler) == ("noop", "noop.mar", "")
    both = model_config({"url": "noop.mar", "handler": "h"})
    assert (both.name, both.url, both.handler) == ("noop", "noop.mar", "h")
    named = model_config({"name": "n", "url": "noop.mar"})
    assert named.name == "n"


@pytest.mark.parametrize("table", [{"name": "m"}, {"name": "m", "handler": "", "url": ""}, {}])
def test_a_handler_or_a_url_is_required(table):
    with pytest.raises(ConfigError, match="required"):
        model_config(table)


def test_url_must_be_a_string():
    with pytest.raises(ConfigError, match="url"):
        model_config({"name": "m", "url": 5})


# --- the command line ------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "dir").mkdir()
    (store / "a.mar").write_bytes(b"")
    (store / "b.tar.gz").write_bytes(b"")
    return store


@pytest.fixture
def write(tmp_path):
    def write(name, text):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def cli(*argv):
    return config_from_args(_parser().parse_args(["serve", *argv]))


def test_cli_ts_config_switches_and_all_model_forms(store, write):
    ts = write(
        "config.properties",
        f"""
        inference_address=http://127.0.0.1:9080
        model_store={store}
        load_models=ignored.mar
        models={{"a": {{"2.0": {{"marName": "x.mar", "batchSize": 4}}}}}}
        """,
    )
    argv = ["--ts-config", ts, "--disable-token-auth", "--enable-model-api", "--models"]
    config = cli(*argv, "a=x.mar", "b.mar", "c=my_handler@dir", "d=dir", "https://h/e.mar")
    assert config.inference_address == "127.0.0.1:9080"
    assert config.model_store == str(store)
    assert config.disable_token_authorization is True
    assert config.enable_model_api is True
    a, b, c, d, e = config.models
    assert (a.name, a.url, a.handler, a.version, a.batch_size) == ("a", "x.mar", "", "2.0", 4)
    assert (b.name, b.url, b.handler) == ("b", "b.mar", "")
    assert (c.name, c.url, c.handler) == ("c", "", "my_handler")
    assert c.model_dir == str(store / "dir")
    assert (d.name, d.url, d.handler) == ("d", "dir", "")  # a directory in the store
    assert (e.name, e.url) == ("e", "https://h/e.mar")


def test_cli_switches_default_off_and_do_not_override_the_files(write):
    assert cli().disable_token_authorization is False
    assert cli().enable_model_api is False
    ts = write("ts.properties", "disable_token_authorization=true\nenable_model_api=true\n")
    config = cli("--ts-config", ts)
    assert (config.disable_token_authorization, config.enable_model_api) == (True, True)
    assert cli("--dt").disable_token_authorization is True


def test_cli_precedence_ts_config_then_toml_then_flags(write):
    ts = write(
        "ts.properties",
        """
        inference_address=http://127.0.0.1:1001
        management_address=http://127.0.0.1:1002
        job_queue_size=10
        default_response_timeout=50
        load_models=from_ts.mar
        """,
    )
    toml = write(
        "config.toml",
        """
        [server]
        inference_address = "127.0.0.1:2001"
        [defaults]
        job_queue_size = 20
        batch_size = 3
        [defaults.restart]
        max_restarts = 7
        """,
    )
    config = cli(
        "--ts-config", ts, "--config", toml, "--job-queue-size", "30", "--restart-window", "5"
    )
    assert config.inference_address == "127.0.0.1:2001"  # TOML over ts-config
    assert config.management_address == "127.0.0.1:1002"  # ts-config where TOML is silent
    (model,) = config.models  # no [[models]] in the TOML: ts-config's load_models
    assert model.url == "from_ts.mar"
    assert (model.job_queue_size, model.response_timeout, model.batch_size) == (30, 50, 3)
    assert model.restart == RestartPolicy(max_restarts=7, window=5)


def test_cli_model_lists_replace_each_other(write):
    ts = write("ts.properties", "load_models=from_ts.mar\n")
    toml = write("config.toml", '[[models]]\nname = "t"\nhandler = "from_toml"\n')
    assert [m.name for m in cli("--ts-config", ts).models] == ["from_ts"]
    assert [m.name for m in cli("--ts-config", ts, "--config", toml).models] == ["t"]
    flagged = cli("--ts-config", ts, "--config", toml, "--models", "f=from_flags.mar")
    assert [m.name for m in flagged.models] == ["f"]


def test_cli_config_alone_still_works(write):
    toml = write(
        "config.toml",
        """
        [server]
        inference_address = "0.0.0.0:9000"
        [defaults]
        workers = 2
        [[models]]
        name = "m"
        handler = "h"
        """,
    )
    config = cli("--config", toml, "--workers", "3", "--metrics-address", "127.0.0.1:1")
    assert (config.inference_address, config.metrics_address) == ("0.0.0.0:9000", "127.0.0.1:1")
    ((m),) = config.models
    assert (m.name, m.handler, m.workers) == ("m", "h", 3)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("[serverr]\n", "serverr"),
        ("server = 5\n", r"\[server\]"),
        ("defaults = 5\n", r"\[defaults\]"),
        ("[defaults]\nrestart = 5\n", "restart"),
        ("models = 5\n", "models"),
        ("[server]\nport = 1\n", "port"),
        ("[server\n", "cannot read config"),
    ],
)
def test_cli_bad_toml_is_a_config_error(write, source, message):
    with pytest.raises(ConfigError, match=message):
        cli("--config", write("config.toml", source))


def test_cli_models_all_lists_the_store(store):
    config = cli("--model-store", str(store), "--models", "all")
    assert [(m.name, m.url) for m in config.models] == [
        ("a", "a.mar"),
        ("b", "b.tar.gz"),
        ("dir", "dir"),
    ]


def test_cli_ts_load_models_all_uses_the_final_store(store, write):
    ts = write("ts.properties", "model_store=/nowhere\nload_models=ALL\n")
    config = cli("--ts-config", ts, "--model-store", str(store))
    assert [m.url for m in config.models] == ["a.mar", "b.tar.gz", "dir"]


def test_cli_all_needs_a_readable_store(tmp_path):
    with pytest.raises(ConfigError, match="needs a model store"):
        cli("--models", "all")
    with pytest.raises(ConfigError, match="cannot list the model store"):
        cli("--model-store", str(tmp_path / "absent"), "--models", "all")


def test_cli_comma_separated_models(store):
    config = cli("--model-store", str(store), "--models", "a.mar,n=b.tar.gz", "h=mod")
    assert [(m.name, m.url, m.handler) for m in config.models] == [
        ("a", "a.mar", ""),
        ("n", "b.tar.gz", ""),
        ("h", "", "mod"),
    ]


@pytest.mark.parametrize("spec", ["justahandler", "n=", "=", "dir"])
def test_cli_bad_model_specs(spec):
    # Without a model store, 'dir' is no directory in it: a bare name must be an archive.
    with pytest.raises(ConfigError, match="--models expects"):
        cli("--models", spec)


def test_cli_ts_config_errors_and_logs(write, caplog):
    with pytest.raises(ConfigError, match="cannot read TorchServe config"):
        cli("--ts-config", write("ts.properties", "") + ".absent")
    with pytest.raises(ConfigError, match="https: set certificate_file and private_key_file"):
        cli("--ts-config", write("ts.properties", "inference_address=https://127.0.0.1:8443\n"))
    ts = write("ts.properties", "vmargs=-Xmx1g\nmystery_key=1\n")
    with caplog.at_level(logging.INFO, logger="supervisor"):
        cli("--ts-config", ts)
    messages = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert ("INFO", f"{ts}: ignoring TorchServe settings without effect here: vmargs") in messages
    assert ("WARNING", f"{ts}: ignoring unknown keys (as TorchServe does): mystery_key") in messages


def test_cli_ts_config_env_references(write, monkeypatch, store):
    monkeypatch.setenv("TS_TEST_STORE", str(store))
    ts = write("ts.properties", "model_store=$$TS_TEST_STORE$$\n")
    assert cli("--ts-config", ts).model_store == str(store)


def test_cli_help_states_the_precedence(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside flag names
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ts-config (TorchServe config.properties), then --config (TOML), then flags" in text
    for flag in ("--ts-config", "--disable-token-auth", "--enable-model-api", "NAME=ARCHIVE"):
        assert flag in text


def test_model_config_yaml_sets_the_restart_policy():
    from supervisor.config import model_config
    from supervisor.models.tsconfig import model_yaml_settings

    keys, _ = model_yaml_settings(
        "maxRetryTimeoutInSec: 120\nrestartPolicy:\n  maxRestarts: 9\n  backoffMax: 4\n"
    )
    config = model_config({"name": "m", "handler": "h", **keys})
    assert (config.restart.window, config.restart.max_restarts) == (120.0, 9)
    assert config.restart.backoff_max == 4


def test_unknown_restart_policy_keys_are_refused():
    from supervisor.config import ConfigError
    from supervisor.models.tsconfig import model_yaml_settings

    with pytest.raises(ConfigError, match="restartPolicy: unknown key"):
        model_yaml_settings("restartPolicy:\n  retries: 3\n")
