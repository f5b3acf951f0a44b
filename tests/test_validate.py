"""``python -m supervisor validate``: canary files, the report, and real validations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from supervisor.cli import main
from supervisor.models.canary import CanaryError, read_canaries
from supervisor.runner.state import Failure, FailureKind
from supervisor.runner.validate import CanaryCheck, Report, TryResult, redact
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, make_mar

# --- canary files (pure) --------------------------------------------------------------------


def test_canaries_from_json_lines_with_defaults_and_body_files(tmp_path):
    text = '{"body": "hello"}\n\n{"name": "row", "body": [1, 2], "expect_status": 400}\n'
    text += '{"body_file": "cat.jpg", "content_type": "image/jpeg"}\n'
    (tmp_path / "cat.jpg").write_bytes(b"\xff\xd8")
    path = tmp_path / "canaries.jsonl"
    path.write_text(text)
    canaries = read_canaries(path)
    assert [(c.name, c.body, c.content_type, c.expect_status) for c in canaries] == [
        ("canary 1", b"hello", "text/plain", 200),
        ("row", b"[1,2]", "application/json", 400),
        ("canary 3", b"\xff\xd8", "image/jpeg", 200),
    ]


def test_canaries_from_a_json_list_read_relative_to_the_file(tmp_path):
    (tmp_path / "input.bin").write_bytes(b"\x00\x01")
    path = tmp_path / "canaries.json"
    path.write_text(json.dumps([{"body_file": "input.bin"}, {"body": {"a": 1}}]))
    assert [c.body for c in read_canaries(path)] == [b"\x00\x01", b'{"a":1}']


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no canaries"),
        ("{not json", "invalid JSON"),
        ("[1]", "must be an object"),
        ('{"body": "x", "expect": 200}', "unknown key"),
        ('{"name": "x"}', "exactly one of body and body_file"),
        ('{"body": "x", "body_file": "y"}', "exactly one"),
        ('{"body": "x", "expect_status": "200"}', "expect_status"),
        ('{"body_file": "absent.bin"}', "body_file absent.bin"),
        ('{"body_file": "../outside.bin"}', "without '..'"),
    ],
)
def test_malformed_canary_files_are_refused(tmp_path, text, message):
    path = tmp_path / "canaries.jsonl"
    path.write_text(text)
    with pytest.raises(CanaryError, match=message):
        read_canaries(path)


# --- the report (pure) ----------------------------------------------------------------------


def test_a_report_passes_when_one_try_passes_and_renders_both_ways():
    failed = TryResult(
        1,
        failure=Failure(FailureKind.MODEL, "model m 1 failed to load: boom"),
        log_tail=("curl -H 'Authorization: Bearer s3cret' http://x",),
        worker_log_tail=("RuntimeError: boom",),
    )
    ok = CanaryCheck("hello", 200, 200, 0.0031)
    bad = CanaryCheck("bad", 200, 503, 0.002, '{"code": 503}')
    passed = TryResult(2, model="m 1", load_seconds=0.8, canaries=(ok,))
    report = Report("m.mar", "load-and-query", 3, (failed, passed))
    assert report.passed
    text = report.render()
    assert "try 1: FAILED (model): model m 1 failed to load: boom" in text
    assert "| RuntimeError: boom" in text
    assert "s3cret" not in text  # keys never reach a report
    assert "try 2: loaded m 1 in 0.80 s" in text
    assert "canary 'hello': 200 in 3.1 ms, ok" in text
    assert text.endswith("PASSED")
    body = report.to_json()
    assert body["tries"][0]["failure"]["kind"] == "model"
    assert body["tries"][1]["canaries"][0]["latencyMs"] == 3.1
    failing = Report("m.mar", "load-and-query", 1, (TryResult(1, canaries=(ok, bad)),))
    assert not failing.passed
    assert "canary 'bad': 503 (expected 200) in 2.0 ms, FAILED: {\"code\": 503}" in failing.render()
    no_answer = no_answer_text(CanaryCheck("slow", 200, None, 30.0, "ReadTimeout"))
    assert "canary 'slow': no answer in 30000.0 ms, FAILED: ReadTimeout" in no_answer


def no_answer_text(result: CanaryCheck) -> str:
    return Report("m.mar", "load-and-query", 1, (TryResult(1, canaries=(result,)),)).render()


def test_redact_hides_bearer_keys():
    assert redact(["-H 'Authorization: Bearer abc-_1' -T x"]) == (
        "-H 'Authorization: Bearer <redacted>' -T x",
    )


# --- real validations -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("validate") / "store"
    make_mar(store, "echo", ECHO_HANDLER)
    make_mar(store, "broken", CRASH_AT_LOAD_HANDLER)
    return store


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    status = main(["validate", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_a_good_archive_passes_with_its_canaries(store, tmp_path, capsys):
    (tmp_path / "greeting.txt").write_bytes(b"from a file")
    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps([
        {"name": "hello", "body": "hello"},
        {"name": "file", "body_file": "greeting.txt", "content_type": "text/plain"},
    ]))  # fmt: skip
    status, report = validate(capsys, str(store / "echo.mar"), "--canaries", str(canaries))
    assert status == 0
    assert (report["passed"], report["mode"]) == (True, "load-and-query")
    [attempt] = report["tries"]
    assert attempt["model"] == "echo 1.0"
    assert 0 < attempt["loadSeconds"] < 60
    assert [(c["name"], c["status"], c["passed"]) for c in attempt["canaries"]] == [
        ("hello", 200, True),
        ("file", 200, True),
    ]
    assert all(c["latencyMs"] > 0 for c in attempt["canaries"])
    assert attempt["logTail"] == []  # tails are for failures


@pytest.mark.slow
def test_an_archive_that_fails_to_load_fails_every_try(store, capsys):
    status, report = validate(capsys, str(store / "broken.mar"), "--tries", "2")
    assert status == 1
    assert (report["passed"], report["mode"]) == (False, "load-only")
    assert [t["try"] for t in report["tries"]] == [1, 2]
    attempt = report["tries"][0]
    assert (attempt["loaded"], attempt["failure"]["kind"]) == (False, "model")
    assert "weights file is corrupt" in attempt["failure"]["reason"]
    assert any("raise RuntimeError" in line for line in attempt["workerLogTail"])
    assert any("FAILED" in line for line in attempt["logTail"])


@pytest.mark.slow
def test_failing_canaries_fail_the_validation_with_the_text_report(store, tmp_path, capsys):
    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text('{"body": "fine"}\n{"name": "boom", "body": "raise"}\n')
    status = main(["validate", str(store / "echo.mar"), "--canaries", str(canaries)])
    out = capsys.readouterr().out
    assert status == 1
    assert "try 1: loaded echo 1.0" in out
    assert "canary 'canary 1': 200" in out
    assert re.search(r"canary 'boom': 5\d\d \(expected 200\) in [\d.]+ ms, FAILED: \{", out)
    assert "bad input on purpose" in out  # the answer's body and the worker's traceback
    assert "Bearer <redacted>" in out  # the server's curl hint, key hidden
    assert out.rstrip().endswith("FAILED")


def test_usage_errors_exit_2_before_any_server_starts(store, tmp_path, capsys):
    assert main(["validate", str(tmp_path / "absent.mar")]) == 2
    assert "no such archive" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": 1, "oops": 2}\n')
    assert main(["validate", str(store / "echo.mar"), "--canaries", str(bad)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["validate", str(store / "echo.mar"), "--tries", "0"]) == 2
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2
