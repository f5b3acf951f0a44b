"""Archive loading under fuzzing: malformed zips and tars, traversal, links, bombs.

``open_model`` (the unpacking behind every registration and every archive in the
store) must either open an archive or refuse it with ``InvalidModel``; it must
never raise anything else, never write outside its scratch directory, and
never leave a half-unpacked directory behind. Hypothesis mutates valid
archives (flipped, inserted and cut bytes) and builds archives from generated
member names and kinds. The end-to-end ZipSlip test over HTTP is in
test_security.py.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import InvalidModel
from supervisor.models import archive
from supervisor.models.archive import ModelFiles, open_model

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MANIFEST = json.dumps(
    {"runtime": "python", "model": {"modelName": "m", "modelVersion": "1", "handler": "h.py"}}
)
FILES = {
    "MAR-INF/MANIFEST.json": MANIFEST.encode(),
    "h.py": b"def handle(batch, context):\n    return batch\n",
    "weights/w.bin": bytes(range(256)) * 64,
}


def zip_bytes(files: dict[str, bytes] = FILES) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes] = FILES) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def load(data: bytes, suffix: str) -> ModelFiles | InvalidModel:
    """Open ``data`` as an archive in a fresh directory; check what it left behind.

    Returns:
        The opened model, or the InvalidModel that refused it. Any other
        exception fails the test.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / f"model{suffix}"
        source.write_bytes(data)
        scratch = root / "scratch"
        scratch.mkdir()
        before = snapshot(root)
        try:
            opened: ModelFiles | InvalidModel = open_model(source, scratch)
        except InvalidModel as exc:
            opened = exc
            assert list(scratch.iterdir()) == []  # the partial directory is gone
        outside = {p for p in snapshot(root) - before if not p.startswith("scratch")}
        assert outside == set()  # nothing written next to the store or the scratch dir
        if isinstance(opened, ModelFiles):
            assert opened.directory.parent == scratch
            for path in opened.directory.rglob("*"):
                assert not path.is_symlink()
                assert path.resolve().is_relative_to(scratch.resolve())
        return opened


VALID = {".mar": zip_bytes(), ".tar.gz": tar_bytes()}


def test_the_valid_archives_open():
    for suffix, data in VALID.items():
        opened = load(data, suffix)
        assert isinstance(opened, ModelFiles), opened
        assert opened.handler() == "h"


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, str]:
    suffix = draw(st.sampled_from(sorted(VALID)))
    data = bytearray(VALID[suffix])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data), suffix


@FUZZ
@given(case=mutated())
def test_mutated_archives_open_or_are_refused_cleanly(case):
    data, suffix = case
    load(data, suffix)


@FUZZ
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".mar", ".zip", ".tgz", ".tar.gz"]))
def test_random_bytes_are_refused_cleanly(data, suffix):
    assert isinstance(load(data, suffix), InvalidModel) or data[:2] in (b"PK", b"\x1f\x8b")


SEGMENTS = st.sampled_from(["..", ".", "", "a", "b.py", "MAR-INF", "..\\..", "\x00", "é", "~"])
NAMES = st.one_of(
    st.lists(SEGMENTS, min_size=1, max_size=5).map("/".join),
    st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    st.text(min_size=1, max_size=30),
)
TAR_KINDS = st.sampled_from(
    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
)


@st.composite
def tar_members(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name in draw(st.lists(NAMES, min_size=1, max_size=6)):
            info = tarfile.TarInfo(name.replace("\x00", ""))
            info.type = draw(TAR_KINDS)
            info.linkname = draw(st.sampled_from(["../../etc/passwd", "/etc/passwd", "a", "."]))
            info.mode = draw(st.sampled_from([0o644, 0o4755, 0o777]))
            data = b"x" * draw(st.integers(0, 100)) if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@st.composite
def zip_members(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the attack
        for name in draw(st.lists(NAMES, min_size=1, max_size=6)):
            info = zipfile.ZipInfo(name)
            link = draw(st.booleans())
            info.external_attr = ((0o120777 if link else 0o100644) & 0xFFFF) << 16
            zf.writestr(info, b"/etc/passwd" if link else draw(st.binary(max_size=100)))
    return buffer.getvalue()


@FUZZ
@given(data=tar_members())
def test_generated_tar_members_never_escape(data):
    load(data, ".tar.gz")


@FUZZ
@given(data=zip_members())
def test_generated_zip_members_never_escape(data):
    load(data, ".mar")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil.py", tarfile.REGTYPE),
        ("/etc/evil.py", tarfile.REGTYPE),
        ("a/../../evil.py", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
        ("hard", tarfile.LNKTYPE),
        ("fifo", tarfile.FIFOTYPE),
        ("dev", tarfile.CHRTYPE),
    ],
)
def test_each_unsafe_tar_member_is_refused(name, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/passwd"
        tf.addfile(info, io.BytesIO(b""))
    assert isinstance(load(buffer.getvalue(), ".tar.gz"), InvalidModel)


def test_a_zip_bomb_is_refused_before_anything_is_written(monkeypatch):
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 10 << 20)
    bomb = zip_bytes({**FILES, "zeros.bin": bytes(64 << 20)})  # 64 MiB of zeros, ~64 KiB packed
    assert len(bomb) < 1 << 20
    refused = load(bomb, ".mar")
    assert isinstance(refused, InvalidModel)
    assert "too large" in refused.message


def test_a_zip_that_lies_about_its_sizes_writes_no_more_than_it_declares():
    data = bytearray(zip_bytes({"MAR-INF/MANIFEST.json": MANIFEST.encode(), "z": bytes(8 << 20)}))
    # declare 100 bytes for "z" in its local header and in the central directory
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + 1] == b"z":
                data[start + size_at : start + size_at + 4] = struct.pack("<I", 100)
            start += 4
    refused = load(bytes(data), ".mar")
    assert isinstance(refused, InvalidModel)  # the CRC no longer matches: refused


def test_too_many_entries_are_refused(monkeypatch):
    monkeypatch.setattr(archive, "MAX_ENTRIES", 50)
    many = zip_bytes({f"f{i}": b"" for i in range(51)})
    refused = load(many, ".zip")
    assert isinstance(refused, InvalidModel)


def test_an_archive_is_told_apart_by_content_not_by_name():
    opened = load(VALID[".tar.gz"], ".mar")  # a tar named .mar still opens as a tar
    assert isinstance(opened, ModelFiles)
    assert os.path.basename(opened.directory).startswith("model-")
