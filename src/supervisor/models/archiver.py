"""Building model archives the way ``torch-model-archiver`` 0.12.0 does.

An archive is a flat set of files (the serialized weights, the model file, the
handler, the extra files with directories' contents merged into the root, the
requirements and the ``model-config.yaml``) plus ``MAR-INF/MANIFEST.json``. Later
files win a name clash, in the real archiver's order: model file, serialized
file, handler, extra files, requirements, config file. Formats:

* ``default``: ``<name>.mar``, a deflated zip;
* ``zip-store``: ``<name>.mar``, a zip without compression;
* ``tgz``: ``<name>.tar.gz`` with everything under a ``<name>/`` folder;
* ``no-archive``: a ``<name>/`` directory (existing files in it are overwritten,
  others are left alone).

One deliberate difference: a handler that is not a file here (``my_pkg.handler``,
``my_pkg.handler:Class``) is recorded as given instead of failing, so that a
handler installed in the worker's environment can be named. Nothing here
imports trio; archives are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import attrs

from supervisor.atomicfile import replacing

__all__ = [
    "ARCHIVER_VERSION",
    "BUILTIN_HANDLERS",
    "FORMATS",
    "ArchiveSpec",
    "ArchiverError",
    "build",
    "collect",
    "handler_file",
    "manifest",
    "output_path",
    "validate",
]

ARCHIVER_VERSION = "0.12.0"
"""The ``torch-model-archiver`` release whose archives these match."""

FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
"""Archive formats and the suffix each adds to the model name."""

RUNTIMES = ("python", "python3")
"""The runtimes a manifest may name (TorchServe's ``LSP`` is not supported)."""

BUILTIN_HANDLERS = frozenset(
    {
        "base_handler",
        "text_classifier",
        "image_classifier",
        "object_detector",
        "image_segmenter",
        "dali_image_classifier",
        "vllm_handler",
        "trt_llm_handler",
    }
)
"""TorchServe's default handlers: named in the manifest, never copied."""

MANIFEST_NAME = "MAR-INF/MANIFEST.json"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
_SKIPPED_DIRS = frozenset({"__pycache__", "__MACOSX"})


class ArchiverError(ValueError):
    """An archive cannot be built: a bad name, a missing file, an existing output."""


@attrs.frozen
class ArchiveSpec:
    """What to archive, as ``torch-model-archiver``'s flags say it.

    Attributes:
        model_name: the model's name and the output's base name.
        version: the model's version.
        handler: a handler file (``handler.py``, ``handler.py:fn``), a module name
            or one of TorchServe's default handlers.
        serialized_file: the weights (a state dict, a TorchScript file, ...).
        model_file: the Python file defining the model's class.
        extra_files: files, directories (their contents go to the root) or globs.
        runtime: ``python`` or ``python3``.
        export_path: the directory the output is written to.
        archive_format: one of ``FORMATS``.
        force: overwrite an existing output.
        requirements_file: a ``requirements.txt`` for the model.
        config_file: the model's ``model-config.yaml``.
    """

    model_name: str
    version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    extra_files: tuple[str, ...] = ()
    runtime: str = "python"
    export_path: str = "."
    archive_format: str = "default"
    force: bool = False
    requirements_file: str | None = None
    config_file: str | None = None


def manifest(spec: ArchiveSpec, created: datetime) -> dict[str, Any]:
    """The archive's ``MANIFEST.json`` contents, keys in the real archiver's order."""
    model: dict[str, str] = {"modelName": spec.model_name}
    if spec.serialized_file:
        model["serializedFile"] = os.path.basename(spec.serialized_file)
    model["handler"] = os.path.basename(spec.handler)
    if spec.model_file:
        model["modelFile"] = os.path.basename(spec.model_file)
    if spec.version:
        model["modelVersion"] = spec.version
    if spec.requirements_file:
        model["requirementsFile"] = os.path.basename(spec.requirements_file)
    if spec.config_file:
        model["configFile"] = os.path.basename(spec.config_file)
    return {
        "createdOn": created.strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": spec.runtime,
        "model": model,
        "archiverVersion": ARCHIVER_VERSION,
    }


def output_path(spec: ArchiveSpec) -> Path:
    """Where the archive (or the ``no-archive`` directory) is written."""
    return Path(spec.export_path) / f"{spec.model_name}{FORMATS[spec.archive_format]}"


def validate(spec: ArchiveSpec) -> None:
    """Check the name, runtime, format and export path.

    Raises:
        ArchiverError: one of them is invalid.
    """
    if not _MODEL_NAME.fullmatch(spec.model_name):
        raise ArchiverError(
            f"invalid model name {spec.model_name!r}: it must match ^[A-Za-z0-9][A-Za-z0-9_\\-.]*$"
        )
    if not spec.version:
        raise ArchiverError("a model version is required (-v/--version)")
    if spec.runtime not in RUNTIMES:
        raise ArchiverError(f"unknown runtime {spec.runtime!r}; expected one of {RUNTIMES}")
    if spec.archive_format not in FORMATS:
        raise ArchiverError(
            f"unknown archive format {spec.archive_format!r}; expected one of {tuple(FORMATS)}"
        )
    if not Path(spec.export_path).is_dir():
        raise ArchiverError(f"export path {spec.export_path} is not a directory")


def collect(spec: ArchiveSpec) -> dict[str, Path]:
    """The archive's files: name in the archive -> file to copy, later ones winning.

    Raises:
        ArchiverError: a named file or directory does not exist.
    """
    files: dict[str, Path] = {}
    for flag, path in (
        ("--model-file", spec.model_file),
        ("--serialized-file", spec.serialized_file),
    ):
        if path:
            files[os.path.basename(path)] = _existing_file(flag, path)
    handler = handler_file(spec.handler)
    if handler is not None:
        files[handler.name] = handler
    for pattern in spec.extra_files:
        files.update(_extra(pattern))
    for flag, path in (
        ("--requirements-file", spec.requirements_file),
        ("--config-file", spec.config_file),
    ):
        if path:
            files[os.path.basename(path)] = _existing_file(flag, path)
    return files


def handler_file(handler: str) -> Path | None:
    """The file to archive for ``handler``; None for a default handler or a module name.

    As in the real archiver, ``name`` and ``name:fn`` mean ``name.py``.

    Raises:
        ArchiverError: the handler names a ``.py`` file or a path that does not exist.
    """
    if handler in BUILTIN_HANDLERS:
        return None
    module = handler.partition(":")[0]
    path = Path(module if module.endswith(".py") else module + ".py")
    if path.is_file():
        return path
    if module.endswith(".py") or "/" in module or os.sep in module:
        raise ArchiverError(f"--handler: no such file: {path}")
    return None


def _existing_file(flag: str, path: str) -> Path:
    if not Path(path).is_file():
        raise ArchiverError(f"{flag}: no such file: {path}")
    return Path(path)


def _extra(pattern: str) -> Iterator[tuple[str, Path]]:
    """One ``--extra-files`` entry: a file, a directory (merged into the root) or a glob."""
    wildcard = any(c in pattern for c in "*?[")
    if not wildcard and not Path(pattern).exists():
        raise ArchiverError(f"--extra-files: no such file or directory: {pattern}")
    for match in sorted(glob.glob(pattern)):
        path = Path(match)
        if path.is_file():
            yield path.name, path
        elif path.is_dir():
            yield from _tree(path)


def _tree(root: Path) -> Iterator[tuple[str, Path]]:
    """The files under ``root``, named relative to it; hidden and cache folders skipped."""
    for current, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            path = Path(current, name)
            yield path.relative_to(root).as_posix(), path


def build(spec: ArchiveSpec, *, created: datetime | None = None) -> Path:
    """Write the archive described by ``spec``; returns its path.

    Raises:
        ArchiverError: invalid input, a missing file, an output that exists
            without ``force``, or a failure to write.
    """
    validate(spec)
    target = output_path(spec)
    if target.exists() and not spec.force:
        raise ArchiverError(f"{target} already exists; use -f/--force to overwrite it")
    files = collect(spec)
    files = {name: src for name, src in files.items() if src.resolve() != target.resolve()}
    text = json.dumps(manifest(spec, created or datetime.now()), indent=2)
    try:
        if spec.archive_format == "no-archive":
            _write_directory(target, files, text)
        else:
            _write_replacing(target, spec, files, text)
    except OSError as exc:
        raise ArchiverError(f"cannot write {target}: {exc}") from None
    return target


def _write_replacing(target: Path, spec: ArchiveSpec, files: dict[str, Path], text: str) -> None:
    """Write the archive next to ``target``, then rename it into place."""
    with replacing(target, prefix=f".{spec.model_name}-") as (fd, temporary):
        os.close(fd)
        if spec.archive_format == "tgz":
            _write_tgz(temporary, spec.model_name, files, text)
        else:
            stored = spec.archive_format == "zip-store"
            compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            _write_zip(temporary, files, text, compression)
        os.chmod(temporary, 0o644)


def _write_zip(path: Path, files: dict[str, Path], text: str, compression: int) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, source in files.items():
            archive.write(source, name)
        archive.writestr(MANIFEST_NAME, text)


def _write_tgz(path: Path, root: str, files: dict[str, Path], text: str) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, source in files.items():
            info = archive.gettarinfo(source.resolve(), arcname=f"{root}/{name}")
            with source.open("rb") as content:  # a link's target, as zip and copy take it
                archive.addfile(info, content)
        data = text.encode()
        info = tarfile.TarInfo(f"{root}/{MANIFEST_NAME}")
        info.size = len(data)
        archive.addfile(info, BytesIO(data))


def _write_directory(target: Path, files: dict[str, Path], text: str) -> None:
    for name, source in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / name)
    (target / MANIFEST_NAME).parent.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST_NAME).write_text(text)
