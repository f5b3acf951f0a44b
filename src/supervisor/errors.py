"""Every error the supervisor reports, and the HTTP status each one maps to.

::

    SupervisorError
    ├── ModelNotFound              404  no model by that name
    ├── ModelVersionNotFound       404  the model has no such version
    ├── ModelConflict              409  that name and version are already loaded
    ├── InvalidRequest             400  the request itself is wrong
    ├── InvalidModel               400  the archive or its manifest is unusable
    ├── DownloadFailed             400  a remote archive could not be fetched
    ├── Unauthorized               401  a missing or wrong key
    ├── Forbidden                  403  refused (e.g. unregistering the default version)
    ├── MethodNotAllowed           405  turned off (model registration without the flag)
    ├── ModelUnavailable           503  FAILED, stopping, or its queue is full
    ├── WorkerStartFailed          500  a worker could not load the model
    ├── CanaryFailed               422  a new version answered a canary wrongly; not switched to
    ├── DeadlineExceeded           504  the request's own deadline passed
    ├── StreamFailed               500  a streamed answer broke off after its first part
    └── WorkerFailure                   a request's worker failed while serving it
        ├── WorkerDied             500  (507 when killed by SIGKILL, e.g. the OOM killer)
        └── WorkerTimeout          504  no reply within response_timeout

The ``type`` of each error is the name TorchServe clients see for the same case,
so error bodies keep their shape: ``{"code", "type", "message"}``.

Errors that never reach an HTTP client stay local to the module that raises them
and catches them (``LOCAL_ERRORS`` names them; a test holds every exception class
of the package to this tree or that list)::

    supervisor.config.ConfigError              a bad setting, at start-up (CLI: exit 2)
    supervisor.models.archiver.ArchiverError   ``python -m supervisor archive`` refused its input
    supervisor.models.canary.CanaryError       a canary list is malformed (becomes InvalidModel)
    supervisor.http.listeners.ListenError      a port cannot be listened on (CLI: exit 1)
    supervisor.http.framing.RequestRefused     bytes that are no acceptable HTTP/1.1 request
    supervisor.http.exchange.CloseConnection   a lean route ends its connection at once
    supervisor.api.predict.StreamAborted       a streamed answer broke off after its head
    supervisor.supervision.worker.NotDelivered a batch never reached its worker (requeued)
    supervisor.runner.state.RunnerError        the runners' own tree (RunnerStateError,
                                               ServerStartFailed), for code that starts a server
    supervisor.daemon.DaemonError              a pid file held by another server (CLI: exit 1)
"""

from __future__ import annotations

import signal

__all__ = [
    "LOCAL_ERRORS",
    "CanaryFailed",
    "DeadlineExceeded",
    "DownloadFailed",
    "Forbidden",
    "InvalidModel",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelConflict",
    "ModelNotFound",
    "ModelUnavailable",
    "ModelVersionNotFound",
    "StreamFailed",
    "SupervisorError",
    "Unauthorized",
    "WorkerDied",
    "WorkerFailure",
    "WorkerStartFailed",
    "WorkerTimeout",
]

LOCAL_ERRORS = (
    "supervisor.config.ConfigError",
    "supervisor.models.archiver.ArchiverError",
    "supervisor.models.canary.CanaryError",
    "supervisor.http.listeners.ListenError",
    "supervisor.http.framing.RequestRefused",
    "supervisor.http.exchange.CloseConnection",
    "supervisor.api.predict.StreamAborted",
    "supervisor.supervision.worker.NotDelivered",
    "supervisor.daemon.DaemonError",
    "supervisor.runner.state.RunnerError",
    "supervisor.runner.state.RunnerStateError",
    "supervisor.runner.state.ServerStartFailed",
)
"""Exceptions outside the tree above, each raised and handled within its own layer."""


class SupervisorError(Exception):
    """Base of every error the supervisor reports to a caller.

    Attributes:
        status: the HTTP status this error is answered with.
        type_name: the error type shown to clients.
        log_tail: the last log lines of the worker involved, if any.
    """

    status = 500
    type_name = "InternalServerException"

    def __init__(self, message: str, *, log_tail: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail

    def to_json(self) -> dict[str, object]:
        """The error body: ``code``, ``type``, ``message`` (and ``logTail`` if any)."""
        body: dict[str, object] = {
            "code": self.status,
            "type": self.type_name,
            "message": self.message,
        }
        if self.log_tail:
            body["logTail"] = list(self.log_tail)
        return body


class ModelNotFound(SupervisorError):
    """No model is registered under the name asked for."""

    status = 404
    type_name = "ModelNotFoundException"


class ModelVersionNotFound(SupervisorError):
    """The model exists but not in the version asked for."""

    status = 404
    type_name = "ModelVersionNotFoundException"


class ModelConflict(SupervisorError):
    """A model with the same name and version is already loaded."""

    status = 409
    type_name = "ConflictStatusException"


class InvalidRequest(SupervisorError):
    """The request is malformed (bad parameters or body)."""

    status = 400
    type_name = "BadRequestException"


class ModelUnavailable(SupervisorError):
    """The model cannot take requests: FAILED, stopping, or its queue is full.

    Args:
        message: what is wrong.
        log_tail: the last log lines of the worker involved, if any.
        retry_after: seconds after which a retry may succeed (a ``Retry-After`` header).
    """

    status = 503
    type_name = "ServiceUnavailableException"

    def __init__(
        self, message: str, *, log_tail: tuple[str, ...] = (), retry_after: int | None = None
    ) -> None:
        super().__init__(message, log_tail=log_tail)
        self.retry_after = retry_after


class WorkerStartFailed(SupervisorError):
    """Workers could not load the model (the policy gave up)."""

    status = 500
    type_name = "InternalServerException"


class CanaryFailed(SupervisorError):
    """A model version failed one of its canaries, so it did not become the default.

    Args:
        message: which canary failed, why, and what was done about it.
        canary: the failed canary's report (``CanaryResult.to_json()``).
        log_tail: the last log lines of the version's workers.
    """

    status = 422
    type_name = "CanaryFailedException"

    def __init__(
        self, message: str, *, canary: dict[str, object], log_tail: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, log_tail=log_tail)
        self.canary = canary

    def to_json(self) -> dict[str, object]:
        """The error body, with the failed canary's report under ``canary``."""
        return {**super().to_json(), "canary": self.canary}


class WorkerFailure(SupervisorError):
    """The worker serving a request failed before answering it."""


class WorkerDied(WorkerFailure):
    """The worker process exited while it held the request.

    Args:
        message: what happened, naming the worker and its incarnation.
        killed_by: the signal that killed the worker, if any.
        log_tail: the worker's last log lines.
    """

    def __init__(
        self, message: str, *, killed_by: int | None = None, log_tail: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, log_tail=log_tail)
        if killed_by == signal.SIGKILL:
            self.status = (
                507  # TorchServe's answer for an exit by SIGKILL (the OOM killer's signal)
            )


class WorkerTimeout(WorkerFailure):
    """The worker did not answer within the response timeout; it was replaced."""

    status = 504
    type_name = "WorkerTimeoutException"


class InvalidModel(SupervisorError):
    """The archive or model directory is unusable (bad manifest, unsafe entries)."""

    status = 400
    type_name = "InvalidModelException"


class DownloadFailed(SupervisorError):
    """A remote archive could not be fetched (refused, too big, too slow)."""

    status = 400
    type_name = "DownloadArchiveException"


class MethodNotAllowed(SupervisorError):
    """The endpoint exists but is turned off (model registration without the flag)."""

    status = 405
    type_name = "MethodNotAllowedException"


class Forbidden(SupervisorError):
    """The request is understood but refused (e.g. deleting the default version)."""

    status = 403
    type_name = "IllegalArgumentException"


class Unauthorized(SupervisorError):
    """A missing or wrong key."""

    status = 401
    type_name = "InvalidKeyException"


class DeadlineExceeded(SupervisorError):
    """The request's deadline passed before it was answered; it never reaches a worker later."""

    status = 504
    type_name = "RequestTimeoutException"


class StreamFailed(SupervisorError):
    """A streamed answer broke off after its first part.

    The handler failed midway (its status and message are kept), or the reader
    fell so far behind that the parts waiting for it passed the bound.

    Args:
        message: what happened.
        status: the status the failure maps to (the handler's, or 500).
    """

    type_name = "InternalServerException"

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
