"""``python -m supervisor validate ARCHIVE``: load a model in a fresh server, then query it.

Each try starts ``python -m supervisor serve`` with only that model, through
``ModelServerRunner`` (on free ports of 127.0.0.1, or the addresses given with
``--inference-address`` and the like), and waits (up to ``--deadline``) until it is ready. In
load-and-query mode (``--canaries FILE``) it then sends every canary, one after
the other, to ``/predictions/NAME/VERSION``. A try that fails is followed by a
new one in a fresh server, up to ``--tries``. Exit status: 0 passed, 1 the
model did not load or a canary failed, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import attrs
import httpx
import trio

from supervisor.models.canary import Canary, CanaryError, judge, read_canaries
from supervisor.runner.state import APIS, Endpoint, ServerStartFailed
from supervisor.runner.trio_runner import ModelServerRunner
from supervisor.runner.validate import LOAD_AND_QUERY, LOAD_ONLY, CanaryCheck, Report, TryResult

__all__ = ["ValidateOptions", "add_validate_parser", "run_validate", "validate"]

DETAIL_CHARS = 500
"""How much of a failed canary's answer the report keeps."""


@attrs.frozen
class ValidateOptions:
    """What ``validate`` does.

    Attributes:
        archive: the archive (or model directory) to validate.
        canaries: the canaries; none means load-only.
        deadline: seconds each try may take to load the model.
        tries: fresh servers to try before giving up.
        canary_timeout: seconds each canary may take.
        serve_args: more ``serve`` flags (``--config``, ``--max-restarts`` ...).
        addresses: fixed ``HOST:PORT`` listeners by API name; the others get a
            free port of 127.0.0.1.
    """

    archive: Path
    canaries: tuple[Canary, ...] = ()
    deadline: float = 300.0
    tries: int = 1
    canary_timeout: float = 30.0
    serve_args: tuple[str, ...] = ()
    addresses: Mapping[str, str] = attrs.field(factory=dict)


def add_validate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``validate`` subcommand to the command line."""
    parser = commands.add_parser(
        "validate",
        allow_abbrev=False,
        help="check that a model archive loads (and answers canary requests) in a fresh server",
        description="Load ARCHIVE in a fresh server; with --canaries, also send each canary "
        "request. Exit 0 only if the model loaded and every canary got its expected status.",
    )
    parser.add_argument("archive", metavar="ARCHIVE", help="a model archive or model directory")
    parser.add_argument("--canaries", metavar="FILE", help="canary requests (JSON or JSON lines)")
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="seconds a try may take to load (300)"
    )
    parser.add_argument("--tries", type=int, default=1, help="fresh servers to try (default 1)")
    parser.add_argument(
        "--canary-timeout", type=float, default=30.0, help="seconds per canary (default 30)"
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="worker restarts allowed while loading (default 0: it must load the first time)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config for the server")
    parser.add_argument("--ts-config", metavar="FILE", help="TorchServe config.properties")
    for api in APIS:
        parser.add_argument(
            f"--{api}-address",
            metavar="HOST:PORT",
            help=f"the {api} API's address (default: a free port of 127.0.0.1)",
        )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")


def run_validate(args: argparse.Namespace) -> int:
    """Run ``validate`` from parsed flags; print the report; return the exit status."""
    try:
        options = _options(args)
    except (CanaryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = trio.run(validate, options)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.passed else 1


def _options(args: argparse.Namespace) -> ValidateOptions:
    archive = Path(args.archive)
    if not archive.exists():
        raise ValueError(f"no such archive or directory: {archive}")
    if args.tries < 1 or args.deadline <= 0 or args.canary_timeout <= 0 or args.max_restarts < 0:
        raise ValueError(
            "--tries, --deadline and --canary-timeout must be positive, --max-restarts not negative"
        )
    serve_args = ["--max-restarts", str(args.max_restarts)]
    for flag in ("config", "ts_config"):
        if getattr(args, flag):
            serve_args += [f"--{flag.replace('_', '-')}", str(Path(getattr(args, flag)).resolve())]
    canaries = read_canaries(args.canaries) if args.canaries else []
    addresses = {api: getattr(args, f"{api}_address") for api in APIS}
    return ValidateOptions(
        addresses={api: address for api, address in addresses.items() if address},
        archive=archive,
        canaries=tuple(canaries),
        deadline=args.deadline,
        tries=args.tries,
        canary_timeout=args.canary_timeout,
        serve_args=tuple(serve_args),
    )


async def validate(options: ValidateOptions) -> Report:
    """Validate a model: up to ``options.tries`` tries, stopping at the first that passes."""
    tries: list[TryResult] = []
    while len(tries) < options.tries and not any(t.passed for t in tries):
        tries.append(await validate_once(options, len(tries) + 1))
    mode = LOAD_AND_QUERY if options.canaries else LOAD_ONLY
    return Report(str(options.archive), mode, options.tries, tuple(tries))


async def validate_once(options: ValidateOptions, number: int) -> TryResult:
    """One try in a fresh server, stopped before this returns."""
    archive = options.archive.resolve()
    args = ["--model-store", str(archive.parent), "--models", archive.name, *options.serve_args]
    async with ModelServerRunner(args, addresses=options.addresses) as runner:
        began = time.monotonic()
        await runner.start()
        try:
            endpoint = await runner.wait_until_running(trio.current_time() + options.deadline)
        except ServerStartFailed as exc:
            failure = exc.failure
            models_tail = tuple(line for m in failure.models for line in m.log_tail)
            return TryResult(
                number, failure=failure, log_tail=failure.log_tail, worker_log_tail=models_tail
            )
        loaded = time.monotonic() - began
        result = await _query(endpoint, options, TryResult(number, load_seconds=loaded))
        return result if result.passed else attrs.evolve(result, log_tail=runner.log_tail())


async def _query(endpoint: Endpoint, options: ValidateOptions, loaded: TryResult) -> TryResult:
    """Send every canary to the model; on a failure, fetch its workers' log tail."""
    model = endpoint.models[0]  # the only one: --models names it alone
    name, version = quote(model.name), quote(model.version or "")
    async with httpx.AsyncClient(timeout=options.canary_timeout) as client:
        url = f"{endpoint.inference}/predictions/{name}/{version}"
        results = tuple([await _send(client, url, endpoint, c) for c in options.canaries])
        worker_log_tail: tuple[str, ...] = ()
        if not all(r.passed for r in results):
            worker_log_tail = await _worker_log_tail(client, endpoint, f"{name}/{version}")
    return attrs.evolve(
        loaded,
        model=f"{model.name} {model.version}",
        canaries=results,
        worker_log_tail=worker_log_tail,
    )


async def _send(
    client: httpx.AsyncClient, url: str, endpoint: Endpoint, canary: Canary
) -> CanaryCheck:
    headers = {"Content-Type": canary.content_type, **endpoint.headers("inference")}
    began = time.monotonic()
    try:
        answer = await client.post(url, content=canary.body, headers=headers)
    except httpx.HTTPError as exc:
        spent = time.monotonic() - began
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return CanaryCheck(canary.name, canary.expect_status, None, spent, why)
    spent = time.monotonic() - began
    mismatch = judge(canary, answer.status_code, answer.content)
    detail = None
    if mismatch:
        detail = " ".join(answer.text.split())[:DETAIL_CHARS]
        if answer.status_code == canary.expect_status:
            detail = f"{mismatch}: {detail}"
    other = mismatch if answer.status_code == canary.expect_status else ""
    return CanaryCheck(
        canary.name, canary.expect_status, answer.status_code, spent, detail, mismatch=other
    )


async def _worker_log_tail(
    client: httpx.AsyncClient, endpoint: Endpoint, path: str
) -> tuple[str, ...]:
    """The model's workers' last log lines, from the management API (best effort)."""
    try:
        answer = await client.get(
            f"{endpoint.management}/models/{path}", headers=endpoint.headers("management")
        )
        entries = answer.json()
        return tuple(line for e in entries for w in e["workers"] for line in w["logTail"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return ()
