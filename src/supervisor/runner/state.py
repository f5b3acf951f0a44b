"""The model-server runner's states and decisions (pure: no trio, no I/O).

A runner manages one ``python -m supervisor serve`` child through the states
of TFX's model-server runner::

    INITIAL --start()--> SCHEDULED --ready file, all models READY--> RUNNING
                             |                                          |
                             +-- exited / model FAILED / deadline --> ABORTED <-- exited
    any state --stop()--> END

RUNNING does not last by itself: a server that exits later makes the runner
ABORTED the next time it is asked. The trio runner (``supervisor.runner.trio_runner``) and
the synchronous one (``supervisor.runner.blocking``) are thin shells that feed this
module what they see (the child's exit status, the ready file, the key file,
the log tail) and act on its answers.

Errors::

    RunnerError
    ├── RunnerStateError    a call out of turn (start twice, an endpoint before RUNNING)
    └── ServerStartFailed   the server did not become ready; ``failure`` says why
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from supervisor.runner.readyfile import ModelOutcome, ReadyReport
from supervisor.supervision.exits import describe_returncode

__all__ = [
    "APIS",
    "KEY_FILE",
    "READY_FILE",
    "Endpoint",
    "Failure",
    "FailureKind",
    "Lifecycle",
    "RunnerError",
    "RunnerState",
    "RunnerStateError",
    "ServerStartFailed",
    "exit_failure",
    "serve_command",
    "settle",
]

APIS = ("inference", "management", "metrics")
"""The server's three APIs, each with an address of its own."""
READY_FILE = "ready.json"
"""The ready file's name in the runner's scratch directory."""
KEY_FILE = "key_file.json"
"""The key file's name in the runner's scratch directory."""


class RunnerState(enum.Enum):
    """Where a runner is in its life (TFX's names)."""

    INITIAL = "Initial"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    ABORTED = "Aborted"
    END = "End"


class FailureKind(enum.Enum):
    """Why a server did not become (or stay) ready."""

    SPAWN = "spawn"  # the child process could not be started at all
    EXITED = "exited"  # the server exited (or was killed)
    MODEL = "model"  # the server is up but a start-up model failed to load
    DEADLINE = "deadline"  # not ready before the deadline
    READY_FILE = "ready_file"  # the ready file could not be read


@attrs.frozen
class Failure:
    """Why a runner is ABORTED.

    Attributes:
        kind: the kind of failure.
        reason: one sentence for people.
        log_tail: the server's last output lines.
        returncode: the exit status (negative: the signal), when it exited.
        models: the start-up models that failed, with their workers' log tails.
    """

    kind: FailureKind
    reason: str
    log_tail: tuple[str, ...] = ()
    returncode: int | None = None
    models: tuple[ModelOutcome, ...] = ()


@attrs.frozen
class Endpoint:
    """A running server: its addresses, its models and the keys to call it with.

    Attributes:
        inference: the inference API's base URL.
        management: the management API's base URL.
        metrics: the metrics API's base URL.
        pid: the server process.
        models: the start-up models (all READY when the runner became RUNNING).
        inference_key: the inference API key (None when token auth is off).
        management_key: the management API key (None when token auth is off).
    """

    inference: str
    management: str
    metrics: str
    pid: int
    models: tuple[ModelOutcome, ...]
    inference_key: str | None = None
    management_key: str | None = None

    def headers(self, api: str = "inference") -> dict[str, str]:
        """The ``Authorization`` header for ``api`` (``inference`` or ``management``)."""
        key = self.inference_key if api == "inference" else self.management_key
        return {"Authorization": f"Bearer {key}"} if key else {}


class RunnerError(Exception):
    """Base of the runner's errors."""


class RunnerStateError(RunnerError, RuntimeError):
    """A runner method was called in a state that does not allow it (a bug in the caller)."""


class ServerStartFailed(RunnerError):
    """The server did not become ready.

    Attributes:
        failure: what happened, with the server's log tail.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class Lifecycle:
    """A runner's state machine: the shells call it, it never does I/O.

    Attributes:
        state: the current state.
        endpoint: the endpoint once RUNNING.
        failure: why, once ABORTED.
    """

    def __init__(self) -> None:
        self.state = RunnerState.INITIAL
        self.endpoint: Endpoint | None = None
        self.failure: Failure | None = None

    def start(self) -> None:
        """INITIAL -> SCHEDULED.

        Raises:
            RunnerStateError: ``start`` was called before (a runner runs once).
        """
        if self.state is not RunnerState.INITIAL:
            raise RunnerStateError(
                f"start() may be called once; the runner is {self.state.value} "
                "(use a new runner for another attempt)"
            )
        self.state = RunnerState.SCHEDULED

    def observe(self, outcome: Endpoint | Failure | None) -> None:
        """Apply what a shell saw: an endpoint, a failure, or nothing new yet."""
        if outcome is None or self.state not in (RunnerState.SCHEDULED, RunnerState.RUNNING):
            return
        if isinstance(outcome, Failure):
            self.state, self.failure = RunnerState.ABORTED, outcome
        elif self.state is RunnerState.SCHEDULED:
            self.state, self.endpoint = RunnerState.RUNNING, outcome

    def end(self) -> None:
        """Any state -> END (``stop`` was called)."""
        self.state = RunnerState.END

    def endpoint_nowait(self) -> Endpoint:
        """The endpoint of a RUNNING server.

        Raises:
            RunnerStateError: the runner is not RUNNING.
        """
        if self.state is RunnerState.RUNNING and self.endpoint is not None:
            return self.endpoint
        why = f": {self.failure.reason}" if self.failure else ""
        raise RunnerStateError(f"no endpoint: the runner is {self.state.value}{why}")

    def result(self) -> Endpoint:
        """What ``wait_until_running`` returns once the state settled.

        Raises:
            ServerStartFailed: the runner is ABORTED.
            RunnerStateError: the runner was never started, or stopped.
        """
        if self.state is RunnerState.ABORTED and self.failure is not None:
            raise ServerStartFailed(self.failure)
        return self.endpoint_nowait()


def serve_command(
    args: Sequence[str], scratch: Path, python: str, addresses: Mapping[str, str] | None = None
) -> list[str]:
    """The child's command line: ``serve``, the caller's flags, then the runner's own.

    The runner's flags come last so that they win: each listener on its address
    in ``addresses`` (by API name), the others on a free port of 127.0.0.1, and
    the key file and the ready file in ``scratch``. Config snapshots are off
    (``--ncs``) unless the caller names a ``--snapshot-dir``: a server started to
    test a model serves the models it was given. gRPC is off (``--no-grpc``)
    unless the caller names a ``--grpc-...`` address. No pre-stop delay
    (``--pre-stop-delay 0``) unless the caller sets one: no load balancer stands
    in front of a runner's server, so ``stop()`` drains at once.

    Raises:
        ValueError: ``addresses`` names an API that does not exist.
    """
    addresses = addresses or {}
    if unknown := sorted(set(addresses) - set(APIS)):
        raise ValueError(f"no such API: {', '.join(unknown)} (known: {', '.join(APIS)})")
    own = [f"--{api}-address={addresses.get(api, '127.0.0.1:0')}" for api in APIS]
    own += [f"--key-file={scratch / KEY_FILE}", f"--ready-file={scratch / READY_FILE}"]
    if not any(arg.startswith("--snapshot-dir") for arg in args):
        own.append("--ncs")  # the models asked for, not a snapshot left in the working directory
    if not any(arg.startswith(("--grpc-", "--no-grpc")) for arg in args):
        own.append("--no-grpc")  # its endpoints are HTTP; 7070 and 7071 would be shared by all
    if not any(arg.startswith("--pre-stop-delay") for arg in args):
        own.append("--pre-stop-delay=0")  # nothing to take it out of rotation first
    return [python, "-m", "supervisor", "serve", *args, *own]


def settle(
    *,
    returncode: int | None,
    ready: bytes | None,
    keys: bytes | None,
    log_tail: tuple[str, ...],
) -> Endpoint | Failure | None:
    """Decide a SCHEDULED runner's fate from what its shell saw.

    Args:
        returncode: the child's exit status, None while it runs.
        ready: the ready file's bytes, None until it exists.
        keys: the key file's bytes, None if there is none (token auth off).
        log_tail: the server's last output lines.

    Returns:
        The endpoint (every model READY), a failure, or None: keep waiting.
    """
    if returncode is not None:
        return exit_failure(returncode, log_tail)
    if ready is None:
        return None
    try:
        report = ReadyReport.from_json(ready)
        inference_key, management_key = _keys(keys)
    except ValueError as exc:
        return Failure(FailureKind.READY_FILE, f"unreadable ready or key file: {exc}", log_tail)
    if failed := report.failed():
        names = ", ".join(f"{m.name} {m.version or ''}".rstrip() for m in failed)
        reason = f"model {names} failed to load: " + "; ".join(str(m.reason) for m in failed)
        return Failure(FailureKind.MODEL, reason, log_tail, models=failed)
    urls = (report.inference, report.management, report.metrics)
    return Endpoint(*urls, report.pid, report.models, inference_key, management_key)


def exit_failure(returncode: int, log_tail: tuple[str, ...]) -> Failure:
    """The failure for a server that exited with ``returncode``."""
    how = describe_returncode(returncode)
    return Failure(FailureKind.EXITED, f"the server exited ({how})", log_tail, returncode)


def _keys(data: bytes | None) -> tuple[str | None, str | None]:
    """The inference and management keys from a key file (TorchServe's layout)."""
    if data is None:
        return None, None
    try:
        body = json.loads(data)
        return str(body["inference"]["key"]), str(body["management"]["key"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a key file: {exc!r}") from None
