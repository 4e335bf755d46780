"""Atomic writes (``slimtorch.io.atomic``): a temporary file beside the target, then a rename.

A finished write publishes the whole content with the permissions an ordinary ``open(path, "w")`` would give;
a failed or interrupted write leaves the previous file (or nothing) and no temporary file behind; a reader
holding the old file keeps reading the old content.
"""

import os
import stat
from pathlib import Path

import pytest

from slimtorch.io import atomic


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_write_bytes_creates_parents_and_publishes_with_the_usual_mode(tmp_path):
    target = tmp_path / "a" / "b" / "model.bin"
    result = atomic.write_bytes(str(target), b"\x00\x01payload")
    assert result == target and isinstance(result, os.PathLike)
    assert target.read_bytes() == b"\x00\x01payload"
    assert mode(target) == atomic.file_mode() == 0o666 & ~current_umask()
    assert os.listdir(target.parent) == ["model.bin"]


def test_write_text_is_utf8(tmp_path):
    target = atomic.write_text(tmp_path / "report.md", "größe — 2× ✓\n")
    assert target.read_bytes() == "größe — 2× ✓\n".encode()


def test_a_rewrite_replaces_the_file_and_an_open_reader_keeps_the_old_content(tmp_path):
    target = atomic.write_bytes(tmp_path / "out.json", b"old")
    before = target.stat().st_ino
    with open(target, "rb") as reader:
        atomic.write_bytes(target, b"new content")
        assert reader.read() == b"old"  # the old file was replaced, never truncated in place
    assert target.read_bytes() == b"new content" and target.stat().st_ino != before
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        atomic.write_bytes(tmp_path / "out.bin", "not bytes")  # fails inside the write
    assert os.listdir(tmp_path) == []


def test_a_failed_rename_keeps_the_previous_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = atomic.write_bytes(tmp_path / "out.bin", b"previous")

    def fail(src, dst):
        assert Path(src).parent == tmp_path and Path(src).read_bytes() == b"next"
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(target, b"next")
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.bin"]


def test_an_interrupted_write_removes_the_temporary_too(tmp_path, monkeypatch):
    def interrupt(tmp, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "publish", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(tmp_path / "out.txt", "text")
    assert os.listdir(tmp_path) == []


def test_writing_over_a_directory_fails_cleanly(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        atomic.write_bytes(tmp_path / "out", b"x")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").is_dir()


def test_temporary_sibling_then_publish(tmp_path):
    target = tmp_path / "sub" / "model.safetensors"
    first, second = atomic.temporary_sibling(target), atomic.temporary_sibling(target)
    assert first != second and first.parent == second.parent == target.parent
    assert first.name.startswith(".model.safetensors.") and first.name.endswith(".tmp")
    assert first.is_file() and first.stat().st_size == 0 and mode(first) == 0o600  # private while written
    first.write_bytes(b"weights")
    assert atomic.publish(first, target) == target
    assert target.read_bytes() == b"weights" and mode(target) == atomic.file_mode() and not first.exists()
    second.unlink()
    assert os.listdir(target.parent) == ["model.safetensors"]


def test_publish_follows_the_umask_in_force_when_writing(tmp_path):
    old = os.umask(0o077)
    try:
        target = atomic.write_bytes(tmp_path / "secret.bin", b"x")
        plain = tmp_path / "plain.bin"
        with open(plain, "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert mode(plain) == 0o600
    assert mode(target) == mode(plain)
