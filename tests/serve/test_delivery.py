"""Delivery against real pynetdicom SCPs on 127.0.0.1, with real SEG / fractional SEG /
Parametric Map objects written by ldseg_rt's writers; and the retrying delivery thread with a
fake attempt."""
import logging
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, ParametricMapStorage, SegmentationStorage

from dicom_factory import write_series
from ldseg_rt.io.dicom_outputs import write_parametric_map, write_probability_segmentation, write_segmentation
from ldseg_rt.serve.delivery import (SENT_OBJECTS, DeliveryReport, DeliveryThread, Destination,
                                     send_objects)

CALLING_AE, DEST_AE = "LDSEG_RT", "PACS"
TIMEOUT = 20.0  # seconds any one expected event may take on a loaded machine
SEG, FRACTIONAL, PM = SENT_OBJECTS


# --- the objects sent: small but real, made as the node makes them

@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """{name: path} of a binary SEG, a fractional SEG and a Parametric Map of one 3-slice series."""
    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 1000, (3, 8, 10)).astype(np.int16)  # (K, rows, columns)
    sources = [pydicom.dcmread(path) for path in write_series(root / "mr", stored)]
    shape = (10, 8, 3)  # (I = columns, J = rows, K)
    probabilities = rng.random((2, *shape))
    probabilities /= probabilities.sum(axis=0)
    names = ["background", "disc"]
    return {SEG: write_segmentation(root / SEG, probabilities.argmax(axis=0), sources, names),
            FRACTIONAL: write_probability_segmentation(root / FRACTIONAL, probabilities, sources, names),
            PM: write_parametric_map(root / PM, probabilities[1], sources)}


def identity(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def sop_uid(path) -> str:
    return identity(path)[1]


# --- the destination

def storing(status=lambda ds: 0x0000):
    """A C-STORE handler that answers status(dataset), or drops the association where that is
    None, and records what it stored."""
    received = []

    def handle(event):
        ds = event.dataset
        code = status(ds)
        if code is None:
            event.assoc.abort()
            return 0x0000  # never reaches the sender
        if code == 0x0000 or 0xB000 <= code <= 0xB0FF:  # stored, with or without a warning
            received.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        return code

    return handle, received


@contextmanager
def destination(sop_classes=(SegmentationStorage, ParametricMapStorage), status=lambda ds: 0x0000,
                require_called_aet=False):
    """A storage SCP on a free port of 127.0.0.1: (its Destination, the list of (SOP Class
    UID, SOP Instance UID) it stored). Always shut down."""
    handle, received = storing(status)
    ae = AE(ae_title=DEST_AE)
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class)
    ae.require_called_aet = require_called_aet
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield Destination(DEST_AE, "127.0.0.1", server.server_address[1]), received
    finally:
        server.shutdown()


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(dest, case, sent=None):
    sent = {} if sent is None else sent
    return send_objects(dest, CALLING_AE, dict(case), lambda name, uid: sent.__setitem__(name, uid), timeout=TIMEOUT)


# --- send_objects

def test_all_accepted(case):
    with destination() as (dest, received):
        sent = {}
        report = send(dest, case, sent)
    assert received == [identity(case[name]) for name in SENT_OBJECTS]  # all of them, in order
    assert report == DeliveryReport({name: sop_uid(case[name]) for name in SENT_OBJECTS}, {})
    assert sent == report.sent


def test_warning_status_counts_as_sent(case):
    with destination(status=lambda ds: 0xB000) as (dest, received):
        report = send(dest, case)
    assert len(received) == 3 and set(report.sent) == set(SENT_OBJECTS) and not report.refused


def test_sop_class_not_accepted_is_refused_the_rest_sent(case, caplog):
    with destination(sop_classes=[SegmentationStorage]) as (dest, received), caplog.at_level(logging.WARNING):
        sent = {}
        report = send(dest, case, sent)
    assert received == [identity(case[SEG]), identity(case[FRACTIONAL])]
    assert report.sent == sent == {SEG: sop_uid(case[SEG]), FRACTIONAL: sop_uid(case[FRACTIONAL])}
    assert report.refused == {PM: "destination does not accept Parametric Map Storage"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(dest) in warnings[0] and PM in warnings[0]
    assert "Parametric Map Storage" in warnings[0]


def test_no_sop_class_accepted_refuses_all_without_raising(case):
    with destination(sop_classes=[MRImageStorage]) as (dest, received):
        report = send(dest, case)
    assert received == [] and report.sent == {}
    assert report.refused == {SEG: "destination does not accept Segmentation Storage",
                              FRACTIONAL: "destination does not accept Segmentation Storage",
                              PM: "destination does not accept Parametric Map Storage"}


def test_failure_status_refuses_that_object_only(case):
    fractional = lambda ds: 0xA900 if ds.get("SegmentationType") == "FRACTIONAL" else 0x0000  # noqa: E731
    with destination(status=fractional) as (dest, received):
        sent = {}
        report = send(dest, case, sent)
    assert received == [identity(case[SEG]), identity(case[PM])]
    assert report.sent == sent == {SEG: sop_uid(case[SEG]), PM: sop_uid(case[PM])}
    assert list(report.refused) == [FRACTIONAL]
    assert "A900" in report.refused[FRACTIONAL] and "Does Not Match SOP Class" in report.refused[FRACTIONAL]


def test_out_of_resources_raises_after_reporting_what_was_sent(case):
    fractional = lambda ds: 0xA700 if ds.get("SegmentationType") == "FRACTIONAL" else 0x0000  # noqa: E731
    with destination(status=fractional) as (dest, received):
        sent = {}
        with pytest.raises(ConnectionError, match="A700"):
            send(dest, case, sent)
    assert sent == {SEG: sop_uid(case[SEG])}  # the one before stays sent; the one after was not tried
    assert received == [identity(case[SEG])]


def test_dropped_association_raises_after_reporting_what_was_sent(case):
    fractional = lambda ds: None if ds.get("SegmentationType") == "FRACTIONAL" else 0x0000  # noqa: E731
    with destination(status=fractional) as (dest, received):
        sent = {}
        with pytest.raises(ConnectionError, match=FRACTIONAL):
            send(dest, case, sent)
    assert sent == {SEG: sop_uid(case[SEG])}
    assert received == [identity(case[SEG])]


def test_destination_down_raises_connection_error(case):
    dest = Destination(DEST_AE, "127.0.0.1", free_port())
    with pytest.raises(ConnectionError, match=f"{DEST_AE}@127.0.0.1:{dest.port}"):
        send(dest, case)


def test_association_rejected_names_the_destination_and_reason(case):
    with destination(require_called_aet=True) as (dest, received):
        wrong = Destination("WRONG", dest.host, dest.port)
        with pytest.raises(ConnectionError, match="rejected") as raised:
            send(wrong, case)
    assert str(wrong) in str(raised.value) and "Called AE title not recognised" in str(raised.value)
    assert received == []


def test_nothing_to_send_does_not_associate():
    dest = Destination(DEST_AE, "127.0.0.1", free_port())  # nobody there: associating would raise
    assert send(dest, {}) == DeliveryReport()


# --- DeliveryThread

class FakeAttempt:
    """Fails the first `failures` attempts (of every key), then succeeds; records the times."""

    def __init__(self, failures: float):
        self.failures, self.times, self.done = failures, [], threading.Event()

    def __call__(self, key):
        self.times.append(time.monotonic())
        if len(self.times) <= self.failures:
            raise ConnectionError(f"down {len(self.times)}")
        self.done.set()


@contextmanager
def delivery_thread(attempt, **kwargs):
    given_up = []
    kwargs.setdefault("on_give_up", lambda key, reason: given_up.append((key, reason)))
    thread = DeliveryThread(attempt, **kwargs)
    try:
        yield thread, given_up
    finally:
        assert thread.close(TIMEOUT)


def test_retries_with_doubling_capped_backoff():
    attempt = FakeAttempt(failures=6)
    with delivery_thread(attempt, retries=10, backoff=0.05, max_backoff=0.1) as (thread, given_up):
        thread.schedule("a")
        assert attempt.done.wait(TIMEOUT)
    assert len(attempt.times) == 7 and given_up == []
    gaps = np.diff(attempt.times)
    expected = [0.05, 0.1, 0.1, 0.1, 0.1, 0.1]  # doubling, then capped
    assert all(gap >= 0.8 * want for gap, want in zip(gaps, expected)), gaps
    assert gaps[-1] < 1.0, gaps  # uncapped it would be 0.05 * 2**5 = 1.6 s


def test_delays_double_up_to_the_cap():
    with delivery_thread(lambda key: None, retries=3, backoff=30.0) as (thread, _):
        assert [thread._delay(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


def test_gives_up_after_the_retries():
    attempt = FakeAttempt(failures=float("inf"))
    with delivery_thread(attempt, retries=2, backoff=0.02) as (thread, given_up):
        thread.schedule("a")
        deadline = time.monotonic() + TIMEOUT
        while not given_up and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # long enough for a 4th attempt, were there one
        assert len(attempt.times) == 3
        assert len(given_up) == 1 and given_up[0][0] == "a"
        assert "down 3" in given_up[0][1] and "3 attempts" in given_up[0][1]
        thread.schedule("a")  # forgotten, so scheduled again it starts afresh
        deadline = time.monotonic() + TIMEOUT
        while len(given_up) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(attempt.times) == 6 and "3 attempts" in given_up[1][1]


def test_failing_give_up_does_not_stop_the_thread(caplog):
    calls = []

    def attempt(key):
        calls.append(key)
        if key == "bad":
            raise ConnectionError("down")

    def on_give_up(key, reason):
        raise RuntimeError("cannot record")

    with caplog.at_level(logging.ERROR), delivery_thread(attempt, retries=0, backoff=0.01,
                                                         on_give_up=on_give_up) as (thread, _):
        thread.schedule("bad")
        deadline = time.monotonic() + TIMEOUT
        while not any(r.exc_info for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.01)
        thread.schedule("good")
        deadline = time.monotonic() + TIMEOUT
        while "good" not in calls and time.monotonic() < deadline:
            time.sleep(0.01)
    assert calls == ["bad", "good"]
    assert any("cannot record" in r.exc_text for r in caplog.records if r.exc_text)


def test_close_makes_one_last_attempt_and_does_not_give_up():
    attempt = FakeAttempt(failures=float("inf"))
    first = threading.Event()
    with delivery_thread(lambda key: (first.set(), attempt(key)), retries=1, backoff=60.0) as (thread, given_up):
        thread.schedule("a")
        assert first.wait(TIMEOUT)  # failing now; its retry would be a minute away
        assert thread.close(TIMEOUT)
        assert len(attempt.times) == 2  # the first, and the last one on close
        assert given_up == []  # more failures than retries, but closing: left for the next start
