"""Hardening: what an archive, a store name or a model-config.yaml can make the server do.

Unit tests of the pure checks first, then end to end: a real server on 127.0.0.1
with the model API on, archives registered from its store over HTTP, and real
worker processes where a model gets that far.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from handlers.builtin.text_classifier import load_vocab
from handlers.context import Context
from handlers.modelfile import model_file
from handlers.torch_handler import BaseHandler
from supervisor.config import ConfigError, model_config
from supervisor.errors import InvalidModel, InvalidRequest, ModelNotFound
from supervisor.models.archive import (
    MAX_MANIFEST_BYTES,
    MAX_NAME_LENGTH,
    check_manifest_paths,
    local_source,
    open_model,
)
from supervisor.models.tsconfig import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_EXPANDED,
    model_yaml_settings,
)
from tests.helpers import ECHO_HANDLER, make_mar
from tests.test_security import assert_error, bearer, read_keys, secure_config, start

# A handler that answers with the model-config.yaml it was given.
CONFIG_HANDLER = """
class ShowConfig:
    def initialize(self, context):
        self.config = context.model_yaml_config

    def handle(self, batch, context):
        return [self.config for _ in batch]
"""

# Each level holds ten aliases of the one below: ``levels`` levels expand a
# 30-character string 10**levels times, from well under a kilobyte of YAML.
LAUGH = "lol" * 10


def laughs(levels: int) -> str:
    """A "billion laughs" YAML document of ``levels`` levels under ``handler:``."""
    lines = [f"l0: &l0 {LAUGH}"]
    for level in range(1, levels + 1):
        below = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} [{below}]")
    lines.append(f"handler: {{top: *l{levels}}}")
    return "\n".join(lines) + "\n"


# --- manifest paths (unit) -----------------------------------------------------------


PATH_FIELDS = ("configFile", "serializedFile", "modelFile", "requirementsFile", "handler")


def write_model_dir(directory: Path, **model: str) -> Path:
    """A model directory holding only a manifest whose ``model`` section is ``model``."""
    (directory / "MAR-INF").mkdir(parents=True)
    manifest = {"model": {"modelName": "m", "handler": "h.py", **model}}
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


@pytest.mark.parametrize("field", PATH_FIELDS)
@pytest.mark.parametrize("value", ["/etc/passwd", "../../../../etc/passwd", "a/../../x"])
def test_manifest_paths_must_stay_inside_the_archive(tmp_path, field, value):
    directory = write_model_dir(tmp_path / "m", **{field: value})
    with pytest.raises(InvalidModel, match=f"{field} .* must stay inside the archive"):
        open_model(directory, tmp_path)


def test_extra_files_must_stay_inside_the_archive(tmp_path):
    directory = write_model_dir(tmp_path / "m", extraFiles="vocab.json,../secret.txt")
    with pytest.raises(InvalidModel, match=r"extraFiles '\.\./secret\.txt' must stay inside"):
        open_model(directory, tmp_path)


def test_a_link_out_of_the_archive_is_refused(tmp_path):
    secret = tmp_path / "key_file.json"
    secret.write_text('{"API": {"key": "secret-api-key"}}')
    directory = write_model_dir(tmp_path / "m", configFile="model-config.yaml")
    (directory / "model-config.yaml").symlink_to(secret)
    with pytest.raises(InvalidModel, match=r"configFile .* must stay inside") as caught:
        open_model(directory, tmp_path)
    assert "secret-api-key" not in str(caught.value)


def test_paths_inside_the_archive_are_accepted(tmp_path):
    directory = write_model_dir(
        tmp_path / "m",
        configFile="conf/model-config.yaml",
        serializedFile="./weights/../model.pt",
        extraFiles="a.json, b.txt",
        handler="image_classifier",
    )
    (directory / "conf").mkdir()
    (directory / "weights").mkdir()
    (directory / "inner.pt").write_bytes(b"")
    (directory / "model.pt").symlink_to(directory / "inner.pt")  # a link that stays inside
    files = open_model(directory, tmp_path)
    assert check_manifest_paths(files) == files.directory / "conf/model-config.yaml"


def test_a_manifest_path_of_the_wrong_type_is_refused(tmp_path):
    directory = tmp_path / "m"
    (directory / "MAR-INF").mkdir(parents=True)
    manifest = {"model": {"handler": "h.py", "serializedFile": ["a", "b"]}}
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidModel, match="serializedFile must be a string"):
        open_model(directory, tmp_path)


def test_a_manifest_link_out_of_the_archive_is_refused(tmp_path):
    directory = tmp_path / "m"
    (directory / "MAR-INF").mkdir(parents=True)
    (tmp_path / "elsewhere.json").write_text('{"model": {"handler": "h.py"}}')
    (directory / "MAR-INF" / "MANIFEST.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(InvalidModel, match=r"MANIFEST.json .* must stay inside"):
        open_model(directory, tmp_path)


def test_a_huge_manifest_is_refused(tmp_path):
    directory = tmp_path / "m"
    (directory / "MAR-INF").mkdir(parents=True)
    padding = " " * MAX_MANIFEST_BYTES
    (directory / "MAR-INF" / "MANIFEST.json").write_text('{"model": {}}' + padding)
    with pytest.raises(InvalidModel, match=r"MANIFEST.json is over the limit of 1 MiB"):
        open_model(directory, tmp_path)


def test_an_unreadable_manifest_does_not_quote_itself(tmp_path):
    directory = tmp_path / "m"
    (directory / "MAR-INF").mkdir(parents=True)
    (directory / "MAR-INF" / "MANIFEST.json").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(InvalidModel, match=r"unreadable MANIFEST.json") as caught:
        open_model(directory, tmp_path)
    assert "root:" not in str(caught.value)


# --- store names (unit) ----------------------------------------------------------------


def test_store_names_are_resolved_inside_the_store(tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    write_model_dir(outside)
    (outside / "x.mar").write_bytes(b"")
    (store / "linked").symlink_to(outside)
    (store / "linked.mar").symlink_to(outside / "x.mar")
    (store / "inner.mar").write_bytes(b"")
    (store / "alias.mar").symlink_to(store / "inner.mar")  # a link that stays in the store
    for name in ("linked", "linked.mar"):
        with pytest.raises(InvalidRequest, match="leads out of the model store"):
            local_source(name, str(store))
    assert local_source("alias.mar", str(store)) == store / "alias.mar"


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("a" * 5000, InvalidRequest, f"longer than {MAX_NAME_LENGTH} characters"),
        ("echo\x00.mar", InvalidRequest, "NUL"),
        ("missing.mar", ModelNotFound, "Model not found at: missing.mar"),
    ],
)
def test_odd_store_names_are_clear_errors(tmp_path, name, error, message):
    with pytest.raises(error, match=message):
        local_source(name, str(tmp_path))


# --- model names (unit) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "x y"}, "model name 'x y' is invalid: use 1-"),
        ({"name": "-x"}, "model name '-x' is invalid"),
        ({"name": "x" * 300}, "model name 'xxxx"),
        ({"name": 5}, "model name 5 is invalid"),
        ({"name": "x", "version": "1 0"}, "model version '1 0' is invalid"),
    ],
)
def test_bad_model_names_are_explained_in_words(table, message):
    with pytest.raises(ConfigError, match=message) as caught:
        model_config({"handler": "h", **table})
    text = str(caught.value)
    assert "letters, digits" in text
    assert "Attribute(" not in text
    assert len(text) < 400


# --- model-config.yaml (unit) ----------------------------------------------------------


def test_a_yaml_over_the_size_limit_is_refused():
    with pytest.raises(ConfigError, match="over the limit of 1 MiB"):
        model_yaml_settings(b"#" * (MAX_YAML_BYTES + 1))


def test_billion_laughs_is_refused_quickly():
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"aliases expand it past 10 MiB"):
        model_yaml_settings(laughs(9))
    assert time.monotonic() - started < 1.0
    assert len(laughs(9)) < 1024


def test_aliases_within_the_bound_are_fine():
    _, handler_config = model_yaml_settings(laughs(3))
    assert len(json.dumps(handler_config)) > 1000 * len(LAUGH)


def test_the_expansion_limit_is_exact():
    # the root mapping 1, keys "a" and "b" 2 each, the sequence 1, each "x"*999 1000
    fixed, each = 1 + 2 + 1000 + 2 + 1, 1000
    most = (MAX_YAML_EXPANDED - fixed) // each

    def aliases(count: int) -> str:
        return f"a: &a {'x' * 999}\nb: [{', '.join(['*a'] * count)}]\n"

    model_yaml_settings(aliases(most))
    with pytest.raises(ConfigError, match="aliases expand it past"):
        model_yaml_settings(aliases(most + 1))


def test_recursive_aliases_are_refused():
    with pytest.raises(ConfigError, match="refers to itself"):
        model_yaml_settings("a: &a [1, *a]\n")


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 200_000])
def test_deep_nesting_is_refused(depth):
    deep = "[" * depth + "]" * depth
    with pytest.raises(ConfigError, match=r"nested deeper than|nesting depth"):
        model_yaml_settings(f"handler: {deep}\n")
    model_yaml_settings(f"handler: {'[' * (MAX_YAML_DEPTH - 2)}{']' * (MAX_YAML_DEPTH - 2)}\n")


def test_yaml_errors_do_not_quote_the_file():
    with pytest.raises(ConfigError, match=r"invalid YAML: .* at line 1, column 20") as caught:
        model_yaml_settings("api_key: secret-123: x\n")
    assert "secret-123" not in str(caught.value)
    with pytest.raises(ConfigError, match="expected a mapping, got a str") as caught:
        model_yaml_settings("root:x:0:0:root:/root:/bin/bash\n")
    assert "root:" not in str(caught.value)


# --- worker side (unit) ----------------------------------------------------------------


def test_worker_model_files_stay_inside_the_model_directory(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pt").write_bytes(b"")
    assert model_file(str(tmp_path / "m"), "model.pt", "serializedFile") == os.path.realpath(
        tmp_path / "m" / "model.pt"
    )
    for name in ("../x", "/etc/passwd"):
        with pytest.raises(ValueError, match=r"serializedFile .* must stay inside"):
            model_file(str(tmp_path / "m"), name, "serializedFile")


def test_worker_handlers_refuse_files_outside_the_model(tmp_path):
    (tmp_path / "secret.json").write_text('{"API": 1}')
    directory = write_model_dir(tmp_path / "m", serializedFile="../secret.json")
    (directory / "vocab.json").symlink_to(tmp_path / "secret.json")
    manifest = json.loads((directory / "MAR-INF" / "MANIFEST.json").read_text())
    context = Context("m", "1.0", str(directory), 1, manifest=manifest)
    with pytest.raises(ValueError, match=r"serializedFile '\.\./secret\.json' must stay inside"):
        BaseHandler().initialize(context)
    with pytest.raises(ValueError, match=r"vocab 'vocab\.json' must stay inside"):
        load_vocab(str(directory))


# --- over HTTP -----------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        yield client


async def register(client: httpx.AsyncClient, base: str, auth: dict, **params) -> httpx.Response:
    return await client.post(f"{base}/models", params=params, headers=auth)


@pytest.mark.slow
async def test_archives_cannot_read_server_files(nursery, tmp_path, client):
    store = tmp_path / "store"
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    bad = {
        "passwd": {"configFile": "/etc/passwd"},
        "climb": {"configFile": "../../../../etc/passwd"},
        "keys": {"configFile": config.key_file},
        "weights": {"serializedFile": "../../../../etc/passwd"},
        "module": {"modelFile": "/etc/passwd"},
        "reqs": {"requirementsFile": "/etc/passwd"},
        "extra": {"extraFiles": "/etc/passwd"},
    }
    for name, model in bad.items():
        make_mar(store, name, CONFIG_HANDLER, manifest_model=model)
    linked = write_model_dir(store / "linked", handler="show.py", configFile="model-config.yaml")
    (linked / "show.py").write_text(CONFIG_HANDLER)
    endpoints = await start(nursery, config)
    (linked / "model-config.yaml").symlink_to(config.key_file)
    keys = read_keys(config)
    auth = bearer(keys["management"])
    for name, model in [*bad.items(), ("linked", {"configFile": ""})]:
        url = name if name == "linked" else f"{name}.mar"
        r = await register(client, endpoints.management, auth, url=url)
        [field] = model
        assert_error(r, 400, "InvalidModelException", f"{field} ")
        assert "must stay inside the archive" in r.text
        assert "root:" not in r.text
        assert not any(key in r.text for key in keys.values())
    r = await client.get(f"{endpoints.management}/models", headers=auth)
    assert r.json() == {"models": []}


@pytest.mark.slow
async def test_store_links_cannot_leave_the_store(nursery, tmp_path, client):
    store, outside = tmp_path / "store", tmp_path / "outside"
    make_mar(outside, "echo", ECHO_HANDLER, module="echo_handler")
    shown = write_model_dir(outside / "shown", handler="show.py")
    (shown / "show.py").write_text(CONFIG_HANDLER)
    store.mkdir()
    (store / "out.mar").symlink_to(outside / "echo.mar")
    (store / "outdir").symlink_to(shown)
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    for url in ("out.mar", "outdir"):
        r = await register(client, endpoints.management, auth, url=url)
        assert_error(r, 400, "BadRequestException", "leads out of the model store")
    r = await client.get(f"{endpoints.management}/models", headers=auth)
    assert r.json() == {"models": []}


@pytest.mark.slow
async def test_odd_names_get_clear_4xx(nursery, tmp_path, client):
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER, module="echo_handler")
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    base = endpoints.management
    r = await register(client, base, auth, url="a" * 5000)
    assert_error(r, 400, "BadRequestException", f"longer than {MAX_NAME_LENGTH} characters")
    r = await register(client, base, auth, url="echo\x00.mar")
    assert_error(r, 400, "BadRequestException", "NUL")
    r = await register(client, base, auth, url="echo.mar", canaries="c" * 5000)
    assert_error(r, 400, "BadRequestException", "canaries:")
    r = await register(client, base, auth, url="echo.mar", canaries="c\x00.json")
    assert_error(r, 400, "BadRequestException", "canaries:")
    r = await register(client, base, auth, url="echo.mar", model_name="x y")
    assert_error(r, 400, "BadRequestException", "model name 'x y' is invalid: use 1-")
    assert "Attribute(" not in r.text
    r = await client.get(f"{endpoints.management}/models", headers=auth)
    assert r.json() == {"models": []}


async def ping_while(client: httpx.AsyncClient, url: str, done: trio.Event) -> float:
    """Ping ``url`` back to back until ``done``; the slowest answer's seconds."""
    slowest = 0.0
    while not done.is_set():
        started = time.monotonic()
        r = await client.get(url)
        assert r.status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    return slowest


async def register_pinging(
    client: httpx.AsyncClient, endpoints, auth: dict, url: str
) -> tuple[httpx.Response, float]:
    """Register ``url`` while pinging the inference port; the answer and the slowest ping."""
    done, result = trio.Event(), {}

    async def pinger() -> None:
        result["slowest"] = await ping_while(client, f"{endpoints.inference}/ping", done)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        response = await register(client, endpoints.management, auth, url=url, initial_workers=0)
        done.set()
    return response, result["slowest"]


@pytest.mark.slow
async def test_big_yaml_neither_stalls_the_server_nor_passes(nursery, tmp_path, client):
    store = tmp_path / "store"
    # 0.95 MiB of YAML in 24,000 entries: seconds for the pure-Python parser
    items = "".join(f"  k{i}: [{i}, {i + 1}, {'v' * 16}]\n" for i in range(24_000))
    assert len(items) < MAX_YAML_BYTES
    make_mar(store, "fits", ECHO_HANDLER, extra={"model-config.yaml": f"handler:\n{items}"})
    huge = "handler:\n" + items * 6  # 6 MB
    make_mar(store, "huge", ECHO_HANDLER, extra={"model-config.yaml": huge})
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    r, slowest = await register_pinging(client, endpoints, auth, "huge.mar")
    assert_error(r, 400, "InvalidModelException", "over the limit of 1 MiB")
    assert slowest < 2.0  # parsed on the event loop, 1 MB stalled it for 12 s
    r, slowest = await register_pinging(client, endpoints, auth, "fits.mar")
    assert r.status_code == 200, r.text
    assert slowest < 2.0  # parsed on the event loop, 1 MB stalled it for 12 s


@pytest.mark.slow
async def test_yaml_bombs_get_400_and_memory_stays_small(nursery, tmp_path, client):
    store = tmp_path / "store"
    for levels in (6, 9):  # 6: 30 MB once expanded; 9: 30 GB
        config_yaml = laughs(levels)
        make_mar(store, f"laughs{levels}", CONFIG_HANDLER, extra={"model-config.yaml": config_yaml})
    make_mar(store, "loop", CONFIG_HANDLER, extra={"model-config.yaml": "a: &a [1, *a]\n"})
    config = secure_config(tmp_path, model_store=str(store), enable_model_api=True)
    endpoints = await start(nursery, config)
    auth = bearer(read_keys(config)["management"])
    me = psutil.Process()
    before = me.memory_info().rss
    for name in ("laughs6", "laughs9"):
        started = time.monotonic()
        r = await register(client, endpoints.management, auth, url=f"{name}.mar")
        assert_error(r, 400, "InvalidModelException", "aliases expand it past 10 MiB")
        assert time.monotonic() - started < 5.0
    r = await register(client, endpoints.management, auth, url="loop.mar")
    assert_error(r, 400, "InvalidModelException", "refers to itself")
    assert me.memory_info().rss - before < 100 * 1024 * 1024
