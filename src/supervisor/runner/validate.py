"""The ``validate`` report: what each try saw, the verdict, and its two renderings.

Pure values (no I/O): ``supervisor.runner.command`` runs the tries and fills
them in. A validation passes when one try passes; a try passes when the model
loaded and every canary got the status it expected (in load-only mode there
are no canaries, so loading is enough).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from supervisor.runner.state import Failure

__all__ = [
    "LOAD_AND_QUERY",
    "LOAD_ONLY",
    "CanaryCheck",
    "Report",
    "TryResult",
    "exit_status",
    "redact",
]

LOAD_ONLY = "load-only"
LOAD_AND_QUERY = "load-and-query"
TEXT_TAIL_LINES = 30
"""Log lines shown per tail in the text report (the JSON report has them all)."""
_BEARER = re.compile(r"(Bearer\s+)[^\s'\"]+")


def redact(lines: Iterable[str]) -> tuple[str, ...]:
    """Log lines with API keys (``Bearer <key>``) hidden: reports end up in CI logs."""
    return tuple(_BEARER.sub(r"\1<redacted>", line) for line in lines)


@attrs.frozen
class CanaryCheck:
    """One canary's answer.

    Attributes:
        name: the canary's label.
        expected: the status that counts as success.
        status: the status received; None when no answer came.
        latency: seconds from sending to the whole answer (or to giving up).
        detail: why it failed: the start of the answer's body (whitespace
            collapsed), or the transport error.
        mismatch: with the expected status, why the content was not the expected one.
    """

    name: str
    expected: int
    status: int | None
    latency: float
    detail: str | None = None

    mismatch: str = ""  # the answer had the status but not the expected content

    @property
    def passed(self) -> bool:
        """Whether the answer had the expected status and content."""
        return self.status == self.expected and not self.mismatch

    def to_json(self) -> dict[str, Any]:
        """The canary's entry in the JSON report."""
        return {
            "name": self.name,
            "passed": self.passed,
            "status": self.status,
            "expectedStatus": self.expected,
            "latencyMs": round(self.latency * 1000, 3),
            "detail": self.detail,
        }


@attrs.frozen
class TryResult:
    """One try: a fresh server, the model loaded (or not), the canaries sent.

    Attributes:
        number: 1 for the first try.
        model: ``name version`` of the loaded model (None if it did not load).
        load_seconds: from launching the server to the model being ready.
        failure: why the server or the model did not become ready.
        canaries: the canaries' answers, in file order.
        log_tail: the server's last output lines (kept for failed tries; keys
            redacted).
        worker_log_tail: the model's workers' last output lines (failed tries).
    """

    number: int
    model: str | None = None
    load_seconds: float | None = None
    failure: Failure | None = None
    canaries: tuple[CanaryCheck, ...] = ()
    log_tail: tuple[str, ...] = attrs.field(default=(), converter=redact)
    worker_log_tail: tuple[str, ...] = attrs.field(default=(), converter=redact)

    @property
    def passed(self) -> bool:
        """Loaded, and every canary answered as expected."""
        return self.failure is None and all(c.passed for c in self.canaries)

    def to_json(self) -> dict[str, Any]:
        """The try's entry in the JSON report."""
        failure = None
        if self.failure is not None:
            failure = {
                "kind": self.failure.kind.value,
                "reason": self.failure.reason,
                "returncode": self.failure.returncode,
            }
        return {
            "try": self.number,
            "passed": self.passed,
            "loaded": self.failure is None,
            "model": self.model,
            "loadSeconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "failure": failure,
            "canaries": [c.to_json() for c in self.canaries],
            "logTail": list(self.log_tail),
            "workerLogTail": list(self.worker_log_tail),
        }


@attrs.frozen
class Report:
    """A whole validation.

    Attributes:
        archive: the archive validated, as given.
        mode: ``load-only`` or ``load-and-query``.
        max_tries: the tries allowed.
        tries: the tries made (they stop at the first that passes).
    """

    archive: str
    mode: str
    max_tries: int
    tries: tuple[TryResult, ...]

    @property
    def passed(self) -> bool:
        """Whether a try passed."""
        return any(t.passed for t in self.tries)

    def to_json(self) -> dict[str, Any]:
        """The JSON report (one document)."""
        return {
            "archive": self.archive,
            "mode": self.mode,
            "passed": self.passed,
            "maxTries": self.max_tries,
            "tries": [t.to_json() for t in self.tries],
        }

    def render(self) -> str:
        """The human-readable report."""
        tries = "1 try" if self.max_tries == 1 else f"up to {self.max_tries} tries"
        lines = [f"validating {self.archive} ({self.mode}, {tries})"]
        for result in self.tries:
            lines += _render_try(result)
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def exit_status(report: Report) -> int:
    """0 if the validation passed, 1 if not."""
    return 0 if report.passed else 1


def _render_try(result: TryResult) -> list[str]:
    if result.failure is not None:
        lines = [f"try {result.number}: FAILED ({result.failure.kind.value}): "]
        lines[0] += result.failure.reason
    else:
        took = "" if result.load_seconds is None else f" in {result.load_seconds:.2f} s"
        lines = [f"try {result.number}: loaded {result.model}{took}"]
    lines += [f"  {_render_canary(c)}" for c in result.canaries]
    for title, tail in (("server log", result.log_tail), ("worker log", result.worker_log_tail)):
        if tail:
            lines.append(f"  {title} (last lines):")
            lines += [f"    | {line}" for line in tail[-TEXT_TAIL_LINES:]]
    return lines


def _render_canary(c: CanaryCheck) -> str:
    took = f"in {c.latency * 1000:.1f} ms"
    if c.passed:
        return f"canary {c.name!r}: {c.status} {took}, ok"
    status = "no answer" if c.status is None else f"{c.status} (expected {c.expected})"
    detail = f": {c.detail}" if c.detail else ""
    return f"canary {c.name!r}: {status} {took}, FAILED{detail}"
