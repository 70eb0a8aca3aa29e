"""Where a Ray batch's results go: OUT/<case>/ in a folder every node sees (a shared file
system), or under a URI that pyarrow's file systems write (Ray's file-system layer: s3://,
gs://, abfs://, hdfs://, file://).

A folder is written as `segment` writes it (ldseg_rt.io.results: the case's folder renamed into
place whole). An object store has no folder rename, so there a case is written to a local
temporary folder the same way, then its files are uploaded with result.json last, after the
old result.json is deleted: the `--continue` rule (a case is finished when its result.json is
there) means the same on both, and a retry or a rerun replaces a case's files, never adds a
second copy of them.
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidArgumentError
from ..io.atomic import check_writable, replacing
from ..workflow import finished, read_record
from ..io.results import SIDECAR


def is_uri(out) -> bool:
    return "://" in str(out)


def open_output(out):
    """The output location `out` names: a LocalOutput for a path, a UriOutput for a URI."""
    return UriOutput(str(out)) if is_uri(out) else LocalOutput(out)


class LocalOutput:
    """OUT as a folder (on a file system every node of the cluster mounts at the same path)."""

    def __init__(self, root):
        self.root = check_writable(Path(os.path.abspath(root)), folder=True)  # the same path on every node
        self.root.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        return str(self.root)

    def location(self, name: str) -> str:
        return str(self.root / name)

    def finished(self, names) -> set[str]:
        """Which of the named cases are finished (the `--continue` rule)."""
        return {name for name in names if finished(self.root / name)}

    def record(self, name: str) -> dict:
        return read_record(self.root / name)

    @contextmanager
    def case_folder(self, name: str):
        """The folder the per-case function writes to (atomically, itself)."""
        yield self.root / name

    def write_text(self, filename: str, text: str) -> str:
        path = self.root / filename
        with replacing(path) as tmp:
            tmp.write_text(text)
        return str(path)


class UriOutput:
    """OUT as a URI of a pyarrow file system (the credentials are the file system's own: the
    environment of every node, as for any Ray Data writer)."""

    def __init__(self, uri: str):
        from pyarrow import fs
        try:
            self.fs, self.path = fs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:
            raise InvalidArgumentError(f"output {uri!r} is not a URI a pyarrow file system writes: {e}") from e
        self.uri = uri.rstrip("/")
        self.path = self.path.rstrip("/")
        self.fs.create_dir(self.path, recursive=True)

    def __str__(self) -> str:
        return self.uri

    def __getstate__(self):  # a file system object need not pickle; the URI is enough
        return {"uri": self.uri}

    def __setstate__(self, state):
        self.__init__(state["uri"])

    def location(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _file(self, name: str, filename: str) -> str:
        return posixpath.join(self.path, name, filename)

    def finished(self, names) -> set[str]:
        from pyarrow.fs import FileType
        names = list(names)
        if not names:
            return set()
        infos = self.fs.get_file_info([self._file(name, SIDECAR) for name in names])
        return {name for name, info in zip(names, infos) if info.type == FileType.File}

    def record(self, name: str) -> dict:
        try:
            with self.fs.open_input_stream(self._file(name, SIDECAR), compression=None) as f:
                return json.loads(f.read().decode())
        except (OSError, ValueError):
            return {}

    @contextmanager
    def case_folder(self, name: str):
        """A local temporary folder for the per-case function; what it holds once the case is
        complete is uploaded, result.json last."""
        with tempfile.TemporaryDirectory(prefix="ldseg_rt-case-") as tmp:
            local = Path(tmp) / name
            yield local
            if finished(local):
                self._upload(local, name)

    def _upload(self, local: Path, name: str) -> None:
        from pyarrow.fs import FileSelector, FileType
        folder = posixpath.join(self.path, name)
        sidecar = self._file(name, SIDECAR)
        if self.fs.get_file_info(sidecar).type == FileType.File:
            self.fs.delete_file(sidecar)  # unfinished from here until the new one is in place
        old = {info.base_name for info in self.fs.get_file_info(FileSelector(folder, allow_not_found=True))
               if info.type == FileType.File}
        self.fs.create_dir(folder, recursive=True)
        new = sorted(p.name for p in local.iterdir() if p.name != SIDECAR)
        for filename in new:
            with self.fs.open_output_stream(self._file(name, filename), compression=None) as f:
                f.write((local / filename).read_bytes())
        for stale in old - set(new) - {SIDECAR}:  # an earlier run's file this run does not write
            self.fs.delete_file(self._file(name, stale))
        with self.fs.open_output_stream(sidecar, compression=None) as f:
            f.write((local / SIDECAR).read_bytes())

    def write_text(self, filename: str, text: str) -> str:
        with self.fs.open_output_stream(posixpath.join(self.path, filename), compression=None) as f:
            f.write(text.encode())
        return f"{self.uri}/{filename}"
