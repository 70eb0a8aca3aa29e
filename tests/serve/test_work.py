"""The work queue: bounded admission, one job at a time in admission order, nothing lost on close."""
import threading
import time

import pytest

from ldseg_rt.errors import ServiceBusyError
from ldseg_rt.serve.work import WorkQueue


def _blocked(work):
    """Occupy the worker until the returned event is set."""
    started, release = threading.Event(), threading.Event()
    work.submit(lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    return release


def test_jobs_run_one_at_a_time_in_admission_order():
    work, running, order, overlap = WorkQueue(capacity=50), [], [], []

    def job(k):
        running.append(k)
        overlap.append(len(running))
        time.sleep(0.002)
        order.append(k)
        running.remove(k)
        return k * k

    futures = [work.submit(job, k) for k in range(20)]
    assert [f.result(10) for f in futures] == [k * k for k in range(20)]
    assert order == list(range(20)) and max(overlap) == 1
    assert work.close(10)


def test_full_queue_refuses_at_once_and_frees_places_as_jobs_start():
    depths = []
    work = WorkQueue(capacity=2, on_depth=depths.append)
    release = _blocked(work)
    waiting = [work.submit(lambda k=k: k) for k in range(2)]
    assert work.depth == 2
    with pytest.raises(ServiceBusyError, match="full"):
        work.submit(lambda: None)
    forced = work.admit(force=True).submit(lambda: "forced")  # accepted before a restart: never refused
    assert work.depth == 3
    release.set()
    assert [f.result(10) for f in waiting] + [forced.result(10)] == [0, 1, "forced"]
    assert work.depth == 0 and depths[-1] == 0 and max(depths) == 3
    assert work.submit(lambda: "room again").result(10) == "room again"
    work.close(10)


def test_a_ticket_holds_its_place_until_submitted_or_released():
    work = WorkQueue(capacity=1)
    ticket = work.admit()
    with pytest.raises(ServiceBusyError):
        work.admit()
    ticket.release()
    ticket.release()  # a second release gives back nothing more
    assert work.depth == 0
    ticket = work.admit()
    assert ticket.submit(lambda: 7).result(10) == 7
    with pytest.raises(RuntimeError, match="one job"):
        ticket.submit(lambda: 8)
    work.close(10)


def test_a_failing_job_reaches_its_caller_and_the_worker_goes_on():
    work = WorkQueue(capacity=4)
    failing = work.submit(lambda: 1 / 0)
    after = work.submit(lambda: "still running")
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    assert after.result(10) == "still running"
    work.close(10)


def test_close_finishes_admitted_jobs_and_refuses_new_ones():
    work = WorkQueue(capacity=4)
    release = _blocked(work)
    queued = [work.submit(lambda k=k: k) for k in range(3)]
    held = work.admit()
    closer = threading.Thread(target=work.close, args=(10,))
    closer.start()
    for _ in range(1000):  # bounded: close() flips accepting at once
        if not work.accepting:
            break
        time.sleep(0.01)
    assert not work.accepting
    with pytest.raises(ServiceBusyError, match="shutting down"):
        work.submit(lambda: None)
    with pytest.raises(ServiceBusyError, match="shutting down"):
        held.submit(lambda: None)  # admitted before the close, submitted after: refused, place given back
    release.set()
    closer.join(10)
    assert [f.result(0) for f in queued] == [0, 1, 2] and work.depth == 0
