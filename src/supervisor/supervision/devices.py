"""Which GPU each worker gets (the supervisor never imports torch to find out).

GPUs are found from ``CUDA_VISIBLE_DEVICES`` when it is set, else from
``nvidia-smi``; none are found on a machine without either. A model's workers
take the model's ``deviceIds`` (indices into the visible GPUs; all of them when
absent) round-robin. Each worker sees only its own GPU: its
``CUDA_VISIBLE_DEVICES`` names that one device, so inside the worker it is
``cuda:0`` and the handler's ``gpu_id`` is 0. A model whose ``deviceType`` is
``cpu`` gets ``gpu_id`` None and an empty ``CUDA_VISIBLE_DEVICES`` (no GPU at
all); on a machine without GPUs ``gpu_id`` is None and the environment is left alone.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["Device", "device_for", "visible_gpus"]


@attrs.frozen
class Device:
    """A worker's device: ``gpu_id`` for the handler, environment for the process."""

    gpu_id: int | None
    env: Mapping[str, str] = attrs.field(factory=dict)
    physical: str | None = None


def parse_visible(value: str) -> tuple[str, ...]:
    """The devices named by a ``CUDA_VISIBLE_DEVICES`` value (ids or UUIDs)."""
    return tuple(part.strip() for part in value.split(",") if part.strip() not in ("", "-1"))


@functools.cache
def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return parse_visible(value)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def device_for(
    worker_number: int, handler_config: Mapping[str, Any], visible: Sequence[str]
) -> Device:
    """The device of a model's ``worker_number``-th worker (0-based), round-robin.

    Raises:
        ValueError: ``deviceIds`` names a GPU that is not visible.
    """
    if not visible:
        return Device(gpu_id=None)
    if str(handler_config.get("deviceType", "")).lower() == "cpu":
        return Device(gpu_id=None, env={"CUDA_VISIBLE_DEVICES": ""})  # hide every GPU
    ids = handler_config.get("deviceIds")
    chosen = list(visible) if not ids else [_pick(visible, i) for i in ids]
    physical = chosen[worker_number % len(chosen)]
    return Device(gpu_id=0, env={"CUDA_VISIBLE_DEVICES": physical}, physical=physical)


def _pick(visible: Sequence[str], index: Any) -> str:
    try:
        position = int(index)
        if position < 0:
            raise IndexError(position)
        return visible[position]
    except (ValueError, TypeError, IndexError):
        raise ValueError(
            f"deviceIds names GPU {index!r}, but the visible GPUs are {list(visible)}"
        ) from None
