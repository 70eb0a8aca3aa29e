"""The DICOM node against real pynetdicom peers on 127.0.0.1: a scanner (SCU) sends synthetic
series, a destination (SCP) collects what the node sends back."""
import hashlib
import json
import socket
import time
from contextlib import contextmanager

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, ParametricMapStorage, SegmentationStorage

from dicom_factory import write_series
from ldseg_rt import SegmentOptions, Segmenter
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
def destination_scp(port: int = 0):
    """A destination AE collecting what it receives: (port, list of datasets)."""
    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(PACS)
    for sop_class in (SegmentationStorage, ParametricMapStorage):
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


@contextmanager
def running_node(segmenter, spool_dir, capacity: int = 4, select: str | None = None, **options):
    """A started DicomNode (n=2, steps=2, quiet 0.5 s, retry 0.2 s) with a work queue of its
    own: (node, port, metrics); stopped, and its queue closed, after."""
    work, metrics = WorkQueue(capacity), Metrics()
    options = {"quiet": 0.5, "retry": 0.2, "min_free_bytes": 2 ** 20, **options}
    node = DicomNode(segmenter, work, metrics, Spool(spool_dir), ae_title=NODE_AE, allowed_aes=[SCANNER],
                     options=SegmentOptions(n=N, steps=STEPS, select=select), **options)
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


def check_received(received, segmenter, series) -> None:
    """One Segmentation and one Parametric Map of the series, in its study and frame of
    reference, holding the segmenter's mask and uncertainty for the derived seed, slice by slice."""
    folder, files, series_uid = series
    assert sorted(str(ds.SOPClassUID) for ds in received) == sorted([ParametricMapStorage, SegmentationStorage])
    sources = [pydicom.dcmread(f) for f in files]
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    expected = segmenter.segment_volume(read_dicom_series(folder), n=N, seed=derived_seed(series_uid), steps=STEPS,
                                        progress=False)
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
            if ds.SOPClassUID == SegmentationStorage:
                segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                np.testing.assert_array_equal(frames[f], expected.mask[:, :, k].T == segment, err_msg=f"slice {k}")
                seen.add((k, segment))
            else:
                np.testing.assert_allclose(frames[f], expected.uncertainty[:, :, k].T, rtol=0, atol=1e-7)
                seen.add(k)
        assert seen == ({(k, s) for k in range(4) for s in (1, 2)} if ds.SOPClassUID == SegmentationStorage
                        else set(range(4)))
    assert hd.seg.Segmentation.from_dataset(next(ds for ds in received if ds.Modality == "SEG")).number_of_segments == 2


def test_destination_and_arguments_are_checked(segmenter, tmp_path):
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    assert Destination.parse("PACS@[::1]:11112") == Destination("PACS", "::1", 11112)
    for text in ("PACS:104", "PACS@host", "PACS@host:0", "A_TITLE_LONGER_THAN_16@h:104"):
        with pytest.raises(InvalidArgumentError, match="AE@HOST:PORT"):
            Destination.parse(text)
    work = WorkQueue(1)
    try:
        for options in ({"destination": "PACS@h:104", "output_dir": tmp_path}, {},
                        {"destination": "PACS@h:104", "allowed_aes": ()}):
            with pytest.raises(InvalidArgumentError):
                DicomNode(segmenter, work, Metrics(), Spool(tmp_path / "spool"), **options)
    finally:
        work.close()


def test_a_series_is_segmented_and_its_results_sent_to_the_destination(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}") as (node, port, metrics):
        with scanner(port) as assoc:
            assert [assoc.send_c_store(f).Status for f in series[1][:2]] == [0x0000] * 2
            time.sleep(3 * node.quiet)  # quiet, but the association is open: the series is not complete
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


@pytest.mark.parametrize("shortage", ["queue full", "disk short"])
def test_a_new_series_is_refused_when_there_is_no_room_but_an_admitted_one_goes_on(segmenter, tmp_path, shortage):
    first = write_series(tmp_path / "a", phantom())
    other = write_series(tmp_path / "b", phantom())
    spool_dir = tmp_path / "spool"
    with running_node(segmenter, spool_dir, capacity=2, quiet=60, destination="PACS@127.0.0.1:1") as (node, port,
                                                                                                      metrics):
        with scanner(port) as assoc:
            assert assoc.send_c_store(first[0]).Status == 0x0000
            if shortage == "queue full":
                held = node.work.admit()  # the second and last place
            else:
                node.min_free_bytes = 2 ** 62
            assert assoc.send_c_store(other[0]).Status == 0xA700
            assert assoc.send_c_store(first[1]).Status == 0x0000
        if shortage == "queue full":
            held.release()
        assert counter(metrics, "ldseg_requests_total", door="dicom", outcome="busy") == 1
    first_uid = str(pydicom.dcmread(first[0]).SeriesInstanceUID)
    assert [p.split("/")[1] for p in spooled(spool_dir)] == [first_uid] * 2  # nothing of the refused series


def test_after_a_restart_a_spooled_series_is_processed_once_and_a_resend_is_acknowledged(segmenter, series,
                                                                                         tmp_path):
    spool_dir = tmp_path / "spool"
    with destination_scp() as (pacs_port, received):
        destination = f"{PACS}@127.0.0.1:{pacs_port}"
        with running_node(segmenter, spool_dir, quiet=60, destination=destination) as (node, port, metrics):
            assert send(port, series[1]) == [0x0000] * 4
        assert len(spooled(spool_dir)) == 4 and received == []  # stopped before the series was complete
        with running_node(segmenter, spool_dir, destination=destination) as (node, port, metrics):
            wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
            assert send(port, series[1]) == [0x0000] * 4
            wait_for(lambda: counter(metrics, "ldseg_series_total", outcome="duplicate") == 1, "the duplicate")
            time.sleep(1.0)  # more than quiet: a resend that was taken for a new series would be processing
        assert sorted(str(ds.SOPClassUID) for ds in received) == sorted([ParametricMapStorage, SegmentationStorage])
        assert counter(metrics, "ldseg_series_total", outcome="segmented") == 1
        assert spooled(spool_dir) == []
        # a crash between the done record and the clean-up: the next start removes the leftover, sends nothing
        Spool(spool_dir).store(series[2], "1.2.3", series[1][0].read_bytes())
        with running_node(segmenter, spool_dir, destination=destination):
            assert spooled(spool_dir) == []
            time.sleep(1.0)
        assert len(received) == 2


def test_after_a_restart_only_the_objects_not_yet_sent_are_sent(segmenter, series, tmp_path):
    spool_dir = tmp_path / "spool"
    down = f"{PACS}@127.0.0.1:{free_port()}"
    with running_node(segmenter, spool_dir, destination=down, retry=60) as (node, port, metrics):
        assert send(port, series[1]) == [0x0000] * 4
        wait_for(lambda: Spool(spool_dir).results_complete(series[2]), "the results")
    spool = Spool(spool_dir)
    seg_uid = str(pydicom.dcmread(spool.results(series[2]) / "segmentation.dcm").SOPInstanceUID)
    spool.mark_sent(series[2], "segmentation.dcm", seg_uid)  # as if the first node had sent it, then died
    with destination_scp() as (pacs_port, received), \
            running_node(segmenter, spool_dir, destination=f"{PACS}@127.0.0.1:{pacs_port}"):
        record = wait_for(lambda: done_record(spool_dir, segmenter, series[2]), "the done record")
    assert [str(ds.SOPClassUID) for ds in received] == [ParametricMapStorage]
    assert sorted(record["sent"]) == sorted([seg_uid, str(received[0].SOPInstanceUID)])


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
