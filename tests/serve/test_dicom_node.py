"""The DICOM node against real pynetdicom peers on 127.0.0.1: a scanner (SCU) sends synthetic
series, a destination (SCP) collects what the node sends back."""
import dataclasses
import hashlib
import json
import logging
import socket
import time
from contextlib import contextmanager

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import EnhancedSRStorage, MRImageStorage, ParametricMapStorage, SegmentationStorage

from dcmtk import KINDS, compress, echoscu, needs_dcmtk, storescp, storescu
from dicom_factory import base_dataset, save, write_series
from ldseg_rt import NodeOptions, SegmentOptions, Segmenter
from ldseg_rt.cli import main
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.io.dicom_series import read_dicom_series
from ldseg_rt.serve.delivery import Destination
from ldseg_rt.serve.dicom_node import DicomNode
from ldseg_rt.serve.prometheus import Metrics
from ldseg_rt.serve.spool import Spool, idempotency_key
from ldseg_rt.serve.work import WorkQueue

N, STEPS = 2, 2
SCANNER, NODE_AE, PACS = "SCANNER", "LDSEG_RT", "PACS"
TIMEOUT = 30.0  # seconds any one expected event may take on a loaded machine


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("builtin:phantom")


def phantom(slices: int = 4, rows: int = 40, columns: int = 48) -> np.ndarray:
    """A bright disc, shifting from slice to slice, on a dim background (int16 stored values)."""
    y, x = np.mgrid[:rows, :columns]
    stored = np.empty((slices, rows, columns), np.int16)
    for k in range(slices):
        disc = (y - rows / 2) ** 2 + (x - columns / 2 - 2 * k) ** 2 < (rows / 4) ** 2
        stored[k] = np.where(disc, 900, 100) + 10 * k
    return stored


@pytest.fixture
def series(tmp_path):
    """A 4-slice MR series on disk: (folder, files in slice order k, SeriesInstanceUID)."""
    folder = tmp_path / "scanner"
    files = write_series(folder, phantom())
    return folder, files, str(pydicom.dcmread(files[0]).SeriesInstanceUID)


def derived_seed(series_uid: str) -> int:
    return int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "big") >> 1


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counter(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def destination_scp(port: int = 0, sop_classes=(SegmentationStorage, ParametricMapStorage)):
    """A destination AE accepting `sop_classes`, collecting what it receives: (port, list of datasets)."""
    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(PACS)
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1], received
    finally:
        ae.shutdown()


@contextmanager
def scanner(port: int, calling: str = SCANNER, called: str = NODE_AE):
    """An open association from the scanner to the node (None when rejected)."""
    ae = AE(calling)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        yield assoc if assoc.is_established else None
    finally:
        if assoc.is_established:
            assoc.release()


def send(port: int, files) -> list[int]:
    """Send files over one association, released after; the status of each."""
    with scanner(port) as assoc:
        return [int(assoc.send_c_store(f).Status) for f in files]


NODE_SETTINGS = {f.name for f in dataclasses.fields(NodeOptions)}


@contextmanager
def running_node(segmenter, spool_dir, capacity: int = 4, select: str | None = None, **settings):
    """A started DicomNode (n=2, steps=2, quiet 0.5 s, send backoff 0.2 s; settings: NodeOptions'
    and destination or output_dir) with a work queue of its own: (node, port, metrics);
    stopped, and its queue closed, after."""
    work, metrics = WorkQueue(capacity), Metrics()
    node_settings = {"ae_title": NODE_AE, "allowed_aes": (SCANNER,), "quiet": 0.5, "send_backoff": 0.2,
                     "min_free_bytes": 2 ** 20, **{k: v for k, v in settings.items() if k in NODE_SETTINGS}}
    node = DicomNode(segmenter, work, metrics, Spool(spool_dir), node=NodeOptions(**node_settings),
                     options=SegmentOptions(n=N, steps=STEPS, select=select),
                     **{k: v for k, v in settings.items() if k not in NODE_SETTINGS})
    port = node.start()
    try:
        yield node, port, metrics
    finally:
        node.stop(timeout=TIMEOUT)
        work.close(timeout=TIMEOUT)


def done_record(spool_dir, segmenter, series_uid: str):
    return Spool(spool_dir).done(idempotency_key(series_uid, segmenter.model_sha256))


def spooled(spool_dir) -> list[str]:
    """Every file left under incoming/, results/ and sent/."""
    return sorted(str(p.relative_to(spool_dir)) for name in ("incoming", "results", "sent")
                  for p in (spool_dir / name).rglob("*") if p.is_file())


def kind(ds) -> str:
    return ds.get("SegmentationType", "PM")


def check_received(received, segmenter, series, seed=None) -> None:
    """A binary and a fractional Segmentation and a Parametric Map of the series, in its study
    and frame of reference, holding the segmenter's mask, probabilities and uncertainty for the
    derived seed, slice by slice."""
    folder, files, series_uid = series
    assert sorted(kind(ds) for ds in received) == ["BINARY", "FRACTIONAL", "PM"]
    sources = [pydicom.dcmread(f) for f in files]
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    expected = segmenter.segment_volume(read_dicom_series(folder), n=N, steps=STEPS, progress=False,
                                        seed=derived_seed(series_uid) if seed is None else seed)
    assert len(np.unique(expected.mask)) > 1  # a mask of one class would compare equal too easily
    for ds in received:
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        referenced = ds.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == series_uid
        assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(slice_of)
        frames = ds.pixel_array
        seen = set()
        for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            k = slice_of[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
            if kind(ds) == "FRACTIONAL":
                segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                np.testing.assert_allclose(frames[f] / 255, expected.probs[segment, :, :, k].T, atol=0.5 / 255 + 1e-6)
                seen.add((k, segment))
            elif kind(ds) == "BINARY":
                segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                np.testing.assert_array_equal(frames[f], expected.mask[:, :, k].T == segment, err_msg=f"slice {k}")
                seen.add((k, segment))
            else:
                np.testing.assert_allclose(frames[f], expected.uncertainty[:, :, k].T, rtol=0, atol=1e-7)
                seen.add(k)
        assert seen == ({(k, s) for k in range(4) for s in (1, 2)} if ds.SOPClassUID == SegmentationStorage
                        else set(range(4)))
    assert hd.seg.Segmentation.from_dataset(next(ds for ds in received if ds.Modality == "SEG")).number_of_segments == 2
    return expected


def test_destination_and_arguments_are_checked(segmenter, tmp_path):
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert Destination.parse("PACS@[::1]:11112") == Destination("PACS", "::1", 11112)
    for text in ("PACS:104", "PACS@host", "PACS@host:0", "A_TITLE_LONGER_THAN_16@h:104"):
        with pytest.raises(InvalidArgumentError, match="AE@HOST:PORT"):
            Destination.parse(text)
    work = WorkQueue(1)
    try:
        for options in ({"destination": "PACS@h:104", "output_dir": tmp_path}, {},
                        {"destination": "PACS@h:104", "node": NodeOptions(allowed_aes=())}):
            with pytest.raises(InvalidArgumentError):
                DicomNode(segmenter, work, Metrics(), Spool(tmp_path / "spool"),
                          **{"node": NodeOptions(allowed_aes=(SCANNER,)), **options})
    finally:
        work.close()
    for settings, words in (({"quiet": 0}, "quiet"), ({"max_associations": 0}, "max_associations"),
                            ({"send_retries": -1}, "send_retries"), ({"allowed_aes": "SCANNER"}, "allowed_aes"),
                            ({"ae_title": "A" * 17}, "ae_title"), ({"keep_received": 1}, "keep_received")):
        with pytest.raises(InvalidArgumentError, match=words):
            NodeOptions(**settings)


def test_a_series_is_segmented_and_its_results_sent_to_the_destination(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        with scanner(port) as assoc:
            assert [assoc.send_c_store(f).Status for f in series[1][:2]] == [0x0000] * 2
            time.sleep(3 * node.node.quiet)  # quiet, but the association is open: the series is not complete
            assert not Spool(spool_dir).results(series[2]).exists()
            assert [assoc.send_c_store(f).Status for f in series[1][2:]] == [0x0000] * 2
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    check_received(received, segmenter, series)
    assert record["outcome"] == "segmented" and record["series_uid"] == series[2]
    assert sorted(record["sent"]) == sorted(str(ds.SOPInstanceUID) for ds in received)
    assert spooled(spool_dir) == []
    assert counter(metrics, "ldseg_instances_received_total") == 4
    assert counter(metrics, "ldseg_series_total", outcome="segmented") == 1
    assert counter(metrics, "ldseg_request_latency_seconds_count", door="dicom") == 1


@pytest.mark.parametrize("calling, called", [("INTRUDER", NODE_AE), (SCANNER, "OTHER_AE")])
def test_an_association_from_a_caller_not_allowed_or_to_another_title_is_rejected(segmenter, series, tmp_path,
                                                                                   calling, called):
    with running_node(segmenter, tmp_path / "spool", destination="PACS@127.0.0.1:1") as (node, port, metrics):
        with scanner(port, calling, called) as assoc:
            assert assoc is None
        with scanner(port) as assoc:  # while the allowed one is accepted
            assert assoc is not None
    assert spooled(tmp_path / "spool") == []


def test_a_new_series_is_refused_when_the_disk_is_short_but_an_admitted_one_goes_on(segmenter, tmp_path):
    first = write_series(tmp_path / "a", phantom())
    other = write_series(tmp_path / "b", phantom())
    spool_dir = tmp_path / "spool"
    with running_node(segmenter, spool_dir, quiet=60, destination="PACS@127.0.0.1:1") as (node, port, metrics):
        with scanner(port) as assoc:
            assert assoc.send_c_store(first[0]).Status == 0x0000
            node.node = dataclasses.replace(node.node, min_free_bytes=2 ** 62)
            assert assoc.send_c_store(other[0]).Status == 0xA700
            assert assoc.send_c_store(first[1]).Status == 0x0000
        assert counter(metrics, "ldseg_requests_total", door="dicom", outcome="busy") == 1
    first_uid = str(pydicom.dcmread(first[0]).SeriesInstanceUID)
    assert [p.split("/")[1] for p in spooled(spool_dir)] == [first_uid] * 2  # nothing of the refused series


def test_open_associations_hold_no_place_in_the_queue_and_a_complete_series_waits_for_one(segmenter, series,
                                                                                          tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, capacity=1, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port,
                                                                                                          metrics):
        with scanner(port) as assoc:
            assert assoc.send_c_store(series[1][0]).Status == 0x0000
            held = node.work.admit()  # the only place, taken while the association is open: not refused
            assert [assoc.send_c_store(f).Status for f in series[1][1:]] == [0x0000] * 3
        time.sleep(4 * node.node.quiet)
        assert done_record(spool_dir, segmenter, series[2]) is None  # complete, but no place yet
        held.release()
        wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    check_received(received, segmenter, series)


def test_after_a_restart_a_spooled_series_is_processed_once_and_a_resend_is_a_new_series(segmenter, series,
                                                                                          tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received):
        destination = f"{PACS}@127.0.0.1:{pacs_port}"
        with running_node(segmenter, spool_dir, quiet=60, destination=destination) as (node, port, metrics):
            assert send(port, series[1]) == [0x0000] * 4
        assert len(spooled(spool_dir)) == 4 and received == []  # stopped before the series was complete
        with running_node(segmenter, spool_dir, destination=destination) as (node, port, metrics):
            first = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
            assert len(received) == 3
            assert send(port, series[1]) == [0x0000] * 4  # the scanner sends the whole series again
            second = wait_for(lambda: done_record(spool_dir, segmenter, f"{series[2]}+2"), "the second job")
        assert counter(metrics, "ldseg_series_total", outcome="segmented") == 2
        assert spooled(spool_dir) == []
        # the second job's results are a series of their own: they replace nothing
        assert first["outcome"] == second["outcome"] == "segmented" and second["instances"] == 4
        assert not set(first["output_series"]) & set(second["output_series"])
        assert {str(ds.SeriesInstanceUID) for ds in received[3:]} == set(second["output_series"])
        check_received(received[3:], segmenter, series, seed=derived_seed(f"{series[2]}+2"))
        # a crash between the done record and the clean-up: the next start removes the leftover, sends nothing
        Spool(spool_dir).store(series[2], "1.2.3", series[1][0].read_bytes())
        with running_node(segmenter, spool_dir, destination=destination):
            assert spooled(spool_dir) == []
            time.sleep(1.0)
        assert len(received) == 6


def test_after_a_restart_only_the_objects_not_yet_sent_are_sent(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    down = f"{PACS}@127.0.0.1:{free_port()}"
    with running_node(segmenter, spool_dir, destination=down, send_backoff=60) as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        wait_for(lambda: Spool(spool_dir).results_complete(series[2]), "the results")
    spool = Spool(spool_dir)
    seg_uid = str(pydicom.dcmread(spool.results(series[2]) / "segmentation.dcm").SOPInstanceUID)
    spool.mark_sent(series[2], "segmentation.dcm", seg_uid)  # as if the first node had sent it, then died
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}"):
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    assert sorted(kind(ds) for ds in received) == ["FRACTIONAL", "PM"]
    assert sorted(record["sent"]) == sorted([seg_uid, *(str(ds.SOPInstanceUID) for ds in received)])


def test_results_wait_in_the_spool_until_the_destination_is_up(segmenter, series, tmp_path):
    spool_dir, pacs_port = tmp_path / "spool", free_port()
    with running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        wait_for(lambda: Spool(spool_dir).results_complete(series[2]), "the results")
        time.sleep(0.5)  # a few failed attempts
        assert done_record(spool_dir, segmenter, series[2]) is None
        with destination_scp(pacs_port) as (_, received):
            wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    check_received(received, segmenter, series)
    assert spooled(spool_dir) == []


def test_with_an_output_folder_the_case_folder_appears_whole(segmenter, series, tmp_path):
    out = tmp_path / "out"
    with running_node(segmenter, tmp_path / "spool", output_dir=out) as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        wait_for(lambda: done_record(tmp_path / "spool", segmenter, series[2]), "the done record")
    case = out / series[2]
    assert sorted(p.name for p in out.iterdir()) == [series[2]]  # no temporary left beside it
    assert {"result.json", "mask.nii.gz", "probs.nii.gz", "uncertainty.nii.gz", "segmentation.dcm",
            "probabilities.dcm", "uncertainty.dcm"} <= {p.name for p in case.iterdir()}
    sidecar = json.loads((case / "result.json").read_text())
    assert sidecar["series_uid"] == series[2] and sidecar["seed"] == derived_seed(series[2])
    assert sidecar["idempotency_key"] == idempotency_key(series[2], segmenter.model_sha256)
    assert sidecar["n"] == N and sidecar["steps"] == STEPS and sidecar["model_sha256"] == segmenter.model_sha256
    for name, digest in sidecar["outputs"].items():
        assert hashlib.sha256((case / name).read_bytes()).hexdigest() == digest, name
    # The same series through `segment` with the seed the node derived: the same bytes.
    main(["segment", str(series[0]), "-m", "builtin:phantom", "-o", str(tmp_path / "segment"), "-n", str(N),
          "--steps", str(STEPS), "--seed", str(derived_seed(series[2]))])
    by_segment = tmp_path / "segment" / series[0].name
    for name in ("mask.nii.gz", "probs.nii.gz", "uncertainty.nii.gz"):
        assert (by_segment / name).read_bytes() == (case / name).read_bytes(), name


def test_a_series_the_rule_does_not_pick_is_skipped_and_one_that_cannot_be_read_failed(segmenter, tmp_path):
    irregular = write_series(tmp_path / "gap", phantom(5))
    irregular.pop(2)  # a missing slice: not one regular grid
    picked_out = write_series(tmp_path / "mr", phantom())
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}",
                         select="modality=CT") as (node, port, metrics):
        assert send(port, picked_out) == [0x0000] * 4
        uid = str(pydicom.dcmread(picked_out[0]).SeriesInstanceUID)
        skipped = wait_for(lambda: done_record(spool_dir, segmenter, uid), "the skipped record")
        node.options = SegmentOptions.of(node.options, select=None)  # the gap, not the rule, must be why
        assert send(port, irregular) == [0x0000] * 4
        gap_uid = str(pydicom.dcmread(irregular[0]).SeriesInstanceUID)
        failed = wait_for(lambda: done_record(spool_dir, segmenter, gap_uid), "the failed record")
    assert received == []
    assert skipped["outcome"] == "skipped" and "no DICOM series matches" in skipped["reason"]
    assert failed["outcome"] == "failed" and "slice" in failed["reason"], failed["reason"]
    assert len(list((spool_dir / "failed" / gap_uid).iterdir())) == 4  # kept for inspection
    assert spooled(spool_dir) == []
    assert counter(metrics, "ldseg_series_total", outcome="skipped") == 1
    assert counter(metrics, "ldseg_series_total", outcome="failed") == 1


# --- what a hospital's network does


def uid_of(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_an_aborted_series_waits_for_a_resend_and_is_then_segmented_whole(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        ae = AE(SCANNER)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert [assoc.send_c_store(f).Status for f in series[1][:2]] == [0x0000] * 2
        assoc.abort()  # the scanner drops the association mid-series
        time.sleep(6 * node.node.quiet)
        assert done_record(spool_dir, segmenter, series[2]) is None and received == []  # never from a part
        assert send(port, series[1]) == [0x0000] * 4  # the full resend completes it
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    assert record["outcome"] == "segmented" and record["instances"] == 4
    check_received(received, segmenter, series)


@pytest.mark.parametrize("break_it", ["abort", "refused store", "idle"])
def test_a_series_nothing_completes_is_failed_after_incomplete_after(segmenter, series, tmp_path, monkeypatch,
                                                                     break_it, caplog):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}", incomplete_after=2.0,
                         idle_timeout=1.0) as (node, port, metrics):
        ae = AE(SCANNER)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert [assoc.send_c_store(f).Status for f in series[1][:2]] == [0x0000] * 2
        if break_it == "abort":
            assoc.abort()
        elif break_it == "refused store":
            def full(*args, **kwargs):
                raise OSError(28, "No space left on device")
            monkeypatch.setattr(node.spool, "store", full)
            assert assoc.send_c_store(series[1][2]).Status == 0xA700
            monkeypatch.undo()
            assoc.release()
        else:  # the scanner goes silent: the node releases it after idle_timeout
            wait_for(lambda: not assoc.is_established, "the node to end the idle association")
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the failed record")
    assert received == []
    assert record["outcome"] == "failed" and record["reason"].startswith("incomplete:"), record["reason"]
    assert ("refused" if break_it == "refused store" else "before a normal release") in record["reason"]
    assert len(list((spool_dir / "failed" / series[2]).iterdir())) == 2  # what arrived is kept for inspection
    assert spooled(spool_dir) == []


def test_a_second_association_past_max_associations_is_rejected_and_c_echo_is_answered(segmenter, tmp_path):
    with running_node(segmenter, tmp_path / "spool", destination="PACS@127.0.0.1:1", max_associations=1) as (
            node, port, metrics):
        with scanner(port) as first:
            assert first is not None
            ae = AE(SCANNER)
            ae.add_requested_context(MRImageStorage)
            second = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
            assert second.is_rejected  # a proper A-ASSOCIATE-RJ, not a dropped connection
        echo = AE(SCANNER)
        echo.add_requested_context("1.2.840.10008.1.1")
        assoc = wait_for(lambda: (a := echo.associate("127.0.0.1", port, ae_title=NODE_AE)).is_established and a,
                         "an association once the first ended")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_an_sr_in_the_series_is_set_aside_and_the_nodes_own_outputs_are_never_segmented(segmenter, series, tmp_path,
                                                                                         caplog):
    caplog.set_level(logging.INFO, logger="ldseg_rt")
    spool_dir = tmp_path / "spool"
    source = pydicom.dcmread(series[1][0])
    note = base_dataset(EnhancedSRStorage, series[2], modality="SR", study_uid=str(source.StudyInstanceUID))
    note.ValueType, note.CompletionFlag, note.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    sr_path = save(note, tmp_path / "note.dcm")
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        ae = AE(SCANNER)
        for sop_class in (MRImageStorage, EnhancedSRStorage, SegmentationStorage, ParametricMapStorage):
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert [assoc.send_c_store(f).Status for f in [*series[1][:2], sr_path, *series[1][2:]]] == [0x0000] * 5
        assoc.release()
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
        # a router sends the node's outputs back to it: acknowledged, and nothing new is segmented
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert [assoc.send_c_store(ds).Status for ds in list(received)] == [0x0000] * 3
        assoc.release()
        time.sleep(4 * node.node.quiet)
        assert Spool(spool_dir).jobs() == []
    assert record["outcome"] == "segmented" and record["instances"] == 4
    check_received(received, segmenter, series)
    assert len(received) == 3
    assert "3 of the node's own outputs ignored" in caplog.text and "1 other object(s) set aside" in caplog.text


def test_a_destination_that_takes_only_seg_gets_the_seg_and_one_down_is_given_up(segmenter, series, tmp_path,
                                                                                  caplog):
    spool_dir = tmp_path / "spool"
    with destination_scp(sop_classes=(SegmentationStorage,)) as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    assert sorted(kind(ds) for ds in received) == ["BINARY", "FRACTIONAL"]
    assert record["outcome"] == "segmented"
    assert record["refused"] == {"uncertainty.dcm": "destination does not accept Parametric Map Storage"}
    assert "refused uncertainty.dcm" in caplog.text
    other = write_series(tmp_path / "b", phantom())
    with running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{free_port()}", send_retries=1,
                      send_backoff=0.1) as (node, port, metrics):
        assert send(port, other) == [0x0000] * 4
        record = wait_for(lambda: done_record(spool_dir, segmenter, uid_of(other[0])), "the undelivered record")
    kept = spool_dir / "undelivered" / uid_of(other[0])
    assert record["outcome"] == "undelivered" and "after 2 attempts" in record["reason"]
    assert {"segmentation.dcm", "uncertainty.dcm", "result.json", "reason.txt"} <= {p.name for p in kept.iterdir()}
    assert spooled(spool_dir) == []  # the series is done: no received images left


def test_warnings_travel_in_the_outputs_and_the_received_images_are_kept_when_asked(segmenter, tmp_path):
    stored = phantom(5)
    stored[4] = 100  # a slice without contrast: segmented as background, with a warning
    files = write_series(tmp_path / "flat", stored)
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}",
                         keep_received=True) as (node, port, metrics):
        assert send(port, files) == [0x0000] * 5
        record = wait_for(lambda: done_record(spool_dir, segmenter, uid_of(files[0])), "the done record")
    assert record["warnings"] and "no contrast" in record["warnings"][0]
    for ds in received:
        assert "no contrast" in ds.ImageComments and "warnings" in ds.ContentDescription
    assert len(list((spool_dir / "received" / uid_of(files[0])).iterdir())) == 5


def test_a_wrong_called_ae_title_is_logged_as_such(segmenter, tmp_path, caplog):
    with running_node(segmenter, tmp_path / "spool", destination="PACS@127.0.0.1:1") as (node, port, metrics):
        with scanner(port, SCANNER, "NOT_THE_NODE") as assoc:
            assert assoc is None
        wait_for(lambda: "NOT_THE_NODE" in caplog.text, "the log line")
    assert f"it called AE title 'NOT_THE_NODE', not this node's '{NODE_AE}'" in caplog.text


# --- dcmtk as the scanner and the destination

@needs_dcmtk
@pytest.mark.parametrize("codec", ["jpegls", "rle"])
def test_dcmtk_echoes_and_sends_a_compressed_series_that_is_segmented_as_the_uncompressed_one(segmenter, series,
                                                                                               tmp_path, codec):
    compressed = [compress(f, tmp_path / f"{f.name}.{codec}.dcm", codec) for f in series[1]]
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in compressed} == {KINDS[codec]}
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}",
                         allowed_aes=("ECHOSCU", "STORESCU")) as (node, port, metrics):
        assert echoscu(port, NODE_AE).returncode == 0
        sent = storescu(port, compressed, NODE_AE)
        assert sent.returncode == 0, sent.stderr
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    assert record["outcome"] == "segmented"
    check_received(received, segmenter, series)  # the same as the uncompressed series gives


@needs_dcmtk
def test_a_dcmtk_destination_without_parametric_map_gets_the_segmentations(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    with storescp(tmp_path / "pacs", PACS, sop_classes=[SegmentationStorage]) as (pacs_port, folder), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    stored = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    assert sorted(kind(ds) for ds in stored) == ["BINARY", "FRACTIONAL"]
    assert sorted(record["sent"]) == sorted(str(ds.SOPInstanceUID) for ds in stored)
    assert list(record["refused"]) == ["uncertainty.dcm"]
