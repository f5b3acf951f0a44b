"""The log-tail ring: chunked lines, cut lines, and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.supervision.logtail import LogTail

MARK = " [...line cut]"


def test_lines_split_across_chunks():
    tail = LogTail()
    assert tail.feed(b"hel") == []
    assert tail.feed(b"lo\nwor") == ["hello"]
    assert tail.feed(b"ld\n\nlast") == ["world", ""]
    assert tail.lines() == ("hello", "world", "")
    assert tail.close() == ["last"]
    assert tail.lines() == ("hello", "world", "", "last")
    assert tail.total_bytes == len(b"hello\nworld\n\nlast")


def test_crlf_is_stripped():
    tail = LogTail()
    assert tail.feed(b"a\r\nb\r") == ["a"]
    assert tail.feed(b"\n") == ["b"]


def test_close_without_a_partial_line_adds_nothing():
    tail = LogTail()
    tail.feed(b"one\n")
    assert tail.close() == []
    assert tail.lines() == ("one",)


def test_close_twice_keeps_the_last_line_once():
    tail = LogTail()
    tail.feed(b"unterminated")
    assert tail.close() == ["unterminated"]
    assert tail.close() == []
    assert tail.lines() == ("unterminated",)


def test_invalid_utf8_is_replaced():
    tail = LogTail()
    assert tail.feed(b"caf\xc3\xa9 \xff\n") == ["café \ufffd"]


def test_multibyte_character_split_across_chunks():
    tail = LogTail()
    data = "naïve\n".encode()
    assert tail.feed(data[:3]) == []
    assert tail.feed(data[3:]) == ["naïve"]


def test_max_lines_drops_the_oldest():
    tail = LogTail(max_lines=3)
    tail.feed(b"1\n2\n3\n4\n5\n")
    assert tail.lines() == ("3", "4", "5")


def test_max_bytes_drops_the_oldest():
    tail = LogTail(max_bytes=10)
    tail.feed(b"aaaa\nbbbb\ncccc\n")
    assert tail.lines() == ("bbbb", "cccc")


def test_max_bytes_counts_utf8_bytes_not_characters():
    tail = LogTail(max_bytes=10)
    tail.feed("ééé\n".encode())  # 6 bytes, 3 characters
    tail.feed("üü\n".encode())  # 4 bytes
    assert tail.lines() == ("ééé", "üü")
    tail.feed(b"x\n")
    assert tail.lines() == ("üü", "x")
    tail.feed("ééééééé\n".encode())  # 14 bytes alone: more than the budget
    assert sum(len(line.encode()) for line in tail.lines()) <= 10


def test_long_line_in_one_chunk_is_cut_with_the_marker():
    tail = LogTail(max_line_bytes=4)
    assert tail.feed(b"abcdefgh\nok\n") == ["abcd" + MARK, "ok"]
    assert tail.lines() == ("abcd" + MARK, "ok")


def test_line_of_exactly_max_line_bytes_is_not_cut():
    tail = LogTail(max_line_bytes=4)
    assert tail.feed(b"abcd") == []
    assert tail.feed(b"\n") == ["abcd"]


def test_long_line_over_several_chunks_is_cut_once():
    tail = LogTail(max_line_bytes=4)
    assert tail.feed(b"abc") == []
    assert tail.feed(b"def") == ["abcd" + MARK]
    # The rest of the cut line is dropped up to its newline; it is not a new line.
    assert tail.feed(b"ghi") == []
    assert tail.feed(b"jk\nnext\n") == ["next"]
    assert tail.close() == []
    assert tail.lines() == ("abcd" + MARK, "next")


def test_cut_line_still_unterminated_at_close_is_not_repeated():
    tail = LogTail(max_line_bytes=2)
    tail.feed(b"abcdef")
    tail.feed(b"ghij")
    assert tail.close() == []
    assert tail.lines() == ("ab" + MARK,)


def test_lines_last():
    tail = LogTail()
    tail.feed(b"a\nb\nc\n")
    assert tail.lines(last=2) == ("b", "c")
    assert tail.lines(last=1) == ("c",)
    assert tail.lines(last=3) == ("a", "b", "c")
    assert tail.lines(last=10) == ("a", "b", "c")
    assert tail.lines(last=0) == ()
    assert tail.lines(last=-1) == ()
    assert tail.lines() == ("a", "b", "c")


def test_empty_tail():
    tail = LogTail()
    assert tail.lines() == ()
    assert tail.lines(last=5) == ()
    assert tail.close() == []
    assert tail.total_bytes == 0


def render(raw: bytes, max_line: int) -> str:
    text = raw[:max_line].decode("utf-8", "replace").rstrip("\r")
    return text + MARK if len(raw) > max_line else text


def expected_lines(stream: bytes, max_line: int, *, closed: bool) -> list[str]:
    """What a tail should have emitted for ``stream``, however it was chunked."""
    *complete, rest = stream.split(b"\n")
    if len(rest) > max_line or (closed and rest):
        complete.append(rest)
    return [render(raw, max_line) for raw in complete]


def kept(lines: list[str], max_lines: int, max_bytes: int) -> tuple[str, ...]:
    """The longest suffix of ``lines`` within both bounds."""
    suffix: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line.encode())
        if len(suffix) + 1 > max_lines or size > max_bytes:
            break
        suffix.insert(0, line)
    return tuple(suffix)


tokens = st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", "é".encode(), b"\xff", b"xxxxxxx"])
streams = st.lists(tokens, max_size=60).map(b"".join)


@settings(max_examples=200, deadline=None)
@given(
    stream=streams,
    data=st.data(),
    max_lines=st.integers(1, 6),
    max_bytes=st.integers(1, 40),
    max_line=st.integers(1, 12),
    closed=st.booleans(),
)
def test_any_chunking_gives_the_same_lines_within_bounds(
    stream, data, max_lines, max_bytes, max_line, closed
):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    tail = LogTail(max_lines=max_lines, max_bytes=max_bytes, max_line_bytes=max_line)
    emitted = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        emitted.extend(tail.feed(stream[start:end]))
        assert len(tail.lines()) <= max_lines
        assert sum(len(line.encode()) for line in tail.lines()) <= max_bytes
        assert len(tail._partial) <= max_line
    if closed:
        emitted.extend(tail.close())
    expected = expected_lines(stream, max_line, closed=closed)
    assert emitted == expected
    assert tail.lines() == kept(expected, max_lines, max_bytes)
    assert tail.total_bytes == len(stream)


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20), max_line=st.integers(1, 50))
def test_every_line_is_at_most_max_line_bytes_plus_the_marker(chunks, max_line):
    tail = LogTail(max_line_bytes=max_line)
    for chunk in chunks:
        for line in tail.feed(chunk):
            raw = line.removesuffix(MARK)
            assert len(raw) <= max_line
    tail.close()
    for line in tail.lines():
        assert len(line.removesuffix(MARK)) <= max_line


@pytest.mark.parametrize("size", [10_000, 1_000_000])
def test_giant_unterminated_write_keeps_the_pending_buffer_small(size):
    tail = LogTail(max_line_bytes=100)
    for _ in range(5):
        tail.feed(b"z" * size)
    assert len(tail._partial) <= 100
    assert tail.lines() == ("z" * 100 + MARK,)


def test_ignored_lines_are_returned_but_not_kept():
    tail = LogTail(max_lines=2, ignore=("[METRICS]",))
    lines = tail.feed(b"Traceback: boom\n[METRICS] HandlerTime.ms:3\n[METRICS] x:1\n")
    assert lines == ["Traceback: boom", "[METRICS] HandlerTime.ms:3", "[METRICS] x:1"]
    assert tail.lines() == ("Traceback: boom",)
