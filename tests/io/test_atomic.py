"""Atomic replacement (ldseg_rt.io.atomic): the target always holds the old or the whole new
file or folder, a failed write leaves nothing behind, and the leftovers of a writer that died
are repaired by the next write to the same path."""
import os
import subprocess
import sys
import textwrap

import pytest

from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.io import atomic
from ldseg_rt.io.atomic import check_writable, replacing


def make_folder(path, text):
    path.mkdir()
    (path / "content.txt").write_text(text)
    return path


def content(path):
    return (path / "content.txt").read_text()


def siblings(path):
    """Everything beside `path` but `path` itself: the temporary names a write may leave."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_folder(path, text):
    with replacing(path) as tmp:
        make_folder(tmp, text)


def test_folder_is_swapped_in_and_the_target_is_present_throughout(tmp_path, monkeypatch):
    target = make_folder(tmp_path / "b.ldseg", "old")
    exchanges, replaced = [], []
    real_exchange, real_replace = atomic._exchange, os.replace

    def watched_exchange(a, b):
        assert content(b) == "old"
        swapped = real_exchange(a, b)
        exchanges.append(swapped)
        assert content(b) == ("new" if swapped else "old")  # never missing
        return swapped

    def watched_replace(src, dst):
        replaced.append(str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic, "_exchange", watched_exchange)
    monkeypatch.setattr(os, "replace", watched_replace)
    write_folder(target, "new")
    if exchanges != [True]:
        pytest.skip("this file system cannot exchange two paths")
    assert str(target) not in replaced  # the target was never moved away
    assert content(target) == "new"
    assert siblings(target) == []


def test_folder_is_replaced_where_exchange_is_unsupported(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = make_folder(tmp_path / "b.ldseg", "old")
    write_folder(target, "new")
    assert content(target) == "new"
    assert siblings(target) == []


def test_fallback_puts_the_old_folder_back_when_the_new_cannot_be_renamed_in(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = make_folder(tmp_path / "b.ldseg", "old")
    real_replace = os.replace

    def failing_second_rename(src, dst):
        if str(dst) == str(target) and ".tmp" in str(src):
            raise OSError("disk gone")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="disk gone"):
        write_folder(target, "new")
    assert content(target) == "old"
    assert siblings(target) == []


def test_a_failed_block_leaves_the_old_target_and_no_temporary(tmp_path):
    target = make_folder(tmp_path / "b.ldseg", "old")
    with pytest.raises(RuntimeError, match="export failed"):
        with replacing(target) as tmp:
            make_folder(tmp, "half")
            raise RuntimeError("export failed")
    assert content(target) == "old"
    assert siblings(target) == []


def test_an_existing_folder_is_kept_without_overwrite(tmp_path):
    target = make_folder(tmp_path / "b.ldseg", "old")
    with pytest.raises(FileExistsError):
        with replacing(target, overwrite=False) as tmp:
            make_folder(tmp, "new")
    assert content(target) == "old"
    assert siblings(target) == []


def test_next_write_repairs_what_a_dead_writer_left(tmp_path):
    target = tmp_path / "b.ldseg"
    dead, live = dead_pid(), os.getpid()
    make_folder(tmp_path / f".b.ldseg.{dead}.{'a' * 32}.old", "old")  # died with the old folder aside
    make_folder(tmp_path / f".b.ldseg.{dead}.{'b' * 32}.tmp", "half")
    live_tmp = make_folder(tmp_path / f".b.ldseg.{live}.{'c' * 32}.tmp", "in progress")
    with replacing(target) as tmp:
        assert content(target) == "old"  # restored before the new write proceeds
        assert siblings(target) == [live_tmp.name]
        make_folder(tmp, "new")
    assert content(target) == "new"
    assert siblings(target) == [live_tmp.name]  # a live writer's temporary is left alone


def test_an_old_folder_left_beside_a_new_target_is_removed(tmp_path):
    # The writer died after renaming the new folder in, before removing the old one.
    target = make_folder(tmp_path / "b.ldseg", "new")
    make_folder(tmp_path / f".b.ldseg.{dead_pid()}.{'a' * 32}.old", "old")
    with replacing(tmp_path / "other.txt") as tmp:  # another path's write touches nothing here
        tmp.write_text("x")
    assert len(siblings(target)) == 2
    with replacing(target) as tmp:
        assert content(target) == "new"
        make_folder(tmp, "newer")
    assert content(target) == "newer"
    assert siblings(target) == ["other.txt"]


def test_a_writer_killed_in_the_block_leaves_the_old_folder_and_a_leftover_the_next_write_removes(tmp_path):
    target = make_folder(tmp_path / "b.ldseg", "old")
    script = textwrap.dedent("""
        import os, signal, sys
        from ldseg_rt.io.atomic import replacing
        with replacing(sys.argv[1]) as tmp:
            tmp.mkdir()
            (tmp / "content.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert content(target) == "old"
    leftovers = siblings(target)
    assert len(leftovers) == 1 and leftovers[0].startswith(".b.ldseg.") and leftovers[0].endswith(".tmp")
    write_folder(target, "new")
    assert content(target) == "new"
    assert siblings(target) == []


def test_a_file_is_replaced(tmp_path):
    target = tmp_path / "m.pt"
    target.write_text("old")
    with replacing(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert siblings(target) == []


def test_check_writable_refuses_unwritable_outputs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="is not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a folder; give a file name"):
        check_writable(tmp_path / "folder")
    assert check_writable(tmp_path / "new" / "deeper" / "out.pt") == tmp_path / "new" / "deeper" / "out.pt"
    assert not (tmp_path / "new").exists()  # checking creates nothing
