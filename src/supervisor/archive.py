"""Finding a model's files: the model store, URLs, archives and manifests.

A registration ``url`` is one of:

* a name in the model store: a ``.mar``/``.zip``/``.tar.gz``/``.tgz`` archive or a
  directory (no ``/``, ``\\`` or ``..``: a name can never leave the store);
* an ``http(s)://`` or ``file://`` URL, accepted only if it matches one of the
  ``allowed_urls`` expressions in full (none by default). Downloads are bounded
  in size and time, and a redirect must lead to an allowed URL too.

Archives are unpacked into a fresh directory of their own, refusing absolute
paths, ``..``, links and oversized contents; the caller removes the directory
when the model is unloaded. An archive holding nothing but one folder (a
``torch-model-archiver --archive-format tgz`` one) is unpacked from that folder.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from supervisor.errors import InvalidModel, InvalidRequest, ModelNotFound

__all__ = ["ARCHIVE_SUFFIXES", "ModelFiles", "check_url", "local_source", "remove_paths", "unpack"]

ARCHIVE_SUFFIXES = (".mar", ".zip", ".tar.gz", ".tgz")
MAX_UNPACKED_BYTES = 8 << 30
MAX_ENTRIES = 100_000


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
        InvalidRequest: the url is empty.
        ModelNotFound: a name that could leave the store, or a URL that is not allowed.
    """
    if not url:
        raise InvalidRequest("Parameter url is required.")
    if urlsplit(url).scheme in ("http", "https", "file"):
        if not any(re.fullmatch(pattern, url) for pattern in allowed_urls):
            raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")
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
    path = Path(model_store) / url
    if not path.exists():
        raise ModelNotFound(f"Model not found at: {url}")
    return path


def open_model(source: Path, scratch: Path) -> ModelFiles:
    """Unpack ``source`` (if an archive) under ``scratch`` and read its manifest."""
    if source.is_dir():
        return ModelFiles(source.resolve(), read_manifest(source), owned=False)
    if not source.name.endswith(ARCHIVE_SUFFIXES):
        raise InvalidModel(f"{source.name} is not a model archive ({', '.join(ARCHIVE_SUFFIXES)})")
    directory = Path(tempfile.mkdtemp(prefix="model-", dir=scratch))
    try:
        unpack(source, directory)
        _hoist_single_folder(directory)
        return ModelFiles(directory, read_manifest(directory), owned=True)
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
    """``MAR-INF/MANIFEST.json`` as a dict ({} if absent; InvalidModel if unreadable)."""
    path = directory / "MAR-INF" / "MANIFEST.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"unreadable MANIFEST.json: {exc}") from None
    if not isinstance(manifest, dict):
        raise InvalidModel("MANIFEST.json is not a JSON object")
    return manifest


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
