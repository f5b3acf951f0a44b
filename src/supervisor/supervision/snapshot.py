"""Config snapshots in TorchServe's format: their names, writing one, reading one (pure).

A snapshot is a ``config.properties`` file named ``<yyyyMMddHHmmssSSS>-<kind>.cfg``
(a UTC time stamp; the kind is ``startup``, ``snapshot`` or ``shutdown``). Its
``model_snapshot`` key holds JSON: ``{"name", "modelCount", "created", "models":
{name: {version: {"defaultVersion", "marName", "minWorkers", "maxWorkers",
"batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", ...}}}}``.
``render`` writes one from the supervisor's statistics, with the listener keys so
that TorchServe can start from it too; ``restore`` reads ours and TorchServe's
back into model configs. Nothing here does I/O or imports trio: the directory is
``supervisor.supervision.snapshotdir``'s.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from supervisor.config import ConfigError, ModelConfig, ServerConfig, model_config
from supervisor.models.tsconfig import parse_properties, parse_snapshot_models
from supervisor.supervision.stats import ModelStats

__all__ = [
    "SETTINGS",
    "Restored",
    "newest_first",
    "render",
    "restore",
    "snapshot_name",
    "stamp_of",
]

SETTINGS = (
    "workers",
    "max_workers",
    "batch_size",
    "max_batch_delay",
    "response_timeout",
    "startup_timeout",
    "job_queue_size",
)
"""The model settings a snapshot records; restored, they win over an archive's YAML."""

_NAME = re.compile(r"(\d{17})-[A-Za-z]+\.cfg")
_STAMP = "%Y%m%d%H%M%S"


def snapshot_name(millis: int, kind: str = "snapshot") -> str:
    """The file name of a snapshot taken at ``millis`` (milliseconds since the epoch)."""
    seconds, ms = divmod(millis, 1000)
    return f"{time.strftime(_STAMP, time.gmtime(seconds))}{ms:03d}-{kind}.cfg"


def stamp_of(name: str) -> int | None:
    """The time stamp of a snapshot's file name in milliseconds; None if it is not one."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        seconds = calendar.timegm(time.strptime(match[1][:14], _STAMP))
    except ValueError:
        return None
    return seconds * 1000 + int(match[1][14:])


def newest_first(names: Iterable[str]) -> list[str]:
    """The snapshot file names among ``names``, newest first; other names are left out."""
    stamped = [(stamp, name) for name in names if (stamp := stamp_of(name)) is not None]
    return [name for _, name in sorted(stamped, reverse=True)]


def render(server: ServerConfig, models: Sequence[ModelStats], name: str, created: int) -> str:
    """A snapshot's text: ``config.properties`` as ``java.util.Properties.store`` writes it.

    Args:
        server: the listener keys written beside the models.
        models: every model version as a restart should bring it back (its
            ``config.workers`` is the number of workers it runs now).
        name: the snapshot's file name (TorchServe records it in the JSON).
        created: milliseconds since the epoch.
    """
    snapshot = {
        "name": name,
        "modelCount": len(models),
        "created": created,
        "models": _models_json(models),
    }
    keys = [*_server_keys(server), ("model_snapshot", json.dumps(snapshot, indent=2))]
    when = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(created // 1000))
    lines = ["#Saving snapshot", f"#{when}", *(f"{_escape(k)}={_escape(v)}" for k, v in keys)]
    return "\n".join(lines) + "\n"


def _server_keys(server: ServerConfig) -> list[tuple[str, str]]:
    keys = [
        (f"{kind}_address", _url(getattr(server, f"{kind}_address")))
        for kind in ("inference", "management", "metrics")
    ]
    if server.model_store:
        keys.append(("model_store", server.model_store))
    keys += [
        ("enable_model_api", str(server.enable_model_api).lower()),
        ("disable_token_authorization", str(server.disable_token_authorization).lower()),
        ("max_request_size", str(server.max_request_size)),
    ]
    return keys


def _url(address: str) -> str:
    return address if "://" in address else f"http://{address}"


def _models_json(models: Sequence[ModelStats]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for stats in models:
        by_name.setdefault(stats.config.name, {})[stats.config.version] = _entry(stats)
    return by_name


def _entry(stats: ModelStats) -> dict[str, Any]:
    """One version as TorchServe's ``Model.getModelState`` writes it, plus our keys."""
    c = stats.config
    entry: dict[str, Any] = {"defaultVersion": stats.is_default}
    if c.url:
        entry["marName"] = c.url
    entry.update(
        minWorkers=c.workers,
        maxWorkers=max(c.max_workers, c.workers),
        batchSize=c.batch_size,
        maxBatchDelay=_whole(c.max_batch_delay * 1000),
        responseTimeout=_whole(c.response_timeout),
        startupTimeout=_whole(c.startup_timeout),
        jobQueueSize=c.job_queue_size,
    )
    if c.handler:
        entry["handler"] = c.handler
    if not c.url and c.model_dir:
        entry["modelDir"] = c.model_dir
    return entry


def _whole(value: float) -> int | float:
    """A whole number as an int (TorchServe reads these keys as integers)."""
    value = round(value, 6)
    return int(value) if value.is_integer() else value


def _escape(text: str) -> str:
    """``text`` escaped as ``Properties.store`` does, non-ASCII as ``\\uXXXX`` (Latin-1 safe)."""
    out = []
    for char in text:
        if char in "\\=:#!":
            out.append("\\" + char)
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\u{unit:04x}" for unit in _utf16(char))
    escaped = "".join(out)
    return "\\" + escaped if escaped.startswith(" ") else escaped


def _utf16(char: str) -> list[int]:
    data = char.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


@attrs.frozen
class Restored:
    """The models of a snapshot, ready to load.

    Attributes:
        source: the snapshot's file.
        models: each model version, each name's default version first (the first
            version loaded is the default).
        settings: per ``(name, version)``, the settings the snapshot gives (keys of
            ``SETTINGS``); for a model loaded from an archive they win over its
            ``model-config.yaml``.
    """

    source: str
    models: tuple[ModelConfig, ...]
    settings: Mapping[tuple[str, str], Mapping[str, Any]]


def restore(text: str, source: str, defaults: Mapping[str, Any]) -> Restored:
    """Read a snapshot's models, ours or TorchServe's, layered over the model ``defaults``.

    Raises:
        ConfigError: the text has no ``model_snapshot`` key (a file cut short), or
            its JSON or a value in it is invalid, or it names a version twice.
    """
    try:
        props = parse_properties(text)
        if "model_snapshot" not in props:
            raise ConfigError("it has no model_snapshot key")
        tables = parse_snapshot_models(props["model_snapshot"])
        models = tuple(model_config(table, defaults) for table in tables)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    seen = {(m.name, m.version) for m in models}
    if len(seen) < len(models):
        raise ConfigError(f"{source}: a model version is given twice")
    settings = {
        (m.name, m.version): {key: getattr(m, key) for key in SETTINGS if key in table}
        for m, table in zip(models, tables, strict=True)
    }
    return Restored(source, models, settings)
