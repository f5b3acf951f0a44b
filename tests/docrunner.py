"""Run a page's command blocks against a real ``python -m supervisor serve``, as a user would.

A ``console`` block is a list of ``$ command`` lines, each followed by its expected output. A
command runs with ``sh`` in the session's directory, with ``python`` and ``python3`` being this
environment's, the keys in ``$IK``, ``$MK`` and ``$AK`` (as docs/http-api.md defines them), and
the default ports 8080-8082 (and gRPC's 7070-7071) rewritten to the real ones; an assignment
(``pid=$(...)``) is repeated before the commands after it.
``python -m supervisor serve ...`` starts the server in the background (on free ports) and waits
for its ready file; its expected lines must each appear in the server's log (at least as the
start of a log line). Output is compared after :func:`normalise` (request ids, keys, pids, dates,
times, ports, timestamps, durations, memory); in the expected text a line ``...`` stands for
any lines and ``...`` inside a line for any text.

An ``sh`` block runs as one script (a ``supervisor serve`` line in it starts the server instead),
and a ``text`` block right after it, run by the same test, is its expected output; or, when it
has ``# `` comment lines, command by command, a comment under a command being its output (as in
README.md). A ``python``, ``toml`` or ``yaml`` block whose first line is ``# PATH`` (then an
optional ``: comment``) is written to PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import trio

from tests.docblocks import Block
from tests.helpers import eventually
from tests.serveproc import ServeProcess, local_ports

DEFAULT_PORTS = {"inference": "8080", "management": "8081", "metrics": "8082"}
GRPC_PORTS = {"grpc_inference": "7070", "grpc_management": "7071"}  # host:port, no scheme
GRPC_FLAGS = ("grpc-inference", "grpc-management")  # free ports, as for the HTTP ones
GRPC_LISTENING = re.compile(r"listening: gRPC inference (\S+), gRPC management (\S+)")
KEY_VARIABLES = {"IK": "inference", "MK": "management", "AK": "API"}
STEP_TIMEOUT = 120  # seconds for one command (an archive build, a validation)
SERVE = re.compile(r"^(?:\S*/)?python3? -m supervisor serve(?: |$)")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
FUNCTION = re.compile(r"^[A-Za-z_]\w*\(\) \{")
FILE_BLOCK = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|toml|yaml|json))(?::.*)?$")

NORMALISE = [
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M), ""),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<hex>"),
    (re.compile(r"^date: .*$", re.M | re.I), "date: <date>"),
    (re.compile(r'"key": "[^"]*"'), '"key": "<key>"'),
    (re.compile(r"Bearer [\w-]+"), "Bearer <key>"),
    (re.compile(r"\bpid \d+"), "pid <pid>"),
    (re.compile(r'"pid": \d+'), '"pid": <pid>'),
    (re.compile(r'"latencyMs": [\d.]+'), '"latencyMs": <ms>'),
    (re.compile(r'"(startTime|time)": "[\d\-T:.]+Z"'), r'"\1": "<time>"'),
    (re.compile(r'"(uptime|memoryUsage)": [\d.]+'), r'"\1": <n>'),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\bin \d+(?:\.\d+)? (m?s)\b"), r"in <time> \1"),
]


def normalise(text: str) -> str:
    """``text`` with what differs from run to run replaced by placeholders, lines rstripped."""
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def pattern_of(expected: str) -> re.Pattern[str]:
    """A regex for ``expected`` (normalised) with its ``...`` wildcards."""
    parts = []
    for line in normalise(expected).splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(map(re.escape, line.split("..."))) + r"\n")
    return re.compile("".join(parts), re.S)


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` output is what ``expected`` shows, after normalising both."""
    text = normalise(actual)
    return pattern_of(expected).fullmatch(text + "\n" if text else "") is not None


def comment_under(lines: list[str], index: int) -> str:
    """The ``# `` comment lines right under ``lines[index]``, without their ``# ``."""
    comment = []
    for line in lines[index + 1 :]:
        if not line.startswith("# "):
            break
        comment.append(line[2:])
    return "\n".join(comment)


def steps(console: str) -> list[tuple[str, str]]:
    """A console block's (command, expected output) pairs; ``\\`` continues a command."""
    found: list[tuple[list[str], list[str]]] = []
    in_command = False
    for line in console.splitlines():
        if in_command:
            found[-1][0].append(line)
        elif line.startswith("$ "):
            found.append(([line[2:]], []))
        elif found:
            found[-1][1].append(line)
        in_command = (in_command or line.startswith("$ ")) and line.endswith("\\")
    return [("\n".join(command), "\n".join(output)) for command, output in found]


class DocSession:
    """A directory, at most one running server, and the environment of a page's commands."""

    def __init__(self, cwd: Path, nursery: trio.Nursery) -> None:
        self.cwd = cwd
        self.nursery = nursery
        bin_dir = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        self.server: ServeProcess | None = None
        self.urls: dict[str, str] = {}
        self.assignments: list[str] = []

    async def run(self, blocks: list[Block]) -> None:
        """Run ``blocks`` in order (see the module docstring)."""
        assert blocks, "no block names this test in its run-by marker"
        for index, block in enumerate(blocks):
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            if block.lang == "console":
                for command, expected in steps(block.text):
                    await self.step(command, expected, block)
            elif block.lang == "sh":
                output = following.text if following and following.lang == "text" else None
                await self.script(block, output)
            elif named := FILE_BLOCK.match(block.text.partition("\n")[0]):
                path = self.cwd / named["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text + "\n")

    async def step(
        self, command: str, expected: str, block: Block, *, compare: bool = True
    ) -> None:
        """Run one command; compare its output with ``expected`` (unless ``compare`` is off)."""
        if SERVE.match(command):
            await self.serve(command)
            assert self.server is not None
            log = "\n".join(self.server.lines)
            for line in expected.splitlines():
                if line.strip() and line.strip() != "...":
                    # a log line may grow (another listener named at its end): a prefix will do
                    pattern = ".*".join(map(re.escape, normalise(line).split("...")))
                    found = re.search(pattern, normalise(log))
                    assert found, f"{block.where}: {line!r} is not in the log:\n{log}"
            return
        if ASSIGNMENT.match(command) and not expected:
            self.assignments.append(command)  # later commands see the variable, as in a shell
            return
        actual = await self.shell("\n".join([*self.assignments, command]), check=not compare)
        if compare:
            assert matches(expected, actual), f"{block.where}: $ {command}\n--- got:\n{actual}"

    async def script(self, block: Block, expected: str | None) -> None:
        """An ``sh`` block: its commands in order, each ``# ...`` comment under one its output."""
        lines = block.text.replace("\\\n", " ").splitlines()
        if not any(line.startswith("# ") for line in lines):
            for line in filter(SERVE.match, lines):
                await self.serve(line)
            rest = "\n".join(line for line in lines if not SERVE.match(line))
            actual = await self.shell(rest, check=True)
            if all(ASSIGNMENT.match(line) or FUNCTION.match(line) for line in lines):
                self.assignments.append(rest)  # definitions only: later commands see them
            if expected is not None:
                assert matches(expected, actual), f"{block.where}\n--- got:\n{actual}"
            return
        for index, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                output = comment_under(lines, index)
                await self.step(line, output, block, compare=bool(output))

    async def shell(self, command: str, *, check: bool = False) -> str:
        """``command``'s standard output (its standard error only goes into failures)."""
        self.read_keys()  # a page may have rotated one (GET /token)
        with trio.fail_after(STEP_TIMEOUT):
            done = await trio.run_process(
                ["sh", "-ec" if check else "-c", self.local(command)],
                cwd=self.cwd,
                env=self.env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if check:
            assert done.returncode == 0, f"{command}\n{done.stderr.decode()}"
        return str(done.stdout.decode())

    def local(self, command: str) -> str:
        for kind, port in DEFAULT_PORTS.items():
            if kind in self.urls:
                command = command.replace(f"http://127.0.0.1:{port}", self.urls[kind])
        for kind, port in GRPC_PORTS.items():
            if kind in self.urls:
                command = command.replace(f"127.0.0.1:{port}", self.urls[kind])
        return command

    async def serve(self, command: str) -> None:
        """Start ``python -m supervisor serve ARGS`` and wait until its models have settled."""
        await self.stop()
        args = shlex.split(command, comments=True)[4:]  # after "python -m supervisor serve"
        ready = self.cwd / ".doc-ready.json"
        ports = [*local_ports(), *(f"--{kind}-address=127.0.0.1:0" for kind in GRPC_FLAGS)]
        self.server = ServeProcess(self.cwd, *args, *ports, "--ready-file", str(ready))
        await self.nursery.start(self.server.run)
        process = self.server.process
        assert process is not None
        await eventually(lambda: ready.exists() or process.poll() is not None, within=90)
        assert ready.exists(), "\n".join(self.server.lines[-30:])
        self.urls = {kind: json.loads(ready.read_text())[kind] for kind in DEFAULT_PORTS}
        if grpc := self.server.find(GRPC_LISTENING):
            self.urls.update(grpc_inference=grpc[1], grpc_management=grpc[2])

    def read_keys(self) -> None:
        """``$IK``, ``$MK`` and ``$AK`` from the running server's key file, if it has one."""
        key_file = self.cwd / "key_file.json"
        if self.server is not None and key_file.exists():
            keys = json.loads(key_file.read_text())
            self.env.update({var: keys[kind]["key"] for var, kind in KEY_VARIABLES.items()})

    async def stop(self) -> None:
        """Stop the running server, if any, with SIGTERM; it must exit 0."""
        if self.server is None or self.server.process is None:
            return
        self.server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await self.server.process.wait()
        assert code == 0, "\n".join(self.server.lines[-30:])
        self.server = None
