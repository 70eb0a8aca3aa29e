"""Sending a series' results: by C-STORE to a destination AE, or by copying the case folder
into an output folder; and the delivery thread that retries, with backoff, until it succeeds.

Delivery runs on a thread of its own, never on the worker thread, so the model never waits on
the network. A failure (destination down, association refused, an object refused) is an
OSError (ConnectionError for the network); the series stays in the spool and is tried again
after `retry` seconds, doubling up to MAX_BACKOFF times that.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import ParametricMapStorage, SegmentationStorage

from ..errors import InvalidArgumentError
from ..io.atomic import replacing

log = logging.getLogger(__name__)

SENT_OBJECTS = ("segmentation.dcm", "uncertainty.dcm")  # what a destination AE gets of a case folder
MAX_BACKOFF = 32  # the longest wait between attempts, in multiples of `retry`
NETWORK_TIMEOUT = 30.0  # seconds for the destination to answer (association, each C-STORE)


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


def send_objects(destination: Destination, calling_ae: str, files: dict[str, Path], on_sent) -> None:
    """C-STORE `files` ({name: path}) to `destination` over one association, calling
    on_sent(name, SOP Instance UID) right after each one the destination accepted with
    0x0000. ConnectionError when the destination cannot be reached or refuses one."""
    ae = AE(ae_title=calling_ae)
    for sop_class in (SegmentationStorage, ParametricMapStorage):
        ae.add_requested_context(sop_class)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"{destination}: association {'rejected' if assoc.is_rejected else 'failed'}")
    try:
        for name, path in files.items():
            ds = pydicom.dcmread(path)
            try:
                status = assoc.send_c_store(ds)
            except ValueError as e:  # no accepted presentation context for the object's SOP class
                raise ConnectionError(f"{destination} cannot store {name}: {e}") from e
            code = status.get("Status") if status else None
            if code != 0x0000:
                answer = "no answer" if code is None else f"status 0x{code:04X}"
                raise ConnectionError(f"{destination} did not store {name}: {answer}")
            on_sent(name, str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()


def copy_case(folder: Path, output_dir: Path, name: str) -> dict[str, str]:
    """Copy the case folder to output_dir/name, replacing it whole; {file name: SOP Instance
    UID} of the DICOM objects copied."""
    with replacing(Path(output_dir) / name) as tmp:
        shutil.copytree(folder, tmp)
    return {p.name: str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for p in sorted(Path(folder).glob("*.dcm"))}


class DeliveryThread:
    """Runs attempt(key) for each scheduled key on one thread; a key whose attempt raises is
    tried again after `retry` seconds, doubling up to MAX_BACKOFF * retry."""

    def __init__(self, attempt, retry: float):
        self._attempt, self._retry = attempt, retry
        self._due: dict[str, float] = {}  # key -> monotonic time of its next attempt
        self._failures: dict[str, int] = {}
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
        """One last attempt for every key still waiting, whatever its time, then stop.
        Whether that finished within `timeout` seconds."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing:
                    now = time.monotonic()
                    ready = [key for key, due in self._due.items() if due <= now]
                    if ready:
                        break
                    self._wake.wait(min(self._due.values()) - now if self._due else None)
                closing = self._closing
                if closing:
                    ready = list(self._due)
                for key in ready:
                    del self._due[key]
            for key in ready:
                self._try(key, closing)
            if closing:
                return

    def _try(self, key: str, closing: bool) -> None:
        try:
            self._attempt(key)
        except Exception as e:  # a failed attempt must not end the thread; the key stays to retry
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = self._retry * min(2 ** (failures - 1), MAX_BACKOFF)
            later = "left in the spool" if closing else f"retry in {delay:g} s"
            log.warning("%s: delivery failed (attempt %d): %s; %s", key, failures, e, later,
                        exc_info=not isinstance(e, OSError))
            if not closing:
                with self._wake:
                    self._due[key] = time.monotonic() + delay
            return
        self._failures.pop(key, None)
