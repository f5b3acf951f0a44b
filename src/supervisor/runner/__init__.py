"""The runner layer: start ``python -m supervisor serve`` from outside and wait on it.

One pure state machine (``state.Lifecycle``) driven by a Trio shell
(``trio_runner.ModelServerRunner``) and a blocking one
(``blocking.SyncModelServerRunner``) over a shared base (``base``); the ready
file both sides read (``readyfile``); and ``python -m supervisor validate``
(``validate`` for its report, ``command`` for the command itself).

The names below are the runner's public API.
"""

from supervisor.runner.blocking import SyncModelServerRunner
from supervisor.runner.state import (
    Endpoint,
    Failure,
    FailureKind,
    RunnerError,
    RunnerState,
    RunnerStateError,
    ServerStartFailed,
)
from supervisor.runner.trio_runner import ModelServerRunner

__all__ = [
    "Endpoint",
    "Failure",
    "FailureKind",
    "ModelServerRunner",
    "RunnerError",
    "RunnerState",
    "RunnerStateError",
    "ServerStartFailed",
    "SyncModelServerRunner",
]
