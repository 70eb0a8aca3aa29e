"""The DICOM node: a storage SCP that spools every instance it acknowledges, segments each
series once it is complete, and delivers the results to a destination AE or an output folder.

A series is received, then processed, then delivered:

- receiving: its first instance takes a place in the work queue (refused with 0xA700, out of
  resources, when the queue is full or the spool's disk is short); each instance is written
  durably to the spool before 0x0000 is answered. DIMSE has no "series complete": a series is
  complete when no instance of it arrived for `quiet` seconds and every association that sent
  one has been released or aborted.
- processing (the worker thread): the spooled series goes through the per-case workflow
  (ldseg_rt.workflow.run_case), with a seed derived from its SeriesInstanceUID unless one is
  configured (so a rerun after a crash gives the same result), its results written whole into
  the spool. A series the rule does not pick is "skipped", one that cannot
  be read or segmented is "failed" (its instances kept under the spool's failed/); both are
  done at once, never retried.
- delivering (the delivery thread): sent or copied, retried with backoff until it succeeds;
  then the done record is written and the series removed from the spool.

Instances of a series already done (a scanner resending), or arriving while it is processed or
delivered, are acknowledged and discarded, never stored: one result per series and model.
Crash safety rests on the spool (ldseg_rt.serve.spool): start() rebuilds this state from it.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pynetdicom import AE, StoragePresentationContexts, evt

from ..errors import InvalidArgumentError, ServiceBusyError
from ..io.atomic import check_writable
from ..io.cases import Case
from ..options import SegmentOptions
from ..seeds import name_seed
from ..workflow import run_case
from .delivery import SENT_OBJECTS, DeliveryThread, Destination, copy_case, send_objects
from .spool import Spool, check_uid, idempotency_key

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
DEFAULT_MIN_FREE_BYTES = 2 ** 30
DEFAULT_AE_TITLE = "LDSEG_RT"
DEFAULT_QUIET = 5.0  # seconds without instances after which a series whose associations ended is complete
RECEIVING, PROCESSING, DELIVERING = "receiving", "processing", "delivering"
_ENDINGS = {"EVT_RELEASED": "released", "EVT_ABORTED": "aborted", "EVT_CONN_CLOSE": "connection closed"}


@dataclass(eq=False)
class _Series:
    uid: str
    ticket: object | None  # its place in the work queue until submitted (None: admit when due)
    due: float  # monotonic time from which it is complete, unless an association sending it is open
    state: str = RECEIVING
    senders: set = field(default_factory=set)  # open associations that sent instances of it
    future: concurrent.futures.Future | None = None
    complete_at: float | None = None


@dataclass(eq=False)
class _Association:
    calling: str
    peer: str
    stored: int = 0
    busy: int = 0
    failed: int = 0
    series: set = field(default_factory=set)
    resent: dict = field(default_factory=dict)  # series uid -> instances acknowledged and discarded


class DicomNode:
    """A storage SCP in front of a Segmenter; start() listens, stop() stops (see the module
    docstring). destination ("AE@HOST:PORT" or a Destination) or output_dir, not both."""

    def __init__(self, segmenter, work, metrics, spool: Spool, *, ae_title: str = DEFAULT_AE_TITLE,
                 allowed_aes=("SCANNER",), destination=None, output_dir=None, options: SegmentOptions | None = None,
                 quiet: float = DEFAULT_QUIET, retry: float = 10.0, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        """allowed_aes: the calling AE titles accepted; options: how each series is segmented
        (its seed: the configured one, else derived from the SeriesInstanceUID; its select
        rule picks the series to segment, others are skipped; formats and samples are the
        node's own); quiet: seconds without an instance after which a series whose
        associations have ended is complete; retry: seconds before a failed delivery is tried
        again (doubling); min_free_bytes: free disk below which new series are refused."""
        if (destination is None) == (output_dir is None):
            raise InvalidArgumentError("give exactly one of destination (AE@HOST:PORT) and output_dir")
        if isinstance(allowed_aes, str) or not allowed_aes:
            raise InvalidArgumentError(f"allowed_aes must be a non-empty list of calling AE titles, "
                                       f"got {allowed_aes!r}")
        if quiet <= 0 or retry <= 0:
            raise InvalidArgumentError(f"quiet and retry must be positive seconds, got {quiet!r} and {retry!r}")
        self.segmenter, self.work, self.metrics, self.spool = segmenter, work, metrics, spool
        self.ae_title, self.allowed_aes = ae_title, list(allowed_aes)
        self.destination = Destination.parse(destination) if isinstance(destination, str) else destination
        self.output_dir = None if output_dir is None else check_writable(output_dir, folder=True)
        self.options = SegmentOptions.of(options, return_samples=False, progress=False,
                                         formats=("dicom-seg",) if self.destination else ("nifti", "dicom-seg"))
        self.quiet, self.retry, self.min_free_bytes = quiet, retry, min_free_bytes
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._associations: dict[object, _Association] = {}
        self._stopping = threading.Event()
        self._ae: AE | None = None
        self._watcher: threading.Thread | None = None
        self._delivery: DeliveryThread | None = None

    # --- life cycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Recover the spool, then listen; the port bound."""
        self.spool.lock()
        self._delivery = DeliveryThread(self._deliver, self.retry)
        self._recover()
        self._watcher = threading.Thread(target=self._watch, name="ldseg-dicom-watcher", daemon=True)
        self._watcher.start()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.require_calling_aet = self.allowed_aes
        ae.require_called_aet = True
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected)] + [(getattr(evt, e), self._on_end) for e in _ENDINGS]
        try:
            server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise InvalidArgumentError(f"cannot listen for DICOM on {host}:{port}: {e.strerror or e}") from e
        self._ae = ae
        port = server.server_address[1]
        log.info("DICOM: AE %s on %s:%d, accepting %s; results to %s", self.ae_title, host, port,
                 ", ".join(self.allowed_aes), self.destination or self.output_dir)
        return port

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening (open associations are aborted), finish the series already submitted,
        deliver what is ready (one attempt), leave the rest in the spool."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left():
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if self._ae is not None:
            self._ae.shutdown()
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(left())
        with self._lock:
            futures = [s.future for s in self._series.values() if s.future is not None]
            for s in self._series.values():
                if s.state == RECEIVING and s.ticket is not None:
                    s.ticket.release()  # it stays in the spool; the next start admits it again
                    s.ticket = None
        concurrent.futures.wait(futures, left())
        if self._delivery is not None:
            self._delivery.close(left())
        with self._lock:
            unfinished = len(self._series)
        self.spool.unlock()
        log.info("DICOM node %s stopped; %d series left in the spool", self.ae_title, unfinished)

    # --- receiving
    def _key(self, series_uid: str) -> str:
        return idempotency_key(series_uid, self.segmenter.model_sha256)

    def _on_accepted(self, event) -> None:
        requestor = event.assoc.requestor
        with self._lock:
            self._associations[event.assoc] = _Association(requestor.ae_title, f"{requestor.address}:{requestor.port}")

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        log.warning("association from AE %r at %s:%s (called %r): rejected, not an allowed caller of %s",
                    requestor.ae_title, requestor.address, requestor.port, event.assoc.acceptor.ae_title,
                    self.ae_title)

    def _on_store(self, event) -> int:
        with self._lock:
            sender = self._associations.setdefault(event.assoc, _Association("?", "?"))
        try:
            series_uid = check_uid(str(event.dataset.SeriesInstanceUID), "SeriesInstanceUID")
            sop_uid = check_uid(str(event.request.AffectedSOPInstanceUID), "SOPInstanceUID")
            data = event.encoded_dataset()
        except Exception as e:  # pydicom raises many kinds on a damaged dataset
            log.error("C-STORE from AE %r: unreadable dataset, refused: %s", sender.calling, e)
            sender.failed += 1
            return CANNOT_UNDERSTAND
        status, series = self._admit(series_uid, event.assoc, sender)
        if series is None:
            return status
        try:
            self.spool.store(series_uid, sop_uid, data)
        except OSError as e:
            log.error("series %s: instance %s from AE %r not stored (%s); refused", series_uid, sop_uid,
                      sender.calling, e)
            sender.failed += 1
            return OUT_OF_RESOURCES
        with self._lock:
            series.due = time.monotonic() + self.quiet
            sender.stored += 1
        self.metrics.instances.inc()
        return SUCCESS

    def _admit(self, series_uid: str, assoc, sender: _Association) -> tuple[int, _Series | None]:
        """(status, the series to store the instance in); no series: answer status at once."""
        with self._lock:
            series = self._series.get(series_uid)
            if series is None:
                if self.spool.done(self._key(series_uid)) is not None:
                    sender.resent[series_uid] = sender.resent.get(series_uid, 0) + 1
                    return SUCCESS, None
                try:
                    if self.spool.free_bytes() < self.min_free_bytes:
                        raise ServiceBusyError(f"less than {self.min_free_bytes} bytes free in {self.spool.root}")
                    ticket = self.work.admit()
                except (ServiceBusyError, OSError) as e:
                    log.warning("series %s from AE %r refused: %s", series_uid, sender.calling, e)
                    sender.busy += 1
                    self.metrics.request("dicom", "busy")
                    return OUT_OF_RESOURCES, None
                series = self._series[series_uid] = _Series(series_uid, ticket, time.monotonic() + self.quiet)
            elif series.state != RECEIVING:
                sender.resent[series_uid] = sender.resent.get(series_uid, 0) + 1  # too late to be part of it
                return SUCCESS, None
            series.senders.add(assoc)
            sender.series.add(series_uid)
            return SUCCESS, series

    def _on_end(self, event) -> None:
        with self._lock:
            sender = self._associations.pop(event.assoc, None)
            for uid in sender.series if sender else ():
                if uid in self._series:
                    self._series[uid].senders.discard(event.assoc)
        if sender is None:
            return  # already ended (released, then its connection closed) or never accepted
        for uid, count in sender.resent.items():
            self.metrics.series.labels("duplicate").inc()
            log.info("series %s: %d instance(s) resent after it was complete; acknowledged, not processed again",
                     uid, count)
        log.info("association from AE %r at %s: %d instance(s) stored, %d refused busy, %d failed, %d resent; %s",
                 sender.calling, sender.peer, sender.stored, sender.busy, sender.failed,
                 sum(sender.resent.values()), _ENDINGS[event.event.name])

    # --- completeness
    def _watch(self) -> None:
        while not self._stopping.wait(min(self.quiet / 4, 0.5)):
            now = time.monotonic()
            with self._lock:
                ready = [s for s in self._series.values() if s.state == RECEIVING and not s.senders and s.due <= now]
                for s in ready:
                    s.state = PROCESSING
            for s in ready:
                self._submit(s)

    def _submit(self, series: _Series) -> None:
        if not self.spool.instance_count(series.uid):  # its only instance failed to store
            with self._lock:
                del self._series[series.uid]
            if series.ticket is not None:
                series.ticket.release()
            return
        series.complete_at = series.complete_at or time.monotonic()
        try:
            ticket = series.ticket or self.work.admit(force=True)  # admitted once already: never refused
            series.ticket = None
            series.future = ticket.submit(self._process, series)
        except ServiceBusyError as e:
            log.warning("series %s: not processed (%s); it stays in the spool", series.uid, e)

    # --- processing (on the worker thread)
    def _process(self, series: _Series) -> None:
        uid = series.uid
        log.info("series %s: complete, segmenting %d instance(s)", uid, self.spool.instance_count(uid))
        try:
            outcome = self._segment(uid)
        except Exception as e:  # a bug, not the series: done, as failed, rather than retried forever
            log.error("series %s: failed: %s", uid, e, exc_info=True)
            self._finish_safely(uid, "failed", f"{type(e).__name__}: {e}")
            return
        if outcome.retryable:  # the disk, not the series: try again later
            log.error("series %s: not segmented (%s); retry in %g s", uid, outcome.detail, self.retry)
            with self._lock:
                series.state, series.due = RECEIVING, time.monotonic() + self.retry
        elif outcome.status == "ok":
            series.state = DELIVERING
            self._delivery.schedule(uid)
        else:  # what fails on this series would fail again: done, as failed (or skipped: not picked)
            if outcome.status == "failed":
                log.error("series %s: failed: %s", uid, outcome.detail)
            self._finish_safely(uid, outcome.status, outcome.detail)

    def _segment(self, uid: str):
        """The spooled series through the per-case workflow, into the spool's results."""
        seed = self.options.seed if self.options.seed is not None else name_seed(uid)
        case = Case(uid, self.spool.instances(uid), "dicom-series")
        record = {"input": f"DICOM C-STORE to {self.ae_title}", "series_uid": uid,
                  "idempotency_key": self._key(uid)}
        return run_case(self.segmenter, case, self.spool.results(uid), SegmentOptions.of(self.options, seed=seed),
                        model=self.segmenter.model_name, record=record)

    def _finish_safely(self, uid: str, outcome: str, reason: str) -> None:
        try:
            self._finish(uid, outcome, reason)
        except OSError as e:
            log.error("series %s: %s but not recorded done (%s); the next start processes it again", uid, outcome, e)

    # --- delivering (on the delivery thread)
    def _deliver(self, uid: str) -> None:
        results = self.spool.results(uid)
        if self.destination is not None:
            sent = self.spool.sent(uid)
            send_objects(self.destination, self.ae_title,
                         {name: results / name for name in SENT_OBJECTS if name not in sent},
                         lambda name, sop_uid: self.spool.mark_sent(uid, name, sop_uid))
            self._finish(uid, "segmented", None, self.spool.sent(uid), str(self.destination))
        else:
            delivered = copy_case(results, self.output_dir, uid)
            self._finish(uid, "segmented", None, delivered, str(self.output_dir / uid))

    def _finish(self, uid: str, outcome: str, reason: str | None, sent: dict | None = None,
                where: str | None = None) -> None:
        """Record the series done, then remove it from the spool (the record first: a crash in
        between leaves leftovers that the next start removes, never a series to redo)."""
        info = self.spool.sidecar(uid) if outcome == "segmented" else {}
        instances = self.spool.instance_count(uid)
        self.spool.record_done(self._key(uid), {
            "series_uid": uid, "model": self.segmenter.model_name, "model_sha256": self.segmenter.model_sha256,
            "idempotency_key": self._key(uid), "outcome": outcome, "reason": reason, "instances": instances,
            "sent": sorted((sent or {}).values()), "delivered_to": where,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self.spool.clean(uid, keep_instances=outcome == "failed")
        with self._lock:
            series = self._series.pop(uid, None)
        seconds = time.monotonic() - series.complete_at if series and series.complete_at else None
        self.metrics.series.labels(outcome).inc()
        self.metrics.request("dicom", outcome, seconds)
        shape = "x".join(map(str, info.get("input_shape", []))) or "-"
        total = info.get("timings_ms", {}).get("total")
        log.info("series %s: %d instance(s), volume %s, %s ms, %s%s", uid, instances, shape,
                 "-" if total is None else f"{total:.0f}", outcome,
                 f" -> {where}" if where else f" ({reason})" if reason else "")

    # --- restart
    def _recover(self) -> None:
        """Rebuild the state of every series in the spool (see ldseg_rt.serve.spool)."""
        self.spool.recover_temporaries()
        now = time.monotonic()
        for uid in self.spool.series():
            record = self.spool.done(self._key(uid))
            if record is not None:
                self.spool.clean(uid, keep_instances=record["outcome"] == "failed")
                log.info("series %s: done already (%s); its leftovers removed", uid, record["outcome"])
                continue
            if self.spool.results_complete(uid) and self.spool.sidecar(uid).get("idempotency_key") != self._key(uid):
                log.info("series %s: spooled results are another model's; segmenting again", uid)
                self.spool.discard_results(uid)
            if self.spool.results_complete(uid):
                self._series[uid] = _Series(uid, None, now, DELIVERING, complete_at=now)
                self._delivery.schedule(uid)
            elif self.spool.instance_count(uid):
                self._series[uid] = _Series(uid, self.work.admit(force=True), now + self.quiet)
            else:
                self.spool.clean(uid)
                continue
            log.info("series %s: recovered from the spool, %s", uid, self._series[uid].state)
