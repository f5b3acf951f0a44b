"""Finding a model's files: the model store, URLs, archives and manifests.

A registration ``url`` is one of:

* a name in the model store: a ``.mar``/``.zip``/``.tar.gz``/``.tgz`` archive or a
  directory (no ``/``, ``\\`` or ``..``, no NUL, at most ``MAX_NAME_LENGTH``
  characters: a name can never leave the store, and neither can a link in the
  store: the name must resolve inside it once links are followed);
* an ``http(s)://`` or ``file://`` URL, accepted only if it matches one of the
  ``allowed_urls`` expressions in full (none by default). Downloads are bounded
  in size and time, and a redirect must lead to an allowed URL too.

Archives are unpacked into a fresh directory of their own, refusing absolute
paths, ``..``, links and oversized contents; the caller removes the directory
when the model is unloaded. An archive holding nothing but one folder (a
``torch-model-archiver --archive-format tgz`` one) is unpacked from that folder.

Every file a manifest names (``configFile``, ``handler``, ``modelFile``,
``serializedFile``, ``requirementsFile``, ``extraFiles``) must resolve inside the
model's directory, links followed; errors never quote a file's content.
"""

from __future__ import annotations

import json
import lzma
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from supervisor.errors import InvalidModel, InvalidRequest, ModelNotFound
from supervisor.models.urlpolicy import allowed_url, url_scheme

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME_LENGTH",
    "ModelFiles",
    "check_manifest_paths",
    "check_url",
    "local_source",
    "open_model",
    "remove_paths",
    "store_entry",
    "unpack",
]

ARCHIVE_SUFFIXES = (".mar", ".zip", ".tar.gz", ".tgz")
MAX_UNPACKED_BYTES = 8 << 30
MAX_ENTRIES = 100_000
MAX_NAME_LENGTH = 255  # NAME_MAX on Linux: a longer name cannot be a file in the store
MAX_MANIFEST_BYTES = 1 << 20
DEFAULT_CONFIG_FILE = "model-config.yaml"
# The manifest's file fields; "handler" only when it names a file (``x.py``, ``a/x``).
_PATH_FIELDS = ("configFile", "modelFile", "serializedFile", "requirementsFile")


@attrs.frozen
class ModelFiles:
    """An unpacked (or in-place) model and what its manifest says.

    Attributes:
        directory: where the model's files are.
        manifest: ``MAR-INF/MANIFEST.json``'s contents ({} if there is none).
        owned: true when ``directory`` was made for this model and must be removed.
        downloaded: the archive fetched into the model store for this model, if any.
    """

    directory: Path
    manifest: dict[str, Any]
    owned: bool
    downloaded: Path | None = None

    def leftovers(self) -> tuple[Path, ...]:
        """What to remove when the model is unloaded: its unpacked copy and download."""
        paths = (self.directory,) if self.owned else ()
        return paths + ((self.downloaded,) if self.downloaded else ())

    @property
    def model(self) -> dict[str, Any]:
        """The manifest's ``model`` section."""
        section = self.manifest.get("model", {})
        return section if isinstance(section, dict) else {}

    def handler(self) -> str:
        """The manifest's handler as an import spec (``handler.py:fn`` -> ``handler:fn``)."""
        raw = str(self.model.get("handler", ""))
        module, sep, function = raw.partition(":")
        module = Path(module).name.removesuffix(".py") if module.endswith(".py") else module
        return f"{module}{sep}{function}"


def check_url(url: str, allowed_urls: tuple[str, ...]) -> bool:
    """Whether ``url`` is remote (True) after checking it is allowed; False for a store name.

    Raises:
        InvalidRequest: the url is empty, or a malformed URL (see ``supervisor.models.urlpolicy``).
        ModelNotFound: a name that could leave the store, or a URL that is not allowed.
    """
    if not url:
        raise InvalidRequest("Parameter url is required.")
    if url_scheme(url) in ("http", "https", "file"):
        allowed_url(url, allowed_urls)  # matched in its normal form: no dot-segment escapes
        return True
    if "/" in url or "\\" in url or ".." in url or url.startswith("."):
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    return False


def local_source(url: str, model_store: str) -> Path:
    """The archive or directory named ``url`` in the model store.

    Raises:
        ModelNotFound: there is no model store or no such entry in it.
    """
    if not model_store:
        raise ModelNotFound("Model store is not configured; cannot load " + url)
    return store_entry(url, Path(model_store))


def store_entry(name: str, store: Path) -> Path:
    """``store / name``, once it is known to exist inside the store, links followed.

    Raises:
        InvalidRequest: the name holds a NUL, is longer than ``MAX_NAME_LENGTH``,
            cannot be resolved, or leads out of the store (through a link).
        ModelNotFound: there is no such entry.
    """
    if "\x00" in name:
        raise InvalidRequest(f"the model store name {_brief(name)} holds a NUL character")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"the model store name {_brief(name)} is longer than {MAX_NAME_LENGTH} characters"
        )
    root = store.resolve()
    try:
        resolved = (root / name).resolve(strict=True)
    except FileNotFoundError:
        raise ModelNotFound(f"Model not found at: {name}") from None
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the OS refuses
        raise InvalidRequest(f"the model store name {name!r} cannot be resolved") from None
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidRequest(
            f"{name!r} leads out of the model store (through a link); "
            "a store name must stay inside the store"
        )
    return store / name


def open_model(source: Path, scratch: Path) -> ModelFiles:
    """Unpack ``source`` (if an archive) under ``scratch`` and read its manifest."""
    if source.is_dir():
        files = ModelFiles(source.resolve(), read_manifest(source.resolve()), owned=False)
        check_manifest_paths(files)
        return files
    if not source.name.endswith(ARCHIVE_SUFFIXES):
        raise InvalidModel(f"{source.name} is not a model archive ({', '.join(ARCHIVE_SUFFIXES)})")
    directory = Path(tempfile.mkdtemp(prefix="model-", dir=scratch)).resolve()
    try:
        unpack(source, directory)
        _hoist_single_folder(directory)
        files = ModelFiles(directory, read_manifest(directory), owned=True)
        check_manifest_paths(files)
        return files
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _hoist_single_folder(directory: Path) -> None:
    """Make a lone top-level folder the root, as TorchServe does.

    ``torch-model-archiver --archive-format tgz`` puts every file under
    ``<model-name>/``; an archive with a manifest at its root is left alone.
    """
    entries = list(directory.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or (directory / "MAR-INF").exists():
        return
    inner = entries[0].rename(directory.with_name(directory.name + ".root"))
    directory.rmdir()
    inner.rename(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    """``MAR-INF/MANIFEST.json`` as a dict ({} if absent).

    Raises:
        InvalidModel: the manifest is a link out of ``directory``, is over
            ``MAX_MANIFEST_BYTES``, or is not a JSON object.
    """
    path = directory / "MAR-INF" / "MANIFEST.json"
    if not path.exists():
        return {}
    _inside(directory, path, "MANIFEST.json")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidModel(f"MANIFEST.json is over the limit of {MAX_MANIFEST_BYTES >> 20} MiB")
        manifest = json.loads(data)
    except json.JSONDecodeError as exc:  # its message has a place, never an excerpt
        raise InvalidModel(f"unreadable MANIFEST.json: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"unreadable MANIFEST.json: {type(exc).__name__}") from None
    if not isinstance(manifest, dict):
        raise InvalidModel("MANIFEST.json is not a JSON object")
    return manifest


def check_manifest_paths(files: ModelFiles) -> Path:
    """Check that each file the manifest names resolves inside ``files.directory``.

    Returns:
        The model-config.yaml's path (``configFile``, else the default name).

    Raises:
        InvalidModel: a field that is not a string, or a path that leads out of the
            directory (absolute, through ``..`` or a link).
    """
    model = files.model
    for field in _PATH_FIELDS:
        if model.get(field):
            _inside(files.directory, _field_path(files.directory, field, model[field]), field)
    handler = model.get("handler")
    if isinstance(handler, str) and _names_a_file(handler.partition(":")[0]):
        _inside(files.directory, files.directory / handler.partition(":")[0], "handler")
    for extra in _extra_files(model.get("extraFiles")):
        _inside(files.directory, _field_path(files.directory, "extraFiles", extra), "extraFiles")
    config = _field_path(files.directory, "configFile", model.get("configFile") or "")
    if not model.get("configFile"):
        config = files.directory / DEFAULT_CONFIG_FILE
    return _inside(files.directory, config, "configFile")


def _field_path(directory: Path, field: str, value: Any) -> Path:
    if not isinstance(value, str):
        raise InvalidModel(f"MANIFEST.json model.{field} must be a string")
    return directory / value


def _names_a_file(module: str) -> bool:
    """Whether a handler spec names a file (``x.py``, ``dir/x``) rather than a module."""
    return module.endswith(".py") or "/" in module or "\\" in module


def _extra_files(value: Any) -> list[Any]:
    """``extraFiles``: a comma-separated string (as the archiver's option) or a list."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return list(value) if isinstance(value, list) else [value] if value else []


def _inside(directory: Path, path: Path, field: str) -> Path:
    """``path``, resolved; InvalidModel unless it is inside ``directory`` (resolved)."""
    shown = _brief(str(path.relative_to(directory)) if path.is_relative_to(directory) else path)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL, a name too long
        raise InvalidModel(f"{field} {shown} cannot be resolved") from None
    if not resolved.is_relative_to(directory):
        raise InvalidModel(f"{field} {shown} must stay inside the archive")
    return resolved


def _brief(value: Any) -> str:
    """``value`` for a message: its repr cut short (a name may be thousands of characters)."""
    text = repr(str(value))
    return text if len(text) <= 80 else text[:77] + "..."


def unpack(archive: Path, target: Path) -> None:
    """Unpack a zip or tar archive into ``target``, refusing anything unsafe.

    Raises:
        InvalidModel: an entry is absolute, climbs out with ``..``, is a link or a
            device, or the archive is too big or has too many entries.
    """
    try:
        if zipfile.is_zipfile(archive):
            _unzip(archive, target)
        elif tarfile.is_tarfile(archive):
            _untar(archive, target)
        else:
            raise InvalidModel(f"{archive.name} is neither a zip nor a tar archive")
    except _UNREADABLE as exc:
        raise InvalidModel(f"cannot unpack {archive.name}: {exc}") from None


# What zipfile, tarfile and their decompressors raise for damaged input; found by
# fuzzing (tests/test_archive_fuzz.py): a corrupt deflate stream is a zlib.error,
# an encrypted member a RuntimeError, an unknown compression a NotImplementedError.
_UNREADABLE = (
    zipfile.BadZipFile,
    tarfile.TarError,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    RuntimeError,
    struct.error,
)


def _safe_name(name: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or name.startswith(("/", "\\")):
        raise InvalidModel(f"unsafe entry in archive: {name!r}")
    return name


def _check_budget(count: int, total: int) -> None:
    if count > MAX_ENTRIES or total > MAX_UNPACKED_BYTES:
        raise InvalidModel("archive is too large to unpack (entries or size over the limit)")


def _unzip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_budget(len(infos), sum(i.file_size for i in infos))
        for info in infos:
            _safe_name(info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise InvalidModel(f"links are not allowed in archives: {info.filename!r}")
            zf.extract(info, target)


def _untar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        _check_budget(len(members), sum(m.size for m in members))
        for member in members:
            _safe_name(member.name)
            if not (member.isfile() or member.isdir()):
                raise InvalidModel(f"only files and directories are allowed: {member.name!r}")
        tf.extractall(target, filter="data")


def remove_paths(paths: Sequence[Path]) -> None:
    """Remove files and directory trees (missing ones are fine)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
