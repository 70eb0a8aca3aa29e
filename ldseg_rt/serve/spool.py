"""The DICOM node's durable spool: the one truth about every series received, so that nothing
acknowledged is lost and nothing is processed or sent twice across crashes and restarts.

Layout (SPOOL = the folder given; one node per spool):

    SPOOL/incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   instances received, as sent
    SPOOL/results/<SeriesInstanceUID>/                        the case folder (write_case: whole or absent)
    SPOOL/sent/<SeriesInstanceUID>/<file name>                marker: that object reached the destination;
                                                              holds its SOP Instance UID
    SPOOL/done/<key>.json                                     done record; key = sha256(series UID + model sha256)
    SPOOL/failed/<SeriesInstanceUID>/                         instances of a series that could not be read

Every file is written to a hidden temporary name, flushed and fsynced, renamed into place and
its folder fsynced, so after a crash a name holds either nothing or the whole file. What is on
disk after each step, and what the node does with it on restart:

1. an instance acknowledged: it is in incoming/ (written before the 0x0000 status went out);
   restart: a series with instances and no results is segmented again (same seed, same result);
2. results written: results/<uid>/ complete (result.json is written last, the folder renamed
   in whole); restart: delivered, nothing recomputed;
3. each object sent: its marker in sent/; restart: only the objects without one are sent;
4. delivered: the done record in done/; restart: leftovers of the series removed, nothing sent;
5. the series' incoming/, results/ and sent/ folders removed (failed ones moved to failed/).

One node at a time: `lock()` takes an exclusive lock on SPOOL/.lock (released by the kernel
when the process dies, so a kill -9 never leaves the spool locked).

Hidden temporaries left by a crash are never read as data (readers skip hidden names) and are
removed by `recover_temporaries`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from ..errors import InvalidArgumentError, InvalidImageError
from ..io.atomic import replacing
from ..io.results import is_complete

# UIDs are digits and dots; a little more is let through for non-conformant senders, but
# nothing that could name another folder ("..", "/").
_UID = re.compile(r"[0-9A-Za-z_\-][0-9A-Za-z._\-]{0,63}")
_FOLDERS = ("incoming", "results", "sent", "done", "failed")


def idempotency_key(series_uid: str, model_sha256: str | None) -> str:
    """The key of a series' one result: the same series with the same model is done once."""
    return hashlib.sha256((series_uid + (model_sha256 or "")).encode()).hexdigest()


def check_uid(uid: str, what: str) -> str:
    """`uid`, if it can name a spool file; InvalidImageError otherwise."""
    if not _UID.fullmatch(uid):
        raise InvalidImageError(f"{what} {uid!r} is not a valid DICOM UID")
    return uid


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that, once this returns, a crash leaves the whole file there;
    a crash before leaves the old file (or none) and perhaps a hidden temporary."""
    folder = path.parent
    created = not folder.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    if created:
        _fsync_folder(folder.parent)  # the new folder's own entry
    return path


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


class Spool:
    """The spool folder (see the module docstring for its layout)."""

    def __init__(self, root):
        self.root = Path(root)
        try:
            for name in _FOLDERS:
                (self.root / name).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidArgumentError(f"spool folder {str(self.root)!r} cannot be created: {e.strerror}") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise InvalidArgumentError(f"spool folder {str(self.root)!r} cannot be written: no permission")
        self._lock = None

    def lock(self) -> None:
        """Hold the spool for this process; InvalidArgumentError while another holds it (two
        nodes on one spool would process and clean up each other's series)."""
        lock = open(self.root / ".lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise InvalidArgumentError(f"spool folder {str(self.root)!r} is in use by another DICOM node") from None
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    # --- where things are
    def instances(self, series_uid: str) -> Path:
        return self.root / "incoming" / series_uid

    def results(self, series_uid: str) -> Path:
        return self.root / "results" / series_uid

    def failed(self, series_uid: str) -> Path:
        return self.root / "failed" / series_uid

    def _sent_folder(self, series_uid: str) -> Path:
        return self.root / "sent" / series_uid

    def _done_path(self, key: str) -> Path:
        return self.root / "done" / f"{key}.json"

    # --- writing
    def store(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """An instance, durably; a resent instance replaces itself."""
        check_uid(series_uid, "SeriesInstanceUID")
        check_uid(sop_uid, "SOPInstanceUID")
        return write_durably(self.instances(series_uid) / f"{sop_uid}.dcm", data)

    def mark_sent(self, series_uid: str, name: str, sop_uid: str) -> None:
        """Record that results file `name` (its SOP Instance UID `sop_uid`) reached the destination."""
        write_durably(self._sent_folder(series_uid) / name, sop_uid.encode())

    def record_done(self, key: str, record: dict) -> None:
        write_durably(self._done_path(key), (json.dumps(record, indent=2) + "\n").encode())

    def clean(self, series_uid: str, keep_instances: bool = False) -> None:
        """Remove a finished series' instances (moved to failed/ with keep_instances), results
        and markers. Safe to repeat: the done record says the series is finished."""
        instances = self.instances(series_uid)
        if keep_instances and instances.is_dir():
            with replacing(self.failed(series_uid)) as tmp:
                os.replace(instances, tmp)
        for folder in (instances, self.results(series_uid), self._sent_folder(series_uid)):
            shutil.rmtree(folder, ignore_errors=True)

    def discard_results(self, series_uid: str) -> None:
        """Remove results (and their markers) that are not this model's, to compute them anew."""
        for folder in (self.results(series_uid), self._sent_folder(series_uid)):
            shutil.rmtree(folder, ignore_errors=True)

    def recover_temporaries(self) -> None:
        """Remove the hidden temporaries a crashed writer left (no writer runs at start)."""
        for folder in (self.root / "incoming", self.root / "results", self.root / "sent", self.root / "done"):
            for path in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
                for leftover in path.glob(".*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)

    # --- reading
    def series(self) -> list[str]:
        """Every series with something in incoming/, results/ or sent/."""
        return sorted({p.name for name in ("incoming", "results", "sent") for p in _visible(self.root / name)})

    def instance_count(self, series_uid: str) -> int:
        return len(_visible(self.instances(series_uid)))

    def results_complete(self, series_uid: str) -> bool:
        return is_complete(self.results(series_uid))

    def sidecar(self, series_uid: str) -> dict:
        """The results' result.json."""
        return json.loads((self.results(series_uid) / "result.json").read_text())

    def sent(self, series_uid: str) -> dict[str, str]:
        """{file name: SOP Instance UID} of the results objects already sent."""
        return {p.name: p.read_text() for p in _visible(self._sent_folder(series_uid))}

    def done(self, key: str) -> dict | None:
        """The done record, or None."""
        path = self._done_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
