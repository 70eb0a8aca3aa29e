"""Sending a series' results: by C-STORE to a destination AE, or by copying the case folder
into an output folder; and the delivery thread that retries, with backoff, until it succeeds
or gives up.

Delivery runs on a thread of its own, never on the worker thread, so the model never waits on
the network. What fails for a while (destination down or busy, association rejected, out of
resources, no answer) is a ConnectionError: the series stays in the spool and is tried again
later. What the destination will never take (a SOP class it does not support, an object it
refuses for good) is not retried: send_objects reports it as refused and sends the rest.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from ..errors import InvalidArgumentError
from ..io.atomic import replacing

log = logging.getLogger(__name__)

SENT_OBJECTS = ("segmentation.dcm", "probabilities.dcm", "uncertainty.dcm")  # what a destination AE gets of a case
MAX_SEND_BACKOFF = 900.0  # the longest wait between attempts, in seconds
NETWORK_TIMEOUT = 30.0  # seconds for the destination to answer (connection, association, each C-STORE)

SUCCESS = 0x0000
# Stored, with a warning (PS3.4 B.2.3, PS3.7 C): as good as stored for us.
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007, 0x0107, 0x0116})


def _is_transient(status: int) -> bool:
    """Out of resources (0xA7xx) or a resource limitation: the destination may take it later."""
    return 0xA700 <= status <= 0xA7FF or status == 0x0213


@dataclass(frozen=True)
class Destination:
    """A DICOM AE to send results to."""
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """From "AE@HOST:PORT", e.g. "PACS@10.0.0.5:104" (an IPv6 host in brackets)."""
        match = re.fullmatch(r"([^@\s\\]{1,16})@\[?([^\s\[\]]+?)\]?:(\d{1,5})", text.strip())
        if not match or not 0 < int(match[3]) < 65536:
            raise InvalidArgumentError(f"destination {text!r} is not of the form AE@HOST:PORT (an AE title of at "
                                       f"most 16 characters, a port from 1 to 65535), e.g. PACS@10.0.0.5:104")
        return cls(match[1], match[2], int(match[3]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class DeliveryReport:
    """What one send_objects call did: sent {name: SOP Instance UID} (stored, possibly with a
    warning) and refused {name: reason} (never to be stored there: not worth retrying)."""
    sent: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Object:
    """A file to send, with what its presentation context needs, read before associating."""
    name: str
    path: Path
    sop_class: UID
    sop_instance: str
    transfer_syntax: UID


def _read_object(name: str, path: Path) -> _Object:
    """The file's identity from its header only (the pixel data is read when it is sent)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return _Object(name, Path(path), UID(ds.SOPClassUID), str(ds.SOPInstanceUID),
                   UID(ds.file_meta.TransferSyntaxUID))


def _contexts(objects: list[_Object]) -> dict[UID, list[UID]]:
    """One presentation context per SOP class: the files' own transfer syntaxes, so nothing
    needs converting, then the uncompressed ones every SCP must accept."""
    contexts: dict[UID, list[UID]] = {}
    for obj in objects:
        syntaxes = contexts.setdefault(obj.sop_class, [])
        for syntax in (obj.transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return contexts


def _associate(destination: Destination, calling_ae: str, contexts: dict[UID, list[UID]], timeout: float):
    """A fresh AE per association: nothing is shared with another send, on any thread."""
    ae = AE(ae_title=calling_ae)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title)


def _all_contexts_rejected(assoc) -> bool:
    """pynetdicom aborts an association whose every context was rejected, yet the destination
    did accept the association: it takes none of these SOP classes, which is no network failure."""
    answer = assoc.acceptor.primitive
    return (assoc.is_aborted and answer is not None and answer.result == 0x00
            and bool(assoc.rejected_contexts) and not assoc.accepted_contexts)


def _association_error(destination: Destination, assoc) -> ConnectionError:
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        return ConnectionError(f"{destination}: association rejected ({answer.result_str}, "
                               f"{answer.source_str}: {answer.reason_str})")
    return ConnectionError(f"{destination}: association failed (no connection or no answer)")


def _status_reason(status) -> str:
    """E.g. "status 0xA900: Data Set Does Not Match SOP Class (the SCP's error comment)"."""
    code = int(status.Status)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    comment = status.get("ErrorComment")
    return f"status 0x{code:04X}: {meaning}" + (f" ({comment})" if comment else "")


def _store(assoc, destination: Destination, obj: _Object, msg_id: int) -> str | None:
    """C-STORE one object: None when stored (with or without a warning), the reason when the
    destination refused it for good; ConnectionError when it may take it later."""
    if not assoc.is_established:
        raise ConnectionError(f"{destination}: association lost before sending {obj.name}")
    try:
        status = assoc.send_c_store(obj.path, msg_id=msg_id)
    except ValueError as e:  # no accepted context fits the file's transfer syntax, or it cannot be encoded
        return f"cannot be sent as {obj.sop_class.name} in {obj.transfer_syntax.name}: {e}"
    if "Status" not in status:  # timed out, aborted or an invalid answer
        raise ConnectionError(f"{destination}: no answer to the C-STORE of {obj.name}")
    code = int(status.Status)
    if code == SUCCESS:
        return None
    if code in WARNING_STATUSES:
        log.info("%s stored %s with a warning: %s", destination, obj.name, _status_reason(status))
        return None
    if _is_transient(code):
        raise ConnectionError(f"{destination} did not store {obj.name} for now: {_status_reason(status)}")
    return _status_reason(status)


def send_objects(destination: Destination, calling_ae: str, files: dict[str, Path],
                 on_sent: Callable[[str, str], None], timeout: float = NETWORK_TIMEOUT) -> DeliveryReport:
    """C-STORE `files` ({name: path}) to `destination` over one association, in order, calling
    on_sent(name, SOP Instance UID) right after each one stored (so a later failure does not
    send it again). Objects the destination will never store (SOP class not accepted, a
    failure status other than out of resources) are reported refused and the rest still sent.
    ConnectionError when it may store them later: unreachable, association rejected, out of
    resources, no answer. `timeout`: seconds for each answer."""
    objects = [_read_object(name, path) for name, path in files.items()]
    if not objects:
        return DeliveryReport()
    assoc = _associate(destination, calling_ae, _contexts(objects), timeout)
    if not assoc.is_established and not _all_contexts_rejected(assoc):
        raise _association_error(destination, assoc)
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    sent, refused = {}, {}
    try:
        for msg_id, obj in enumerate(objects, start=1):
            reason = (f"destination does not accept {obj.sop_class.name}" if obj.sop_class not in accepted
                      else _store(assoc, destination, obj, msg_id))
            if reason is None:
                on_sent(obj.name, obj.sop_instance)
                sent[obj.name] = obj.sop_instance
            else:
                log.warning("%s refused %s (%s): %s", destination, obj.name, obj.sop_instance, reason)
                refused[obj.name] = reason
    except BaseException:
        if assoc.is_established:
            assoc.abort()  # not release: a destination that stopped answering would keep us waiting
        raise
    if assoc.is_established:
        assoc.release()
    return DeliveryReport(sent, refused)


def copy_case(folder: Path, output_dir: Path, name: str) -> dict[str, str]:
    """Copy the case folder to output_dir/name, replacing it whole; {file name: SOP Instance
    UID} of the DICOM objects copied."""
    with replacing(Path(output_dir) / name) as tmp:
        shutil.copytree(folder, tmp)
    return {p.name: str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for p in sorted(Path(folder).glob("*.dcm"))}


class DeliveryThread:
    """Runs attempt(key) for each scheduled key on one thread, so the callers never wait on the
    network. A key whose attempt raises is tried again after `backoff` seconds, doubling up to
    `max_backoff`; after `retries` failed retries it is handed to on_give_up(key, reason) and
    forgotten, so that a destination gone for good does not hold a series for ever."""

    def __init__(self, attempt: Callable[[str], None], *, retries: int, backoff: float,
                 max_backoff: float = MAX_SEND_BACKOFF, on_give_up: Callable[[str, str], None]):
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise InvalidArgumentError(f"retries ({retries}), backoff ({backoff:g} s) and max_backoff "
                                       f"({max_backoff:g} s) must not be negative")
        self._attempt, self._on_give_up = attempt, on_give_up
        self._retries, self._backoff, self._max_backoff = retries, backoff, max_backoff
        self._due: dict[str, float] = {}  # key -> monotonic time of its next attempt
        self._failures: dict[str, int] = {}  # key -> failed attempts so far
        self._closing = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ldseg-delivery", daemon=True)
        self._thread.start()

    def schedule(self, key: str) -> None:
        """Attempt `key` as soon as possible."""
        with self._wake:
            self._due[key] = time.monotonic()
            self._wake.notify()

    def close(self, timeout: float | None = None) -> bool:
        """One last attempt for every key still waiting, whatever its time, then stop; a key
        that fails then is not given up (it is still there for the next start). Whether that
        finished within `timeout` seconds."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _delay(self, failures: int) -> float:
        """Seconds before the next attempt after `failures` failed ones."""
        return min(self._backoff * 2 ** (failures - 1), self._max_backoff)

    def _run(self) -> None:
        while True:
            ready, closing = self._next_ready()
            for key in ready:
                self._try(key, closing)
            if closing:
                return

    def _next_ready(self) -> tuple[list[str], bool]:
        """Wait for keys that are due (all of them on close), take them off the schedule."""
        with self._wake:
            while not self._closing:
                now = time.monotonic()
                ready = [key for key, due in self._due.items() if due <= now]
                if ready:
                    break
                self._wake.wait(min(self._due.values()) - now if self._due else None)
            if self._closing:
                ready = list(self._due)
            for key in ready:
                del self._due[key]
            return ready, self._closing

    def _try(self, key: str, closing: bool) -> None:
        try:
            self._attempt(key)
        except Exception as e:  # a failed attempt must not end the thread
            self._failed(key, e, closing)
            return
        self._failures.pop(key, None)

    def _failed(self, key: str, error: Exception, closing: bool) -> None:
        """Retry later, or give up once the retries are spent (never on close: the next start
        tries again)."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        text = str(error) or type(error).__name__
        unexpected = not isinstance(error, OSError)  # a bug rather than the network: show where
        if closing:
            log.warning("%s: delivery failed (attempt %d): %s; left for the next start", key, failures, text,
                        exc_info=unexpected)
        elif failures > self._retries:
            log.error("%s: delivery failed (attempt %d): %s; giving up", key, failures, text, exc_info=unexpected)
            self._give_up(key, f"{text} (after {failures} attempts)")
        else:
            delay = self._delay(failures)
            log.warning("%s: delivery failed (attempt %d): %s; retry in %g s", key, failures, text, delay,
                        exc_info=unexpected)
            with self._wake:
                self._due[key] = time.monotonic() + delay

    def _give_up(self, key: str, reason: str) -> None:
        self._failures.pop(key, None)
        try:
            self._on_give_up(key, reason)
        except Exception:  # the key is forgotten anyway: one bad give-up must not stop the others
            log.exception("%s: giving up the delivery failed", key)
