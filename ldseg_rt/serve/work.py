"""The one model instance's work queue: a bounded queue in front of a single worker thread.

sample() is not assumed thread-safe (a backend may hold per-call buffers, onnxruntime and
torch already use every core for one call), so every job runs on that one thread, one at a
time, in the order admitted: jobs are serialised, not pooled. The queue holds at most
`capacity` admitted jobs that have not started; past that, admission fails at once with
ServiceBusyError (HTTP 503, DICOM out-of-resources) instead of piling up work.

A DICOM series is admitted when its first instance arrives but submitted only when it is
complete, so admission is a `Ticket` that holds a place until it is submitted or released.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from ..errors import ServiceBusyError

log = logging.getLogger(__name__)


class Ticket:
    """A place in the queue: submit one job with it, or release it."""

    def __init__(self, work: "WorkQueue"):
        self._work, self._used = work, False

    def submit(self, fn, *args) -> Future:
        """Queue fn(*args); the future gets its result or its exception. ServiceBusyError
        (and the place given back) once the queue is closing."""
        if self._used:
            raise RuntimeError("a ticket admits one job")
        future: Future = Future()
        with self._work._lock:
            closed = self._work._closed
            if not closed:
                self._used = True
                self._work._jobs.put((future, fn, args))
        if closed:
            self.release()
            raise ServiceBusyError("the service is shutting down")
        return future

    def release(self) -> None:
        """Give the place back without running anything."""
        if not self._used:
            self._used = True
            self._work._done_waiting()


class WorkQueue:
    """Admit jobs up to `capacity` waiting ones; run them one at a time on one thread."""

    def __init__(self, capacity: int, on_depth=None):
        """on_depth(depth): called whenever the number of waiting jobs changes (for metrics)."""
        if capacity < 1:
            raise ValueError(f"the queue needs room for at least one job, got {capacity}")
        self.capacity = capacity
        self._on_depth = on_depth or (lambda depth: None)
        self._waiting = 0
        self._closed = False
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ldseg-worker", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Admitted jobs that have not started (the running one not included)."""
        return self._waiting

    @property
    def accepting(self) -> bool:
        """Whether new jobs may be admitted (false once closing)."""
        return not self._closed

    def admit(self, force: bool = False) -> Ticket:
        """A place in the queue, or ServiceBusyError when it is full or closing. force: admit
        even past capacity (work that was accepted before a restart must not be refused)."""
        with self._lock:
            if self._closed:
                raise ServiceBusyError("the service is shutting down")
            if not force and self._waiting >= self.capacity:
                raise ServiceBusyError(f"the work queue is full ({self.capacity} jobs waiting)")
            self._waiting += 1
            depth = self._waiting
        self._on_depth(depth)
        return Ticket(self)

    def submit(self, fn, *args) -> Future:
        """admit() and submit in one: fn(*args) queued, or ServiceBusyError."""
        return self.admit().submit(fn, *args)

    def _done_waiting(self) -> None:
        with self._lock:
            self._waiting -= 1
            depth = self._waiting
        self._on_depth(depth)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            self._done_waiting()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # the job's failure belongs to its caller, not to the worker
                future.set_exception(e)

    def close(self, timeout: float | None = None) -> bool:
        """Admit nothing more, finish every job already admitted and submitted, stop the
        worker. Whether it finished within `timeout` seconds."""
        with self._lock:
            self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()
