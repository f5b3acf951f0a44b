"""``python -m supervisor archive``: layouts, flags, errors, and the real torch-model-archiver.

The real archiver (torch-model-archiver 0.12.0, in the ``test`` extra) is the
reference: the same inputs must give the same manifest (but for ``createdOn``)
and the same files, and archives it builds must load here unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from supervisor import ModelConfig, ServerConfig
from supervisor.cli import main
from supervisor.models.archive import open_model
from supervisor.models.archiver import (
    ARCHIVER_VERSION,
    ArchiverError,
    ArchiveSpec,
    build,
    handler_file,
    manifest,
    validate,
)
from supervisor.server import serve

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ResourceWarning)  # it reads version.txt without closing it
    from model_archiver.model_archiver_error import ModelArchiverError
    from model_archiver.model_packaging_utils import ModelExportUtils

LOCAL = "127.0.0.1:0"
CREATED = datetime(2026, 11, 21, 9, 5, 7)

MODEL_FILE = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x)
"""

# Weights with an exact answer: y = x0 + 2*x1 + 3*x2 + 0.5.
MAKE_WEIGHTS = """
import sys
import torch
sys.path.insert(0, ".")
from tiny_model import TinyNet

net = TinyNet()
with torch.no_grad():
    net.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    net.linear.bias.fill_(0.5)
torch.save(net.state_dict(), "tiny.pt")
"""

# A plain class (no BaseHandler): it finds its weights through the manifest.
TINY_HANDLER = """
import json
import os

import torch

from tiny_model import TinyNet


class TinyHandler:
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "MAR-INF", "MANIFEST.json")) as f:
            weights = json.load(f)["model"]["serializedFile"]
        self.net = TinyNet()
        state = torch.load(os.path.join(model_dir, weights), weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        with open(os.path.join(model_dir, "labels.txt")) as f:
            self.label = f.read().strip()

    def handle(self, batch, context):
        rows = torch.tensor([item["body"] for item in batch], dtype=torch.float32)
        with torch.inference_mode():
            values = self.net(rows).squeeze(1).tolist()
        return [{"y": value, "label": self.label} for value in values]
"""


def write(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def sources(tmp_path, monkeypatch) -> Path:
    """A directory with a model's files, made the current directory."""
    src = tmp_path / "src"
    write(src / "handler.py", "class H:\n    pass\n")
    write(src / "model.py", "class Net:\n    pass\n")
    (src / "weights.pt").write_bytes(bytes(range(256)) * 8)
    write(src / "requirements.txt", "numpy\n")
    write(src / "model-config.yaml", "batchSize: 4\n")
    write(src / "labels.json", "[1, 2]\n")
    write(src / "assets" / "vocab.txt", "a b c\n")
    write(src / "assets" / "nested" / "deep.txt", "deep\n")
    write(src / "assets" / "__pycache__" / "x.pyc", "junk\n")
    write(src / "assets" / ".git" / "HEAD", "junk\n")
    write(src / "assets" / ".hidden_file", "kept\n")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(src)
    return src


def spec(**changes) -> ArchiveSpec:
    values = {"model_name": "m", "version": "1.0", "handler": "handler.py", "export_path": "../out"}
    return ArchiveSpec(**{**values, **changes})


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def zip_manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))


FULL = {
    "serialized_file": "weights.pt",
    "model_file": "model.py",
    "requirements_file": "requirements.txt",
    "config_file": "model-config.yaml",
    "extra_files": ("labels.json", "assets"),
}


def test_manifest_has_the_real_archivers_layout_and_key_order():
    made = manifest(
        spec(
            handler="/abs/handler.py",
            serialized_file="w/weights.pt",
            model_file="src/model.py",
            requirements_file="r/requirements.txt",
            config_file="c/model-config.yaml",
        ),
        CREATED,
    )
    assert made == {
        "createdOn": "21/11/2026 09:05:07",
        "runtime": "python",
        "model": {
            "modelName": "m",
            "serializedFile": "weights.pt",
            "handler": "handler.py",
            "modelFile": "model.py",
            "modelVersion": "1.0",
            "requirementsFile": "requirements.txt",
            "configFile": "model-config.yaml",
        },
        "archiverVersion": ARCHIVER_VERSION,
    }
    assert list(made) == ["createdOn", "runtime", "model", "archiverVersion"]
    assert list(made["model"]) == [
        "modelName",
        "serializedFile",
        "handler",
        "modelFile",
        "modelVersion",
        "requirementsFile",
        "configFile",
    ]


def test_manifest_leaves_out_what_was_not_given():
    made = manifest(spec(handler="image_classifier", runtime="python3"), CREATED)
    assert made["runtime"] == "python3"
    assert made["model"] == {"modelName": "m", "handler": "image_classifier", "modelVersion": "1.0"}


def test_default_format_is_a_deflated_mar_with_a_flat_root(sources):
    path = build(spec(**FULL), created=CREATED)
    assert path == Path("../out/m.mar")
    assert zip_names(path) == [
        "model.py",
        "weights.pt",
        "handler.py",
        "labels.json",
        ".hidden_file",
        "vocab.txt",
        "nested/deep.txt",
        "requirements.txt",
        "model-config.yaml",
        "MAR-INF/MANIFEST.json",
    ]
    with zipfile.ZipFile(path) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert archive.read("weights.pt") == (sources / "weights.pt").read_bytes()
        text = archive.read("MAR-INF/MANIFEST.json").decode()
    assert text == json.dumps(manifest(spec(**FULL), CREATED), indent=2)
    assert zip_manifest(path)["model"]["configFile"] == "model-config.yaml"
    assert path.stat().st_mode & 0o777 == 0o644


def test_zip_store_is_an_uncompressed_mar(sources):
    path = build(spec(archive_format="zip-store", serialized_file="weights.pt"))
    assert path.name == "m.mar"
    with zipfile.ZipFile(path) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    assert zip_names(path) == ["weights.pt", "handler.py", "MAR-INF/MANIFEST.json"]


def test_tgz_puts_everything_under_a_folder_named_after_the_model(sources):
    path = build(spec(archive_format="tgz", model_file="model.py"))
    assert path.name == "m.tar.gz"
    with tarfile.open(path, "r:gz") as archive:
        assert archive.getnames() == ["m/model.py", "m/handler.py", "m/MAR-INF/MANIFEST.json"]
        data = archive.extractfile("m/MAR-INF/MANIFEST.json").read()
    assert json.loads(data)["model"]["modelFile"] == "model.py"


@pytest.mark.parametrize("archive_format", ["default", "tgz"])
def test_linked_files_are_archived_as_their_contents(sources, tmp_path, archive_format):
    (sources / "linked.pt").symlink_to(sources / "weights.pt")
    path = build(spec(archive_format=archive_format, serialized_file="linked.pt"))
    files = open_model(path, tmp_path)
    assert (files.directory / "linked.pt").read_bytes() == (sources / "weights.pt").read_bytes()
    assert not (files.directory / "linked.pt").is_symlink()


def test_no_archive_writes_a_directory(sources):
    path = build(spec(archive_format="no-archive", extra_files=("assets",)))
    assert path == Path("../out/m")
    found = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert found == [
        ".hidden_file",
        "MAR-INF/MANIFEST.json",
        "handler.py",
        "nested/deep.txt",
        "vocab.txt",
    ]
    assert json.loads((path / "MAR-INF/MANIFEST.json").read_text())["model"]["modelName"] == "m"


def test_extra_files_take_globs_and_later_files_win_a_clash(sources):
    write(sources / "other" / "handler.py", "# from the extra files\n")
    path = build(spec(extra_files=("*.json", "other")))
    assert zip_names(path) == ["handler.py", "labels.json", "MAR-INF/MANIFEST.json"]
    with zipfile.ZipFile(path) as archive:
        assert archive.read("handler.py") == b"# from the extra files\n"


@pytest.mark.parametrize(
    ("given", "stored", "copied"),
    [
        ("handler.py", "handler.py", "handler.py"),
        ("handler", "handler", "handler.py"),  # name means name.py, as in the real one
        ("handler:fn", "handler:fn", "handler.py"),
        ("handler.py:fn", "handler.py:fn", "handler.py"),
        ("sub/custom.py", "custom.py", "custom.py"),
        ("image_classifier", "image_classifier", None),  # TorchServe's default handlers
        ("my_pkg.handlers:Classifier", "my_pkg.handlers:Classifier", None),  # a module
    ],
)
def test_handler_is_stored_by_file_name_or_as_given(sources, given, stored, copied):
    write(sources / "sub" / "custom.py", "class C:\n    pass\n")
    path = build(spec(handler=given))
    assert zip_manifest(path)["model"]["handler"] == stored
    assert zip_names(path) == [*([copied] if copied else []), "MAR-INF/MANIFEST.json"]


@pytest.mark.parametrize("handler", ["missing.py", "sub/missing.py", "missing.py:fn", "a/b"])
def test_a_handler_file_that_does_not_exist_is_an_error(sources, handler):
    with pytest.raises(ArchiverError, match="--handler: no such file"):
        handler_file(handler)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"serialized_file": "nope.pt"}, "--serialized-file: no such file: nope.pt"),
        ({"model_file": "nope.py"}, "--model-file: no such file: nope.py"),
        ({"extra_files": ("nope.txt",)}, "--extra-files: no such file or directory: nope.txt"),
        ({"requirements_file": "nope.txt"}, "--requirements-file: no such file: nope.txt"),
        ({"config_file": "nope.yaml"}, "--config-file: no such file: nope.yaml"),
        ({"export_path": "nowhere"}, "export path nowhere is not a directory"),
        ({"version": ""}, "a model version is required"),
        ({"runtime": "LSP"}, "unknown runtime 'LSP'"),
        ({"archive_format": "rar"}, "unknown archive format 'rar'"),
    ],
)
def test_missing_files_and_bad_values_are_errors(sources, changes, message):
    with pytest.raises(ArchiverError, match=re.escape(message)):
        build(spec(**changes))
    assert list((sources.parent / "out").iterdir()) == []  # nothing half-written


def test_a_glob_that_matches_nothing_adds_nothing(sources):
    assert zip_names(build(spec(extra_files=("*.nothing",)))) == [
        "handler.py",
        "MAR-INF/MANIFEST.json",
    ]


@pytest.mark.parametrize("archive_format", ["default", "tgz", "zip-store", "no-archive"])
def test_existing_output_is_kept_unless_forced(sources, archive_format):
    first = build(spec(archive_format=archive_format))
    with pytest.raises(ArchiverError, match="already exists; use -f/--force"):
        build(spec(archive_format=archive_format, model_file="model.py"))
    forced = build(spec(archive_format=archive_format, model_file="model.py", force=True))
    assert forced == first
    assert [p.name for p in (sources.parent / "out").iterdir()] == [first.name]  # no temp left


@pytest.mark.parametrize("name", ["resnet-18", "a", "Model_1.2-b", "9lives"])
def test_good_model_names(name):
    validate(spec(model_name=name, export_path="."))


@pytest.mark.parametrize("name", ["", "-x", "_x", ".x", "a b", "a/b", "a\\b", "é", "a\n"])
def test_bad_model_names(name):
    with pytest.raises(ArchiverError, match="invalid model name"):
        validate(spec(model_name=name, export_path="."))


@given(st.text(max_size=12))
def test_model_names_are_judged_as_the_real_archiver_judges_them(name):
    try:
        ModelExportUtils.check_model_name_regex_or_exit(name)
        real_ok = not name.endswith("\n")  # its `$` lets one trailing newline through
    except ModelArchiverError:
        real_ok = False
    try:
        validate(spec(model_name=name, export_path="."))
        ours_ok = True
    except ArchiverError:
        ours_ok = False
    assert ours_ok == real_ok


def test_cli_builds_with_every_flag(sources, capsys):
    code = main(
        [
            "archive", "--model-name", "full", "-v", "2.0", "--handler", "handler.py",
            "--serialized-file", "weights.pt", "--model-file", "model.py",
            "--extra-files", "labels.json, assets", "--runtime", "python3",
            "--export-path", "../out", "--archive-format", "zip-store", "-f",
            "-r", "requirements.txt", "-c", "model-config.yaml",
        ]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == "archived full 2.0 to ../out/full.mar\n"
    made = zip_manifest(sources.parent / "out" / "full.mar")
    assert made["runtime"] == "python3"
    assert made["model"]["modelVersion"] == "2.0"
    assert made["model"]["configFile"] == "model-config.yaml"
    assert "vocab.txt" in zip_names(sources.parent / "out" / "full.mar")


def test_cli_export_path_defaults_to_the_current_directory(sources):
    assert main(["archive", "--model-name", "here", "-v", "1", "--handler", "handler"]) == 0
    assert (sources / "here.mar").is_file()


def test_cli_help_lists_the_archiver_flags(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["archive", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model-name", "--serialized-file", "--extra-files", "--archive-format", "-c"):
        assert flag in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-name", "a b"], "error: invalid model name 'a b'"),
        (["--model-name", "m", "--serialized-file", "x.pt"], "error: --serialized-file: no such"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(sources, capsys, args, message):
    base = ["archive", "-v", "1", "--handler", "handler.py", *args]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1


@pytest.mark.parametrize("archive_format", ["default", "tgz"])
def test_archives_open_with_the_manifest_at_the_root(sources, tmp_path, archive_format):
    path = build(spec(archive_format=archive_format, extra_files=("assets",)))
    (tmp_path / "scratch").mkdir()
    files = open_model(path, tmp_path / "scratch")
    assert files.model["modelName"] == "m"
    assert (files.directory / "handler.py").is_file()
    assert (files.directory / "nested" / "deep.txt").is_file()
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == [files.directory.name]


def test_an_archive_with_only_a_manifest_keeps_its_root(sources, tmp_path):
    path = build(spec(handler="my_pkg.handler"))
    files = open_model(path, tmp_path)
    assert files.handler() == "my_pkg.handler"
    assert (files.directory / "MAR-INF" / "MANIFEST.json").is_file()


@pytest.mark.slow
def test_cli_as_a_process_refuses_to_overwrite_without_a_traceback(sources):
    args = [sys.executable, "-m", "supervisor", "archive", "--model-name", "m", "-v", "1"]
    args += ["--handler", "handler.py"]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr == "error: m.mar already exists; use -f/--force to overwrite it\n"


# The real torch-model-archiver, as a process: the reference for layouts and loading.


def real_archiver(cwd: Path, *args: str) -> None:
    """Run torch-model-archiver 0.12.0 (it stages files in $TMPDIR/<name>: give it its own)."""
    staging = cwd.parent / "archiver-tmp"
    staging.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "model_archiver.model_packaging", *args],
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(staging)},
        check=True,
        capture_output=True,
        timeout=120,
    )


def flag_args(name: str, archive_format: str, export: str, **flags: str) -> list[str]:
    args = ["--model-name", name, "-v", "1.0", "--archive-format", archive_format]
    args += ["--export-path", export]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def contents(path: Path, archive_format: str) -> dict[str, bytes]:
    """Every file of an archive or directory, by name (the manifest without createdOn)."""
    if archive_format == "no-archive":
        files = {
            p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()
        }
    elif archive_format == "tgz":
        with tarfile.open(path) as archive:
            files = {
                m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()
            }
    else:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    key = next(name for name in files if name.endswith("MAR-INF/MANIFEST.json"))
    made = json.loads(files[key])
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", made.pop("createdOn"))
    files[key] = json.dumps(made).encode()
    return files


EQUIVALENCE_CASES = {
    "everything": {
        "handler": "handler.py",
        "serialized_file": "weights.pt",
        "model_file": "model.py",
        "extra_files": "labels.json,assets",
        "requirements_file": "requirements.txt",
        "config_file": "model-config.yaml",
    },
    "module-name-handler": {"handler": "handler", "runtime": "python3"},
    "default-handler": {"handler": "image_classifier", "serialized_file": "weights.pt"},
    "paths-and-globs": {"handler": "../src/handler.py", "extra_files": "*.json,assets/nested"},
}


@pytest.mark.slow
@pytest.mark.parametrize("archive_format", ["default", "zip-store", "tgz", "no-archive"])
@pytest.mark.parametrize("case", list(EQUIVALENCE_CASES))
def test_same_archive_as_the_real_archiver(sources, archive_format, case):
    flags = EQUIVALENCE_CASES[case]
    out = sources.parent / "out"
    (out / "real").mkdir()
    real_archiver(sources, *flag_args("m", archive_format, "../out/real", **flags))
    args = ["archive", *flag_args("m", archive_format, "../out/ours", **flags)]
    (out / "ours").mkdir()
    assert main(args) == 0
    [real_path] = (out / "real").iterdir()
    [our_path] = (out / "ours").iterdir()
    assert our_path.name == real_path.name
    assert contents(our_path, archive_format) == contents(real_path, archive_format)
    if archive_format in ("default", "zip-store"):
        with zipfile.ZipFile(real_path) as real, zipfile.ZipFile(our_path) as ours:
            kinds = {i.compress_type for i in real.infolist()}
            assert {i.compress_type for i in ours.infolist()} == kinds


# Loading archives in a real server.


@pytest.fixture
def tiny_sources(tmp_path) -> Path:
    """An eager model: its class in tiny_model.py, its state dict in tiny.pt, a handler."""
    src = tmp_path / "tiny-src"
    write(src / "tiny_model.py", MODEL_FILE)
    write(src / "tiny_handler.py", TINY_HANDLER)
    write(src / "labels.txt", "linear\n")
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MAKE_WEIGHTS)], cwd=src, check=True, timeout=120
    )
    return src


TINY_FLAGS = {
    "handler": "tiny_handler.py",
    "model_file": "tiny_model.py",
    "serialized_file": "tiny.pt",
    "extra_files": "labels.txt",
}
ARCHIVE_NAMES = {"default": "{}.mar", "zip-store": "{}.mar", "tgz": "{}.tar.gz", "no-archive": "{}"}


async def predictions(store: Path, tmp_path: Path, urls: dict[str, str], nursery) -> dict:
    """Serve the store's archives as the named models; predict [1, 2, 3] with each."""
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        model_store=str(store),
        models=tuple(ModelConfig(name=name, url=url) for name, url in urls.items()),
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    answers = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for name in urls:
            r = await client.post(f"{endpoints.inference}/predictions/{name}", json=[1, 2, 3])
            described = await client.get(f"{endpoints.management}/models/{name}")
            version = described.json()[0]["modelVersion"] if described.is_success else None
            answers[name] = (r.status_code, r.json(), version)
    shutdown.set()
    return answers


@pytest.mark.slow
async def test_archives_built_by_the_real_archiver_load_unchanged(nursery, tmp_path, tiny_sources):
    store = tmp_path / "store"
    store.mkdir()
    urls = {}
    for archive_format, pattern in ARCHIVE_NAMES.items():
        name = f"tiny-{archive_format}"
        real_archiver(tiny_sources, *flag_args(name, archive_format, str(store), **TINY_FLAGS))
        urls[name] = pattern.format(name)
    answers = await predictions(store, tmp_path, urls, nursery)
    expected = (200, {"y": 14.5, "label": "linear"}, "1.0")  # 1 + 2*2 + 3*3 + 0.5
    assert answers == dict.fromkeys(urls, expected)


@pytest.mark.slow
async def test_archives_built_here_load(nursery, tmp_path, tiny_sources, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.chdir(tiny_sources)
    urls = {}
    for archive_format in ("default", "tgz"):
        name = f"ours-{archive_format}"
        assert main(["archive", *flag_args(name, archive_format, str(store), **TINY_FLAGS)]) == 0
        urls[name] = ARCHIVE_NAMES[archive_format].format(name)
    answers = await predictions(store, tmp_path, urls, nursery)
    assert answers == dict.fromkeys(urls, (200, {"y": 14.5, "label": "linear"}, "1.0"))
