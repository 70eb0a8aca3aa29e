"""The DICOM node's durable spool: the one truth about every series received, so that nothing
acknowledged is lost and nothing is processed or sent twice across crashes and restarts.

Layout (SPOOL = the folder given; one node per spool). A JOB is one segmentation of a series:
its SeriesInstanceUID for the first, UID+2, UID+3, ... for instances that arrived after the
series had been segmented (a job's results replace nothing: they are a new series).

    SPOOL/incoming/<JOB>/<SOPInstanceUID>.dcm    images received, as sent
    SPOOL/aside/<JOB>/<SOPInstanceUID>.dcm       objects of the series that are not images (SR, ...)
    SPOOL/state/<JOB>.json                       how its associations ended: {"broken": reason or null}
    SPOOL/results/<JOB>/                         the case folder (write_case: whole or absent)
    SPOOL/sent/<JOB>/<file name>                 marker: that object reached the destination;
                                                 holds its SOP Instance UID
    SPOOL/done/<key>.json                        done record; key = sha256(JOB + model sha256)
    SPOOL/failed/<JOB>/                          instances of a job that could not be read or completed
    SPOOL/undelivered/<JOB>/                     results the destination never took, with reason.txt
    SPOOL/received/<JOB>/                        a done job's instances, with --keep-received

Every file is written to a hidden temporary name, flushed and fsynced, renamed into place and
its folder fsynced, so after a crash a name holds either nothing or the whole file. What is on
disk after each step, and what the node does with it on restart:

1. an instance acknowledged: it is in incoming/ (or aside/), written before the 0x0000 status
   went out; each association's end is recorded in state/; restart: a job whose associations
   all ended in a normal release is segmented once quiet (same seed, same result), one without
   that record waits for a resend like an aborted one;
2. results written: results/<job>/ complete (result.json is written last, the folder renamed
   in whole); restart: delivered, nothing recomputed;
3. each object sent: its marker in sent/; restart: only the objects without one are sent;
4. done (delivered, or given up and moved to undelivered/): the done record in done/; restart:
   leftovers of the job removed, nothing sent;
5. the job's incoming/, aside/, results/, sent/ and state/ entries removed (its instances moved
   to failed/ when it failed, to received/ when they are kept).

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
_FOLDERS = ("incoming", "aside", "state", "results", "sent", "done", "failed", "undelivered", "received")
JOB_SEPARATOR = "+"  # not a UID character: UID+2 names the second job of series UID


def job_name(series_uid: str, generation: int) -> str:
    return series_uid if generation == 1 else f"{series_uid}{JOB_SEPARATOR}{generation}"


def series_of(job: str) -> str:
    return job.split(JOB_SEPARATOR, 1)[0]


def idempotency_key(job: str, model_sha256: str | None) -> str:
    """The key of a job's one result: the same job with the same model is done once."""
    return hashlib.sha256((job + (model_sha256 or "")).encode()).hexdigest()


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
    def instances(self, job: str) -> Path:
        return self.root / "incoming" / job

    def aside(self, job: str) -> Path:
        return self.root / "aside" / job

    def results(self, job: str) -> Path:
        return self.root / "results" / job

    def failed(self, job: str) -> Path:
        return self.root / "failed" / job

    def undelivered(self, job: str) -> Path:
        return self.root / "undelivered" / job

    def received(self, job: str) -> Path:
        return self.root / "received" / job

    def _sent_folder(self, job: str) -> Path:
        return self.root / "sent" / job

    def _state_path(self, job: str) -> Path:
        return self.root / "state" / f"{job}.json"

    def _done_path(self, key: str) -> Path:
        return self.root / "done" / f"{key}.json"

    # --- writing
    def store(self, job: str, sop_uid: str, data: bytes, aside: bool = False) -> Path:
        """An instance, durably (an object that is not an image `aside`); a resent instance
        replaces itself."""
        check_uid(series_of(job), "SeriesInstanceUID")
        check_uid(sop_uid, "SOPInstanceUID")
        return write_durably((self.aside(job) if aside else self.instances(job)) / f"{sop_uid}.dcm", data)

    def seed(self, job: str, earlier: list[str]) -> int:
        """Give a new job the images its series' earlier jobs still hold in the spool (in
        incoming/ or received/), linked, not copied; how many."""
        target = self.instances(job)
        linked = 0
        for folder in [self.instances(e) for e in earlier] + [self.received(e) for e in earlier]:
            for path in _visible(folder):
                if not (target / path.name).exists():
                    target.mkdir(parents=True, exist_ok=True)
                    os.link(path, target / path.name)
                    linked += 1
        if linked:
            _fsync_folder(target)
        return linked

    def write_state(self, job: str, broken: str | None) -> None:
        """How the associations that brought the job's instances ended (None: all released)."""
        write_durably(self._state_path(job), json.dumps({"broken": broken}).encode())

    def state(self, job: str) -> dict | None:
        path = self._state_path(job)
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_sent(self, job: str, name: str, sop_uid: str) -> None:
        """Record that results file `name` (its SOP Instance UID `sop_uid`) reached the destination."""
        write_durably(self._sent_folder(job) / name, sop_uid.encode())

    def keep_undelivered(self, job: str, reason: str) -> Path:
        """Move the job's results to undelivered/<job>/, with the reason beside them."""
        write_durably(self.results(job) / "reason.txt", (reason + "\n").encode())
        with replacing(self.undelivered(job)) as tmp:
            os.replace(self.results(job), tmp)
        return self.undelivered(job)

    def record_done(self, key: str, record: dict) -> None:
        write_durably(self._done_path(key), (json.dumps(record, indent=2) + "\n").encode())

    def clean(self, job: str, keep_in: Path | None = None) -> None:
        """Remove a finished job's instances (moved to the folder `keep_in`, failed/<job> or
        received/<job>, where given), results, markers and state. Safe to repeat: the done
        record says the job is finished."""
        instances = self.instances(job)
        if keep_in is not None and (instances.is_dir() or self.aside(job).is_dir()):
            with replacing(keep_in) as tmp:
                tmp.mkdir()
                for folder in (instances, self.aside(job)):
                    for path in _visible(folder):
                        os.replace(path, tmp / path.name)
        for folder in (instances, self.aside(job), self.results(job), self._sent_folder(job)):
            shutil.rmtree(folder, ignore_errors=True)
        self._state_path(job).unlink(missing_ok=True)

    def discard_results(self, job: str) -> None:
        """Remove results (and their markers) that are not this model's, to compute them anew."""
        for folder in (self.results(job), self._sent_folder(job)):
            shutil.rmtree(folder, ignore_errors=True)

    def recover_temporaries(self) -> None:
        """Remove the hidden temporaries a crashed writer left (no writer runs at start)."""
        for folder in (self.root / name for name in _FOLDERS):
            for path in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
                for leftover in path.glob(".*"):
                    if leftover.is_dir():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)

    # --- reading
    def jobs(self) -> list[str]:
        """Every job with something in incoming/, aside/, state/, results/ or sent/."""
        names = {p.name for name in ("incoming", "aside", "results", "sent") for p in _visible(self.root / name)}
        return sorted(names | {p.stem for p in _visible(self.root / "state")})

    def kept_jobs(self, series_uid: str) -> list[str]:
        """The jobs of a series whose instances received/ keeps."""
        return [p.name for p in _visible(self.root / "received") if series_of(p.name) == series_uid]

    def instance_count(self, job: str) -> int:
        return len(_visible(self.instances(job)))

    def aside_count(self, job: str) -> int:
        return len(_visible(self.aside(job)))

    def results_complete(self, job: str) -> bool:
        return is_complete(self.results(job))

    def sidecar(self, job: str) -> dict:
        """The results' result.json."""
        return json.loads((self.results(job) / "result.json").read_text())

    def sent(self, job: str) -> dict[str, str]:
        """{file name: SOP Instance UID} of the results objects already sent."""
        return {p.name: p.read_text() for p in _visible(self._sent_folder(job))}

    def done_records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in _visible(self.root / "done") if p.suffix == ".json"]

    def done(self, key: str) -> dict | None:
        """The done record, or None."""
        path = self._done_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
