"""Atomic writes: readers see the old file (or folder) or the whole new one, never neither,
and a failed write leaves nothing behind.

A file is replaced by rename. A folder cannot be renamed over a non-empty one, so on Linux
the new folder and the old are swapped in one step (renameat2 RENAME_EXCHANGE) and the old
one removed after; where the file system cannot swap, the old folder is moved aside first,
and should the process die in that instant, the next write to the same path puts it back.
Temporary names carry the writer's pid, so leftovers of a killed writer are recognised and
removed by the next write, while a live writer's are left alone.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidArgumentError

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _libc_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _libc_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temporary(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.{kind}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove the temporary siblings of `path` that writers no longer alive left behind; if
    one of them died with the old folder moved aside and no new one in place, restore it."""
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.*"):
        parts = leftover.name[len(prefix):].split(".")
        if len(parts) != 3 or parts[2] not in ("tmp", "old") or not parts[0].isdigit() or _alive(int(parts[0])):
            continue
        if parts[2] == "old" and not path.exists():
            os.replace(leftover, path)
            log.warning("restored %s, which an interrupted rewrite had moved aside", path)
        else:
            _remove(leftover)


def check_writable(path, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output path that could not be written: a folder
    in the way of a file (folder=False), a file in the way of a folder, or a parent that
    cannot be created or written to."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"output folder {str(path)!r} is a file")
    if folder and path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InvalidArgumentError(f"output folder {str(path)!r} cannot be written: no permission")
        return path
    if path.is_dir() and path.suffix not in (".ldseg",):
        raise InvalidArgumentError(f"output {str(path)!r} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidArgumentError(f"output {str(path)!r} cannot be written: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"output {str(path)!r} cannot be written: no permission to write in {str(parent)!r}")
    return path


@contextmanager
def replacing(path, overwrite: bool = True):
    """Yields a fresh temporary path beside `path` to write a file or a folder to; when the
    block succeeds it takes `path`'s place, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    tmp = _temporary(path, "tmp")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            if _exchange(tmp, path):
                _remove(tmp)  # now the old folder
                return
            old = _temporary(path, "old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the old folder back
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
