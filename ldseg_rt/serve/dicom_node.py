"""The DICOM node: a storage SCP that spools every instance it acknowledges, segments each
series once it is complete, and delivers the results to a destination AE or an output folder.

A series is received, then processed, then delivered, as a job (ldseg_rt.serve.spool):

- receiving: each instance is written durably to the spool before 0x0000 is answered; objects
  that are not images (SR, presentation states, key objects, ...) are stored aside, and the
  node's own outputs sent back to it (a router forwarding every new series) are acknowledged
  and dropped. DIMSE has no "series complete": a job is complete when every association that
  brought its instances ended with a normal release and no instance arrived for `quiet`
  seconds. An association that was aborted, timed out or had a store refused leaves the job
  incomplete: it waits for another association to bring the rest (a resend), and after
  `incomplete_after` seconds without one it is failed, never segmented from a part.
- processing (the worker thread): a complete job takes a place in the work queue (open
  associations never hold one), then goes through the per-case workflow
  (ldseg_rt.workflow.run_case), with a seed derived from its name unless one is configured
  (a rerun after a crash gives the same result), its results written whole into the spool.
- delivering (the delivery thread): sent (each object the destination accepts) or copied,
  retried with backoff `send_retries` times; then kept under the spool's undelivered/.

Instances of a series that arrive once its job is processed or done start a new job of that
series (seeded with the instances the spool still holds of it), delivered as a new series.
Crash safety rests on the spool: start() rebuilds this state from it.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pydicom
from pynetdicom import AE, evt

from ..errors import InvalidArgumentError, ServiceBusyError
from ..io.atomic import check_writable
from ..io.cases import Case
from ..io.dicom_outputs import MANUFACTURER
from ..options import NodeOptions, SegmentOptions
from ..seeds import name_seed
from ..workflow import run_case
from .contexts import image_storage_contexts, is_image_storage
from .delivery import SENT_OBJECTS, DeliveryThread, Destination, copy_case, send_objects
from .spool import Spool, check_uid, idempotency_key, job_name, series_of

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
RECEIVING, PROCESSING, DELIVERING = "receiving", "processing", "delivering"
_ENDINGS = {"EVT_RELEASED": "released", "EVT_ABORTED": "aborted", "EVT_CONN_CLOSE": "connection closed"}
RESTARTED = "the node stopped while it was being received"


@dataclass(eq=False)
class _Job:
    name: str
    uid: str  # its SeriesInstanceUID
    due: float  # monotonic time from which it is quiet
    state: str = RECEIVING
    senders: set = field(default_factory=set)  # open associations that sent instances of it
    broken: str | None = None  # why the instances so far may not be the whole series
    broken_at: float | None = None
    future: concurrent.futures.Future | None = None
    complete_at: float | None = None
    waiting: bool = False  # complete, waiting for a place in the work queue


@dataclass(eq=False)
class _Association:
    calling: str
    peer: str
    stored: int = 0
    aside: int = 0
    own: int = 0
    refused: int = 0
    failed: int = 0
    jobs: set = field(default_factory=set)
    refused_series: set = field(default_factory=set)  # series of which a store was refused


class DicomNode:
    """A storage SCP in front of a Segmenter; start() listens, stop() stops (see the module
    docstring). destination ("AE@HOST:PORT" or a Destination) or output_dir, not both."""

    def __init__(self, segmenter, work, metrics, spool: Spool, *, destination=None, output_dir=None,
                 options: SegmentOptions | None = None, node: NodeOptions | None = None):
        """options: how each series is segmented (its seed: the configured one, else derived
        from the job's name; its select rule picks the series to segment, others are skipped;
        formats and samples are the node's own); node: how it meets the network."""
        if (destination is None) == (output_dir is None):
            raise InvalidArgumentError("give exactly one of destination (AE@HOST:PORT) and output_dir")
        self.node = NodeOptions.of(node)
        if not self.node.allowed_aes:
            raise InvalidArgumentError("the DICOM node accepts only configured callers: give allowed_aes")
        self.segmenter, self.work, self.metrics, self.spool = segmenter, work, metrics, spool
        self.destination = Destination.parse(destination) if isinstance(destination, str) else destination
        self.output_dir = None if output_dir is None else check_writable(output_dir, folder=True)
        self.options = SegmentOptions.of(options, return_samples=False, progress=False,
                                         formats=("dicom-seg",) if self.destination else ("nifti", "dicom-seg"))
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._receiving: dict[str, _Job] = {}  # series uid -> its job being received
        self._associations: dict[object, _Association] = {}
        self._created: set[str] = set()  # series UIDs of the node's own outputs
        self._stopping = threading.Event()
        self._ae: AE | None = None
        self._watcher: threading.Thread | None = None
        self._delivery: DeliveryThread | None = None

    # --- life cycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Recover the spool, then listen; the port bound."""
        self.spool.lock()
        self._delivery = DeliveryThread(self._deliver, retries=self.node.send_retries, backoff=self.node.send_backoff,
                                        on_give_up=self._give_up)
        self._recover()
        self._watcher = threading.Thread(target=self._watch, name="ldseg-dicom-watcher", daemon=True)
        self._watcher.start()
        ae = AE(ae_title=self.node.ae_title)
        ae.supported_contexts = image_storage_contexts()
        ae.require_calling_aet = list(self.node.allowed_aes)
        ae.require_called_aet = True
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.node.idle_timeout
        ae.maximum_associations = self.node.max_associations
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected)] + [(getattr(evt, e), self._on_end) for e in _ENDINGS]
        try:
            server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise InvalidArgumentError(f"cannot listen for DICOM on {host}:{port}: {e.strerror or e}") from e
        self._ae = ae
        port = server.server_address[1]
        log.info("DICOM: AE %s on %s:%d, accepting %s; results to %s", self.node.ae_title, host, port,
                 ", ".join(self.node.allowed_aes), self.destination or self.output_dir)
        return port

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening (open associations are aborted), finish the jobs already submitted,
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
            futures = [j.future for j in self._jobs.values() if j.future is not None]
        concurrent.futures.wait(futures, left())
        if self._delivery is not None:
            self._delivery.close(left())
        with self._lock:
            unfinished = len(self._jobs)
        self.spool.unlock()
        log.info("DICOM node %s stopped; %d job(s) left in the spool", self.node.ae_title, unfinished)

    # --- receiving
    def _key(self, job: str) -> str:
        return idempotency_key(job, self.segmenter.model_sha256)

    def _on_accepted(self, event) -> None:
        requestor = event.assoc.requestor
        with self._lock:
            self._associations[event.assoc] = _Association(requestor.ae_title, f"{requestor.address}:{requestor.port}")

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        called = requestor.primitive.called_ae_title if requestor.primitive else "?"
        why = (f"it called AE title {called!r}, not this node's {self.node.ae_title!r}"
               if called.strip() != self.node.ae_title else f"AE {requestor.ae_title!r} is not an allowed caller")
        log.warning("association from AE %r at %s:%s rejected: %s", requestor.ae_title, requestor.address,
                    requestor.port, why)

    def _on_store(self, event) -> int:
        with self._lock:
            sender = self._associations.setdefault(event.assoc, _Association("?", "?"))
        try:
            ds = event.dataset
            series_uid = check_uid(str(ds.SeriesInstanceUID), "SeriesInstanceUID")
            sop_uid = check_uid(str(event.request.AffectedSOPInstanceUID), "SOPInstanceUID")
            image = is_image_storage(str(event.request.AffectedSOPClassUID))
            own = self._is_own(ds, series_uid, image)
            data = None if own else event.encoded_dataset()
        except Exception as e:  # pydicom raises many kinds on a damaged dataset
            log.error("C-STORE from AE %r: unreadable dataset, refused: %s", sender.calling, e)
            sender.failed += 1
            return CANNOT_UNDERSTAND
        if own:  # behind a router that forwards every new series: never a loop
            sender.own += 1
            return SUCCESS
        job = self._job_for(series_uid, event.assoc, sender)
        if job is None:
            return OUT_OF_RESOURCES
        try:
            self.spool.store(job.name, sop_uid, data, aside=not image)
        except OSError as e:
            log.error("series %s: instance %s from AE %r not stored (%s); refused", series_uid, sop_uid,
                      sender.calling, e)
            sender.refused += 1
            sender.refused_series.add(series_uid)
            return OUT_OF_RESOURCES
        with self._lock:
            job.due = time.monotonic() + self.node.quiet
            sender.stored += image
            sender.aside += not image
        self.metrics.instances.inc()
        return SUCCESS

    def _is_own(self, ds, series_uid: str, image: bool) -> bool:
        """An object this node made: a series it created, or a non-image object of its maker."""
        return series_uid in self._created or (not image and str(ds.get("Manufacturer", "")) == MANUFACTURER)

    def _job_for(self, series_uid: str, assoc, sender: _Association) -> _Job | None:
        """The job being received of the series, a new one if none is (None: refused, no room)."""
        with self._lock:
            job = self._receiving.get(series_uid)
            if job is None:
                try:
                    if self.spool.free_bytes() < self.node.min_free_bytes:
                        raise ServiceBusyError(f"less than {self.node.min_free_bytes} bytes free in {self.spool.root}")
                except (ServiceBusyError, OSError) as e:
                    log.warning("series %s from AE %r refused: %s", series_uid, sender.calling, e)
                    sender.refused += 1
                    sender.refused_series.add(series_uid)
                    self.metrics.request("dicom", "busy")
                    return None
                job = self._new_job(series_uid)
            job.senders.add(assoc)
            sender.jobs.add(job.name)
            return job

    def _new_job(self, series_uid: str) -> _Job:
        """The series' next job, holding the instances its earlier jobs left in the spool."""
        generation = 1
        while job_name(series_uid, generation) in self._jobs or self.spool.done(
                self._key(job_name(series_uid, generation))) is not None:
            generation += 1
        name = job_name(series_uid, generation)
        earlier = [j.name for j in self._jobs.values() if j.uid == series_uid] + self.spool.kept_jobs(series_uid)
        if generation > 1:
            linked = self.spool.seed(name, earlier)
            log.info("series %s: instances after it was segmented; new job %s with the %d instance(s) the spool "
                     "holds of it", series_uid, name, linked)
        job = self._jobs[name] = self._receiving[series_uid] = _Job(name, series_uid,
                                                                    time.monotonic() + self.node.quiet)
        return job

    def _on_end(self, event) -> None:
        ending = _ENDINGS[event.event.name]
        with self._lock:
            sender = self._associations.pop(event.assoc, None)
            jobs = [self._jobs[name] for name in (sender.jobs if sender else ()) if name in self._jobs]
            for job in jobs:
                job.senders.discard(event.assoc)
                if ending == "released" and job.uid not in sender.refused_series:
                    job.broken = job.broken_at = None  # a normal release: what it sent is whole
                else:
                    job.broken = (f"the association from AE {sender.calling!r} was {ending} before a normal release"
                                  if ending != "released" else f"a store from AE {sender.calling!r} was refused")
                    job.broken_at = time.monotonic()
        if sender is None:
            return  # already ended (released, then its connection closed) or never accepted
        for job in jobs:
            self._write_state(job)
        log.info("association from AE %r at %s: %d image(s) stored, %d other object(s) set aside, %d of the node's "
                 "own outputs ignored, %d refused, %d unreadable; %s", sender.calling, sender.peer, sender.stored,
                 sender.aside, sender.own, sender.refused, sender.failed, ending)

    def _write_state(self, job: _Job) -> None:
        try:
            self.spool.write_state(job.name, job.broken)
        except OSError as e:  # a restart then takes it as interrupted: it waits for a resend
            log.error("job %s: its state not recorded (%s)", job.name, e)

    # --- completeness
    def _watch(self) -> None:
        while not self._stopping.wait(min(self.node.quiet / 4, 0.5)):
            now = time.monotonic()
            with self._lock:
                quiet = [j for j in self._jobs.values() if j.state == RECEIVING and not j.senders and j.due <= now]
            for job in quiet:
                if job.broken is None:
                    self._submit(job)
                elif now - job.broken_at >= self.node.incomplete_after:
                    self._fail_incomplete(job)

    def _fail_incomplete(self, job: _Job) -> None:
        with self._lock:
            job.state = PROCESSING
            self._receiving.pop(job.uid, None)
        reason = (f"incomplete: {job.broken}, and no association brought the rest within "
                  f"{self.node.incomplete_after:g} s")
        log.error("series %s: failed, %s", job.uid, reason)
        self._finish_safely(job.name, "failed", reason)

    def _submit(self, job: _Job) -> None:
        if not self.spool.instance_count(job.name):  # nothing to segment: objects set aside only
            with self._lock:
                job.state = PROCESSING
                self._receiving.pop(job.uid, None)
            self._finish_safely(job.name, "ignored", f"no images: {self.spool.aside_count(job.name)} object(s) that "
                                                     f"are not images, set aside")
            return
        try:
            ticket = self.work.admit()
        except ServiceBusyError as e:
            if not job.waiting:
                log.info("series %s: complete, waiting for the work queue (%s)", job.uid, e)
            job.waiting = True
            return
        with self._lock:
            job.state, job.complete_at = PROCESSING, job.complete_at or time.monotonic()
            self._receiving.pop(job.uid, None)
        job.future = ticket.submit(self._process, job)

    # --- processing (on the worker thread)
    def _process(self, job: _Job) -> None:
        log.info("series %s: complete, segmenting %d instance(s) as job %s", job.uid,
                 self.spool.instance_count(job.name), job.name)
        try:
            outcome = self._segment(job.name)
        except Exception as e:  # a bug, not the series: done, as failed, rather than retried forever
            log.error("series %s: failed: %s", job.uid, e, exc_info=True)
            self._finish_safely(job.name, "failed", f"{type(e).__name__}: {e}")
            return
        if outcome.retryable:  # the disk, not the series: try again later
            log.error("series %s: not segmented (%s); retry in %g s", job.uid, outcome.detail, self.node.quiet)
            with self._lock:
                job.state, job.due = RECEIVING, time.monotonic() + self.node.quiet
                self._receiving.setdefault(job.uid, job)
        elif outcome.status == "ok":
            job.state = DELIVERING
            self._delivery.schedule(job.name)
        else:  # what fails on this job would fail again: done, as failed (or skipped: not picked)
            if outcome.status == "failed":
                log.error("series %s: failed: %s", job.uid, outcome.detail)
            self._finish_safely(job.name, outcome.status, outcome.detail)

    def _segment(self, name: str):
        """The spooled job through the per-case workflow, into the spool's results."""
        seed = self.options.seed if self.options.seed is not None else name_seed(name)
        case = Case(name, self.spool.instances(name), "dicom-series")
        record = {"input": f"DICOM C-STORE to {self.node.ae_title}", "series_uid": series_of(name), "job": name,
                  "idempotency_key": self._key(name)}
        return run_case(self.segmenter, case, self.spool.results(name), SegmentOptions.of(self.options, seed=seed),
                        model=self.segmenter.model_name, record=record)

    def _finish_safely(self, name: str, outcome: str, reason: str, **delivery) -> None:
        try:
            self._finish(name, outcome, reason, **delivery)
        except OSError as e:
            log.error("job %s: %s but not recorded done (%s); the next start takes it up again", name, outcome, e)

    # --- delivering (on the delivery thread)
    def _deliver(self, name: str) -> None:
        results = self.spool.results(name)
        info = self.spool.sidecar(name)
        if self.destination is None:
            delivered = copy_case(results, self.output_dir, name)
            self._finish(name, "segmented", None, info=info, sent=delivered, where=str(self.output_dir / name))
            return
        sent = self.spool.sent(name)
        report = send_objects(self.destination, self.node.ae_title,
                              {n: results / n for n in SENT_OBJECTS if n not in sent and (results / n).is_file()},
                              lambda n, sop_uid: self.spool.mark_sent(name, n, sop_uid))
        if report.refused and not self.spool.sent(name):
            self._give_up(name, "it refused every object: " + "; ".join(f"{n}: {why}" for n, why in
                                                                       report.refused.items()))
            return
        self._finish(name, "segmented", None, info=info, sent=self.spool.sent(name), where=str(self.destination),
                     refused=report.refused)

    def _give_up(self, name: str, reason: str) -> None:
        """Delivery failed send_retries + 1 times: the results are kept aside and the job is done."""
        info = self.spool.sidecar(name)
        where = self.spool.keep_undelivered(name, f"not delivered to {self.destination}: {reason}")
        log.error("series %s: results not delivered to %s (%s); kept in %s", series_of(name), self.destination,
                  reason, where)
        self._finish(name, "undelivered", reason, info=info, where=str(where))

    def _finish(self, name: str, outcome: str, reason: str | None, *, info: dict | None = None,
                sent: dict | None = None, where: str | None = None, refused: dict | None = None) -> None:
        """Record the job done, then remove it from the spool (the record first: a crash in
        between leaves leftovers that the next start removes, never a job to redo)."""
        info = info or {}
        instances = self.spool.instance_count(name)
        created = self._output_series(name, outcome)
        self.spool.record_done(self._key(name), {
            "series_uid": series_of(name), "job": name, "model": self.segmenter.model_name,
            "model_sha256": self.segmenter.model_sha256, "idempotency_key": self._key(name), "outcome": outcome,
            "reason": reason, "instances": instances, "sent": sorted((sent or {}).values()),
            "refused": refused or {}, "delivered_to": where, "output_series": created,
            "warnings": info.get("warnings", []), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._created.update(created)
        self.spool.clean(name, keep_in=self.spool.failed(name) if outcome == "failed"
                         else self.spool.received(name) if self.node.keep_received else None)
        with self._lock:
            job = self._jobs.pop(name, None)
        seconds = time.monotonic() - job.complete_at if job and job.complete_at else None
        self.metrics.series.labels(outcome).inc()
        self.metrics.request("dicom", outcome, seconds)
        self._log_finished(name, outcome, reason, instances, info, where, seconds)

    def _output_series(self, name: str, outcome: str) -> list[str]:
        """The series UIDs of the DICOM objects the job made (so that they are known as the
        node's own when a router sends them back)."""
        folder = self.spool.undelivered(name) if outcome == "undelivered" else self.spool.results(name)
        return sorted({str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                           .SeriesInstanceUID) for p in folder.glob("*.dcm")})

    @staticmethod
    def _log_finished(name, outcome, reason, instances, info, where, seconds) -> None:
        shape = "x".join(map(str, info.get("input_shape", []))) or "-"
        warnings = info.get("warnings", [])
        log.info("series %s (job %s): %d instance(s), volume %s, %s, %s%s%s", series_of(name), name, instances, shape,
                 "-" if seconds is None else f"{seconds:.1f} s", outcome,
                 f" -> {where}" if where else f" ({reason})" if reason else "",
                 f"; {len(warnings)} warning(s): {'; '.join(map(str, warnings))}" if warnings else "")

    # --- restart
    def _recover(self) -> None:
        """Rebuild the state of every job in the spool (see ldseg_rt.serve.spool)."""
        self.spool.recover_temporaries()
        self._created.update(uid for record in self.spool.done_records() for uid in record.get("output_series", []))
        for name in self.spool.jobs():
            record = self.spool.done(self._key(name))
            if record is not None:
                self.spool.clean(name, keep_in=self.spool.failed(name) if record["outcome"] == "failed"
                                 else self.spool.received(name) if self.node.keep_received else None)
                log.info("job %s: done already (%s); its leftovers removed", name, record["outcome"])
            elif self._resume(name):
                log.info("job %s: recovered from the spool, %s", name, self._jobs[name].state)
            else:
                self.spool.clean(name)

    def _resume(self, name: str) -> bool:
        """Take up a job the spool holds; False if it holds nothing to take up."""
        now = time.monotonic()
        if self.spool.results_complete(name) and self.spool.sidecar(name).get("idempotency_key") != self._key(name):
            log.info("job %s: spooled results are another model's; segmenting again", name)
            self.spool.discard_results(name)
        if self.spool.results_complete(name):
            self._jobs[name] = _Job(name, series_of(name), now, DELIVERING, complete_at=now)
            self._delivery.schedule(name)
            return True
        if not (self.spool.instance_count(name) or self.spool.aside_count(name)):
            return False
        state = self.spool.state(name)
        job = _Job(name, series_of(name), now + self.node.quiet)
        job.broken = RESTARTED if state is None else state["broken"]
        job.broken_at = now if job.broken else None
        self._jobs[name] = self._receiving[job.uid] = job
        return True
