"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the time goes.

Run: python bench/profile_summary.py FILE [--top N]

Self time is charged to the leaf frame's package (``PACKAGES``, by the file's
top-level module); inclusive time counts a function once per stack. Time spent
inside a system call (a socket send, say) is charged to the Python frame that made
it, and so is time the thread spends runnable but waiting for a CPU: record with
``py-spy record --gil`` to count only the time the process runs Python code.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")
PACKAGES = {
    "h11": "h11 (HTTP/1.1 parsing)",
    "hypercorn": "hypercorn",
    "quart": "quart",
    "quart_trio": "quart",
    "werkzeug": "quart",
    "flask": "quart",
    "supervisor": "supervisor",
    "handlers": "supervisor (wire protocol)",
    "trio": "trio",
    "outcome": "trio",
    "prometheus_client": "metrics (prometheus_client)",
    "attr": "attrs",
    "attrs": "attrs",
    "logging": "logging",
    "json": "json",
    "uuid.py": "uuid",
}
"""Top-level module (as py-spy prints paths, relative to sys.path) -> package group."""


STAGES = (
    ("our inference route (supervisor.api.inference)", "add_inference_routes.<locals>.infer"),
    ("HTTP response: quart -> hypercorn -> h11 -> socket", "ASGIHTTPConnection._send_response"),
    ("quart request handling (context, routing, wrappers)", "(quart"),
    ("HTTP request: socket read, h11 parsing (hypercorn)", "TCPServer._read_data"),
    ("hypercorn per-request streams and tasks", "(hypercorn/"),
    ("batches to workers (pool slots)", "Slot.run"),
    ("replies from workers (wire protocol)", "Worker._read_loop"),
)
"""Stages of the supervisor's request path: a stack counts for the first that it contains.

The rest (no stage's frame on the stack) is the trio scheduler and other tasks.
"""


def _stage(names: list[str]) -> str:
    for label, marker in STAGES:
        if any(marker in name for name in names):
            return label
    return "trio scheduler, other tasks"


def _parse(line: str) -> tuple[list[tuple[str, str]], int]:
    stack_text, _, count = line.rstrip().rpartition(" ")
    frames = []
    for frame in stack_text.split(";"):
        match = FRAME.match(frame.strip())
        if match:
            frames.append((match["func"], match["file"]))
    return frames, int(count)


def package(path: str) -> str:
    """The package group a source file belongs to, by ``PACKAGES``."""
    top = _short(path).split("/", 1)[0]
    return PACKAGES.get(top, "other stdlib" if path.startswith("<") or "/" not in path else "other")


def _short(path: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


WAITING = ("Condition.wait", "Channel.read_forever")
"""Leaf functions of a worker's threads that are blocked, not working: the main thread
waiting for its next batch, the reader thread in ``recv``."""


def summarise(path: Path, *, top: int = 20, waiting: tuple[str, ...] = ()) -> dict[str, Any]:
    """Self time by package, stages, and the top functions by self and inclusive time (%).

    Samples whose leaf function is in ``waiting`` are left out (and counted apart).
    """
    by_package, self_time, inclusive, stages = Counter(), Counter(), Counter(), Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        frames, count = _parse(line) if line.strip() else ([], 0)
        if not frames:
            continue
        func, file = frames[-1]
        if func in waiting:
            idle += count
            continue
        total += count
        by_package[package(file)] += count
        self_time[f"{func} ({_short(file)})"] += count
        names = {f"{f} ({_short(p)})" for f, p in frames}
        for name in names:
            inclusive[name] += count
        stages[_stage(sorted(names))] += count

    def pct(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "waiting_samples_left_out": idle,
        "self_by_package_pct": dict(pct(by_package, len(by_package))),
        "stages_pct": dict(pct(stages, len(stages))),
        "top_self_pct": pct(self_time, top),
        "top_inclusive_pct": pct(inclusive, top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--worker", action="store_true", help="leave out a worker's waits")
    args = parser.parse_args()
    waiting = WAITING if args.worker else ()
    print(json.dumps(summarise(args.file, top=args.top, waiting=waiting), indent=1))


if __name__ == "__main__":
    main()
