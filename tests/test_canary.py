"""Canary lists: parsing (bodies, defaults, refusals) and judging answers. Pure, no workers."""

from __future__ import annotations

import json

import pytest

from supervisor.models.canary import (
    MAX_CANARIES,
    Canary,
    CanaryError,
    CanaryResult,
    judge,
    parse_canaries,
    read_canaries,
)


def test_bodies_and_their_default_content_types(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"\xff\xd8jpeg")
    text, data, image, typed = parse_canaries(
        [
            {"body": "hello"},
            {"body": {"x": [1, 2]}, "name": "sum"},
            {"body_file": "cat.jpg"},
            {"body": "a,b", "content_type": "text/csv", "expect_status": 400},
        ],
        tmp_path,
    )
    assert (text.body, text.content_type, text.name) == (b"hello", "text/plain", "canary 1")
    assert (data.body, data.content_type, data.name) == (b'{"x":[1,2]}', "application/json", "sum")
    assert (image.body, image.content_type) == (b"\xff\xd8jpeg", "application/octet-stream")
    assert (typed.content_type, typed.expect_status) == ("text/csv", 400)
    assert text.expect_status == 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"body": "x"}, "must be a JSON list"),
        (["x"], "canary 1: must be an object"),
        ([{"body": "x", "expected_status": 200}], "unknown key(s) expected_status"),
        ([{}], "exactly one of body and body_file"),
        ([{"body": "x", "body_file": "y"}], "exactly one of body and body_file"),
        ([{"body": "x", "expect_status": "200"}], "expect_status must be an HTTP status"),
        ([{"body": "x", "expect_status": True}], "expect_status must be an HTTP status"),
        ([{"body": "x", "expect_status": 99}], "expect_status must be an HTTP status"),
        ([{"body": "x", "content_type": 3}], "content_type must be a string"),
        ([{"body": "x"}, {"body_file": "../etc/passwd"}], "canary 2: body_file must be a relative"),
        ([{"body_file": "/etc/passwd"}], "body_file must be a relative"),
        ([{"body_file": "missing.bin"}], "body_file missing.bin"),
        ([{"body_file": "nul\x00.bin"}], "embedded null byte"),  # was a 500 (fuzzing)
        ([{"body": "x"}] * (MAX_CANARIES + 1), f"at most {MAX_CANARIES} canaries"),
        ([{"body": 2**70}], "canary 1: Integer exceeds 64-bit range"),
        ([{"body": "x", "expect_json": [2**70]}], "canary 1: Integer exceeds 64-bit range"),
    ],
)
def test_bad_lists_are_refused_with_the_reason(tmp_path, data, message):
    with pytest.raises(CanaryError) as excinfo:
        parse_canaries(data, tmp_path)
    assert message in str(excinfo.value)


def test_body_file_needs_a_base_directory():
    with pytest.raises(CanaryError, match="body_file is not allowed here"):
        parse_canaries([{"body_file": "x.bin"}])


def test_read_canaries_names_the_file(tmp_path):
    good = tmp_path / "canaries.json"
    good.write_text(json.dumps([{"body": "hi", "expect_contains": "hi"}]))
    assert read_canaries(good)[0].expect_contains == "hi"
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(CanaryError, match=r"bad\.json: invalid JSON"):
        read_canaries(bad)
    with pytest.raises(CanaryError, match=r"absent\.json"):
        read_canaries(tmp_path / "absent.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('[{"body": 1, "nope": 2}]')
    with pytest.raises(CanaryError, match=r"wrong\.json: canary 1: unknown key"):
        read_canaries(wrong)


def test_judge_status_json_and_text():
    (canary,) = parse_canaries([{"body": "x", "expect_json": {"y": 3, "z": [1]}}])
    assert judge(canary, 200, b'{"z": [1], "y": 3}') == ""
    assert judge(canary, 503, b"{}") == "status 503, expected 200"
    assert judge(canary, 200, b"not json") == "the answer is not JSON"
    assert "differs from the expected JSON" in judge(canary, 200, b'{"y": 4, "z": [1]}')
    (null,) = parse_canaries([{"body": "x", "expect_json": None}])
    assert judge(null, 200, b"null") == ""
    assert judge(null, 200, b"0") != ""
    contains = Canary(body=b"x", expect_contains="cat")
    assert judge(contains, 200, b"a cat!") == ""
    assert judge(contains, 200, b"a dog") == "the answer does not contain 'cat'"
    assert judge(Canary(body=b"x", expect_status=400), 400, b"anything") == ""


def test_result_report_is_short_and_json_ready():
    canary = Canary(body=b"x", name="smoke")
    failed = CanaryResult(2, canary, 500, b"e" * 5000, "status 500, expected 200", 0.0125)
    report = failed.to_json()
    assert not failed.passed
    assert report["index"] == 2
    assert report["name"] == "smoke"
    assert report["status"] == 500
    assert len(report["body"]) == 1000
    assert report["latencyMs"] == 12.5
    assert json.loads(json.dumps(report)) == report
    assert CanaryResult(1, canary, 200, b"ok").passed
