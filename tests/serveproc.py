"""``python -m supervisor serve`` as a real child process, for tests that signal it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import trio

from tests.helpers import eventually

LISTENING = re.compile(r"listening: inference (\S+), management (\S+), metrics (\S+)")


class ServeProcess:
    """``python -m supervisor serve ...`` with its log collected line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.args = [sys.executable, "-m", "supervisor", "serve", *args]
        self.cwd = cwd  # the key file is written here
        self.lines: list[str] = []
        self.process: trio.Process | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.process = await trio.lowlevel.open_process(
            self.args,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        task_status.started(self)
        assert self.process.stderr is not None
        pending = b""
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
        finally:
            if self.process.poll() is None:  # a failed test must not leave a server behind
                self.process.kill()
                with trio.CancelScope(shield=True):
                    await self.process.wait()

    def find(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        return next((m for line in self.lines if (m := pattern.search(line))), None)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def headers(self, kind: str) -> dict[str, str]:
        """The Authorization header for ``kind``, from the server's key file."""
        keys = json.loads((self.cwd / "key_file.json").read_text())
        return {"Authorization": f"Bearer {keys[kind]['key']}"}

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return [p.pid for p in psutil.Process(self.process.pid).children()]

    async def wait_listening(self, within: float = 30.0) -> tuple[str, str, str]:
        """Wait for the "listening" line; the inference, management and metrics URLs."""
        await eventually(lambda: self.find(LISTENING) is not None, within=within)
        match = self.find(LISTENING)
        assert match is not None
        return match.group(1), match.group(2), match.group(3)


def local_ports() -> list[str]:
    return [f"--{kind}-address=127.0.0.1:0" for kind in ("inference", "management", "metrics")]
