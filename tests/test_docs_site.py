"""The documentation site's sources: marked examples, a complete nav, a CLI page that is real.

The site itself is built by ``nox -s docs`` (mkdocs --strict, in CI); these checks need no
mkdocs and run with the suite.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.docblocks import ROOT, blocks, pages, unmarked
from tests.docrunner import matches, normalise, steps

# Pages other sessions are writing now: checked once the lead takes them out of this set
# (``python tests/docblocks.py docs/PAGE.md`` lists their unmarked blocks as file:line).
IN_PROGRESS: set[str] = set()  # pages being written; none now


def checked_pages() -> list[Path]:
    return [page for page in pages() if str(page.relative_to(ROOT)) not in IN_PROGRESS]


def test_every_command_and_output_block_is_run_by_a_test_or_marked_illustrative():
    missing = [block.where for page in checked_pages() for block in unmarked(page)]
    assert not missing, "blocks without a marker (see docs/howto/doc-examples.md):\n" + "\n".join(
        missing
    )


def test_every_run_by_marker_names_a_test_that_exists():
    named = {block.run_by for page in pages() for block in blocks(page) if block.run_by}
    assert named, "no block is run by a test"
    for file, test in sorted(named):  # type: ignore[type-var]
        source = ROOT / file
        assert source.is_file(), f"run-by names {file}, which does not exist"
        pattern = rf"^(?:async )?def {test}\("
        assert re.search(pattern, source.read_text(), re.M), f"{file} has no test {test}"


def nav_pages(entries: list[object]) -> set[str]:
    found: set[str] = set()
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            found |= nav_pages(value) if isinstance(value, list) else {str(value)}
    return found


def test_the_nav_lists_every_page_and_only_pages_that_exist():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    docs = ROOT / "docs"
    present = {str(page.relative_to(docs)) for page in docs.rglob("*.md")}
    pending = {Path(page).name for page in IN_PROGRESS}
    assert listed <= present, f"the nav names missing pages: {sorted(listed - present)}"
    assert present - listed <= pending, f"pages not in the nav: {sorted(present - listed)}"


def test_the_site_loads_nothing_from_other_hosts():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False  # Material would load Google Fonts
    assert config["strict"] is True
    assert not config.get("extra_css")
    assert not config.get("extra_javascript")


def load_hook(name: str = "cli_reference") -> ModuleType:
    path = ROOT / f"docs_hooks/{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_cli_reference_is_the_real_help_of_each_command():
    hook = load_hook()
    page = (ROOT / "docs/reference/cli.md").read_text()
    commands = re.findall(r"^<!-- cli-help:([^>]*)-->$", page, re.M)
    assert sorted(c.strip() for c in commands) == ["", "archive", "serve", "validate"]
    built = hook.expand(page)
    assert "<!-- cli-help" not in built
    for command in ("serve", "archive", "validate"):
        assert f"usage: python -m supervisor {command}" in built
    for flag in ("--enable-model-api", "--export-path", "--canaries"):
        assert flag in built


def test_a_page_or_stylesheet_that_loads_from_another_host_is_found(tmp_path):
    offline = load_hook("offline")
    (tmp_path / "index.html").write_text(
        '<a href="https://trio.readthedocs.io">trio</a><link href="assets/main.css">'
    )
    assert offline.remote_resources(tmp_path) == []
    (tmp_path / "font.html").write_text(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
    )
    (tmp_path / "main.css").write_text('@import "//cdn.example.com/x.css"; a{}')
    found = offline.remote_resources(tmp_path)
    assert [line.split(":")[0] for line in found] == ["font.html", "main.css"]


def test_a_bad_command_in_the_cli_reference_fails_the_build():
    with pytest.raises(RuntimeError, match="no-such-command --help failed"):
        load_hook().expand("<!-- cli-help: no-such-command -->")


def test_outputs_are_compared_after_normalising_what_changes_between_runs():
    expected = 'HTTP/1.1 200 OK\nx-request-id: f0b3cebe-79b5-48dc-b43b-6e932e5fe657\n{"pid": 1}'
    actual = 'HTTP/1.1 200 OK\nx-request-id: 152782e1-4eae-42ca-9848-207a94dfca98\n{"pid": 42}\n'
    assert matches(expected, actual)
    assert not matches(expected, actual.replace("200 OK", "200"))
    assert not matches("[5.0]", "[6.0]")
    assert not matches("", "unexpected output")
    assert normalise("2026-12-07 23:59:09,198 INFO x: pid 7 on 127.0.0.1:43663") == (
        "INFO x: pid <pid> on 127.0.0.1:<port>"
    )


def test_three_dots_stand_for_any_lines_or_any_text_in_a_line():
    assert matches("a\n...\nd", "a\nb\nc\nd")
    assert matches("a\n...\nd", "a\nd")
    assert matches('"message": "Canary 1 ... failed"', '"message": "Canary 1 of 1 (ping) failed"')
    assert not matches("a\n...\nd", "a\nb\nc")


def test_a_console_block_is_commands_with_their_output():
    text = "$ a=1\n$ curl x \\\n    -d y\n{}\n\n$ echo hi\nhi"
    assert steps(text) == [("a=1", ""), ("curl x \\\n    -d y", "{}\n"), ("echo hi", "hi")]
