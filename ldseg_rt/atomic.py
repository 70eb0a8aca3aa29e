"""Atomic writes: readers see the old file (or folder) or the whole new one, and a failed
write leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path, overwrite: bool = True):
    """Yields a fresh temporary path beside `path` to write a file or a folder to; when the
    block succeeds it takes `path`'s place, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{path} exists")
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
