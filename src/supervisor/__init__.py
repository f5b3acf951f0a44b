"""trio-supervisor: a PyTorch model server built on a Trio supervisor.

The public surface is the embedding API (``open_supervisor``, ``Supervisor``),
the configuration values, the errors, the CLI (``python -m supervisor``) and the
HTTP API. The supervisor process never imports torch; workers do.
"""

from __future__ import annotations

from handlers.protocol import InferItem, ReplyItem
from supervisor.config import ModelConfig, ServerConfig, load_config
from supervisor.errors import (
    CanaryFailed,
    InvalidRequest,
    ModelConflict,
    ModelNotFound,
    ModelUnavailable,
    ModelVersionNotFound,
    StreamFailed,
    SupervisorError,
    WorkerDied,
    WorkerFailure,
    WorkerStartFailed,
    WorkerTimeout,
)
from supervisor.policy import RestartPolicy
from supervisor.supervision.core import Supervisor, open_supervisor

__all__ = [
    "DISTRIBUTION",
    "CanaryFailed",
    "InferItem",
    "InvalidRequest",
    "ModelConfig",
    "ModelConflict",
    "ModelNotFound",
    "ModelUnavailable",
    "ModelVersionNotFound",
    "ReplyItem",
    "RestartPolicy",
    "ServerConfig",
    "StreamFailed",
    "Supervisor",
    "SupervisorError",
    "WorkerDied",
    "WorkerFailure",
    "WorkerStartFailed",
    "WorkerTimeout",
    "load_config",
    "open_supervisor",
]

DISTRIBUTION = "trio-supervisor"
"""Marks this package as trio-supervisor's (supervisord uses the same import name)."""
