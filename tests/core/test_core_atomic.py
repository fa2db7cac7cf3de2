"""Atomic writes leave the old file or the new one, never a partial one."""

from __future__ import annotations

import pytest

from cfhdask.io.atomic import atomic_write


def test_atomic_write_replaces_whole(tmp_path):
    target = tmp_path / "sub" / "out.tsv"
    atomic_write(target, lambda tmp: open(tmp, "w").write("a\t1\n"))
    assert target.read_text() == "a\t1\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.tsv"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.tsv"
    target.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]
