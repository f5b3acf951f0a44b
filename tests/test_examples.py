"""Every example in ``examples/`` runs as its README says, command by command.

The README is the script: its ``sh`` blocks run in order in a copy of the example
directory, with ``python`` being this environment's. A block with
``supervisor serve`` starts the server (on free ports of 127.0.0.1; the default
ports in the commands are rewritten to the real ones). A block with ``curl``
runs each command after the block's variable assignments and compares the
answer with the comment under it (as JSON values when both are JSON). Any other
block runs as a script, and a ``text`` block right after it is its expected
output. The server is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest
import trio

from tests.helpers import eventually
from tests.test_serve_process import LISTENING, ServeProcess

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = sorted(p.parent.name for p in EXAMPLES.glob("*/README.md"))
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
STEP_TIMEOUT = 120  # seconds for one step (a model script, an archive, a curl)
DEFAULT_PORTS = {"inference": "8080", "management": "8081", "metrics": "8082"}


def blocks(readme: str) -> list[tuple[str, str]]:
    """The README's fenced blocks as (language, text), continuation lines joined."""
    return [(lang, text.replace("\\\n", " ")) for lang, text in BLOCK.findall(readme)]


def comment_under(lines: list[str], index: int) -> str:
    """The comment lines right under ``lines[index]``, without their ``# ``."""
    comment = []
    for line in lines[index + 1 :]:
        if not line.startswith("#"):
            break
        comment.append(line[2:])
    return "\n".join(comment)


def same_answer(answer: str, expected: str) -> bool:
    """Equal as JSON values when both are JSON (layout aside), else as text."""
    try:
        return bool(json.loads(answer) == json.loads(expected))
    except ValueError:
        return answer.strip() == expected.strip()


class Example:
    """One example, run from a copy of its directory."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.dir = tmp_path / name
        shutil.copytree(EXAMPLES / name, self.dir)
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.server: ServeProcess | None = None
        self.urls: dict[str, str] = {}

    async def run(self, nursery: trio.Nursery) -> None:
        steps = blocks((self.dir / "README.md").read_text())
        for index, (lang, text) in enumerate(steps):
            following = steps[index + 1] if index + 1 < len(steps) else ("", "")
            if lang != "sh":
                continue
            if "supervisor serve" in text:
                await self.serve(nursery, text)
            elif "curl " in text:
                await self.query(text)
            else:
                expected = following[1] if following[0] == "text" else None
                await self.script(text, expected)
        if self.server is not None:
            await self.stop()

    async def script(self, text: str, expected: str | None) -> None:
        result = await self.shell(text)
        if expected is not None:
            assert result.strip() == expected.strip()

    async def shell(self, text: str) -> str:
        with trio.fail_after(STEP_TIMEOUT):
            done = await trio.run_process(
                ["sh", "-ec", text],
                cwd=self.dir,
                env=self.env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, f"{text}\n{done.stderr.decode()}"
        return str(done.stdout.decode())

    async def serve(self, nursery: trio.Nursery, text: str) -> None:
        [line] = [line for line in text.splitlines() if "supervisor serve" in line]
        args = shlex.split(line)[4:]  # after "python -m supervisor serve"
        args += [f"--{kind}-address=127.0.0.1:0" for kind in DEFAULT_PORTS]
        self.server = ServeProcess(self.dir, *args)
        await nursery.start(self.server.run)
        await eventually(lambda: self.server.find(LISTENING) is not None, within=30)
        found = self.server.find(LISTENING)
        self.urls = dict(zip(DEFAULT_PORTS, found.group(1, 2, 3), strict=True))

    async def query(self, text: str) -> None:
        """Run each curl after the block's assignments; compare with the comment under it."""
        assignments: list[str] = []
        lines = text.splitlines()
        for index, line in enumerate(lines):
            if ASSIGNMENT.match(line):
                assignments.append(line)
            elif line.startswith("curl "):
                answer = await self.shell("\n".join([*assignments, self.local(line)]))
                expected = comment_under(lines, index)
                if expected:
                    assert same_answer(answer, expected), f"{line}\n{answer}"

    def local(self, command: str) -> str:
        for kind, port in DEFAULT_PORTS.items():
            command = command.replace(f"http://127.0.0.1:{port}", self.urls[kind])
        return command

    async def stop(self) -> None:
        assert self.server is not None
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await self.server.process.wait()
        assert code == 0, "\n".join(self.server.lines[-30:])


def test_there_are_examples_and_each_has_a_model_script():
    assert len(NAMES) >= 3
    for name in NAMES:
        assert (EXAMPLES / name / "make_model.py").is_file(), name


@pytest.mark.parametrize("name", NAMES)
async def test_example_runs_as_its_readme_says(nursery, tmp_path, name):
    await Example(name, tmp_path).run(nursery)
