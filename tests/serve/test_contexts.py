"""The node's presentation contexts: the compressed files modalities send (made here by dcmtk's
own encoders) are offered, received over the network from dcmtk's storescu and decoded exactly;
only images count as images."""
import threading

import numpy as np
import pydicom
import pytest
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, EnhancedMRImageStorage,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, UID)
from pynetdicom import AE, evt, sop_class

from dcmtk import KINDS, compress, echoscu, needs_dcmtk, storescp, storescu
from dicom_factory import write_series
from ldseg_rt.serve.contexts import decodable_transfer_syntaxes, image_storage_contexts, is_image_storage

NODE_AE = "LDSEG_RT"
TIMEOUT = 30.0
DCMTK_KINDS = ["jpegls", "rle", "jpeg-lossless", "jpeg-lossless-p14"]


def stored_values(signed: bool, rng) -> np.ndarray:
    """Two slices of noise over the whole 16-bit range, so no codec gets away with fewer bits."""
    info = np.iinfo(np.int16 if signed else np.uint16)
    return rng.integers(info.min, info.max, (2, 40, 48), endpoint=True).astype(info.dtype)


@pytest.fixture(scope="module", params=[True, False], ids=["int16", "uint16"])
def series(request, tmp_path_factory):
    rng = np.random.default_rng(7)
    stored = stored_values(request.param, rng)
    return write_series(tmp_path_factory.mktemp("series"), stored, signed=request.param), stored


def test_offers_uncompressed_first_then_every_decodable_codec():
    syntaxes = decodable_transfer_syntaxes()
    assert syntaxes[:2] == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert all(not ts.is_compressed for ts in syntaxes[:3]) and len(set(syntaxes)) == len(syntaxes)
    # what requirements.txt pins must decode
    assert {DeflatedExplicitVRLittleEndian, *KINDS.values(), pydicom.uid.JPEGLSNearLossless,
            pydicom.uid.JPEG2000, pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit} <= set(syntaxes)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in DCMTK_KINDS]
                         + [pytest.param(k, marks=needs_dcmtk) for k in DCMTK_KINDS])
def test_compressed_files_decode_exactly(kind, series, tmp_path):
    files, stored = series
    ds = pydicom.dcmread(compress(files[0], tmp_path / "compressed.dcm", kind))
    assert ds.file_meta.TransferSyntaxUID == KINDS[kind]
    assert KINDS[kind] in decodable_transfer_syntaxes()
    np.testing.assert_array_equal(ds.pixel_array, stored[0])


def test_deflated_file_decodes(series, tmp_path):
    files, stored = series
    ds = pydicom.dcmread(files[1])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "deflated.dcm")
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert DeflatedExplicitVRLittleEndian in decodable_transfer_syntaxes()
    np.testing.assert_array_equal(back.pixel_array, stored[1])


IMAGES = [CTImageStorage, MRImageStorage, EnhancedMRImageStorage, sop_class.SecondaryCaptureImageStorage,
          sop_class.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, sop_class.UltrasoundImageStorage,
          sop_class.PositronEmissionTomographyImageStorage, sop_class.NuclearMedicineImageStorage,
          sop_class.DigitalXRayImageStorageForPresentation, sop_class.EnhancedCTImageStorage,
          sop_class.LegacyConvertedEnhancedMRImageStorage]
NOT_IMAGES = [sop_class.BasicTextSRStorage, sop_class.EnhancedSRStorage, sop_class.ComprehensiveSRStorage,
              sop_class.GrayscaleSoftcopyPresentationStateStorage, sop_class.KeyObjectSelectionDocumentStorage,
              sop_class.SegmentationStorage, sop_class.ParametricMapStorage, sop_class.EncapsulatedPDFStorage,
              sop_class.RTStructureSetStorage, sop_class.RTDoseStorage, sop_class.RTPlanStorage,
              sop_class.RTImageStorage, sop_class.RawDataStorage, sop_class.Verification,
              "1.2.826.0.1.3680043.8.498.1.2.3", "1.2.3.4", ""]


def test_only_images_are_image_storage():
    assert [uid for uid in IMAGES if not is_image_storage(uid)] == []
    assert [uid for uid in NOT_IMAGES if is_image_storage(uid)] == []


def test_contexts_cover_storage_and_verification_with_every_decodable_syntax():
    contexts = image_storage_contexts()
    syntaxes = decodable_transfer_syntaxes()
    abstract = [cx.abstract_syntax for cx in contexts]
    assert sop_class.Verification in abstract and MRImageStorage in abstract and CTImageStorage in abstract
    assert len(set(abstract)) == len(abstract)
    assert all(cx.transfer_syntax == syntaxes for cx in contexts)
    ae = AE()
    ae.supported_contexts = contexts  # an acceptor's list is not capped (128 caps what one requestor proposes)
    assert len(ae.supported_contexts) == len(contexts)  # no cap on what an acceptor supports


@pytest.fixture
def node():
    """A pynetdicom acceptor with the node's contexts on a free loopback port; yields (port,
    received), received being (accepted transfer syntax, dataset) per C-STORE."""
    received = []
    lock = threading.Lock()

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        with lock:
            received.append((UID(event.context.transfer_syntax), ds))
        return 0x0000

    ae = AE(ae_title=NODE_AE)
    ae.supported_contexts = image_storage_contexts()
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


@needs_dcmtk
def test_node_answers_echoscu(node):
    port, _ = node
    done = echoscu(port, NODE_AE)
    assert done.returncode == 0, done.stderr


@needs_dcmtk
def test_node_receives_compressed_files_from_storescu_as_sent(node, series, tmp_path):
    port, received = node
    files, stored = series
    sent = {kind: compress(files[0], tmp_path / f"{kind}.dcm", kind) for kind in [*DCMTK_KINDS, "j2k"]}
    deflated = pydicom.dcmread(files[1])
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    done = storescu(port, [*sent.values(), tmp_path / "deflated.dcm", files[1]], NODE_AE, extra_args=["-v"])
    assert done.returncode == 0, done.stderr  # storescu stops, non-zero, at a status other than 0x0000
    assert done.stderr.count("Received Store Response (Success)") == len(sent) + 2
    # each file in its own syntax; the uncompressed one in the node's first choice among those proposed
    expected = [*(KINDS[k] for k in sent), DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert [ts for ts, _ in received] == expected
    for (ts, ds), k in zip(received, [0] * len(sent) + [1, 1]):
        assert ds.file_meta.TransferSyntaxUID == ts
        np.testing.assert_array_equal(ds.pixel_array, stored[k])


@needs_dcmtk
def test_storescp_accepts_only_the_sop_classes_it_is_given(series, tmp_path):
    files, _ = series
    jpegls = compress(files[0], tmp_path / "jpegls.dcm", "jpegls")
    with storescp(tmp_path / "mr", sop_classes=[MRImageStorage]) as (port, folder):
        assert echoscu(port, "STORESCP").returncode == 0
        done = storescu(port, [jpegls], "STORESCP")
        assert done.returncode == 0, done.stderr
        [got] = [pydicom.dcmread(p) for p in folder.iterdir()]
        assert got.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
        assert got.PixelData == pydicom.dcmread(jpegls).PixelData
    with storescp(tmp_path / "ct", sop_classes=[CTImageStorage]) as (port, folder):
        assert storescu(port, [jpegls], "STORESCP").returncode != 0
        assert list(folder.iterdir()) == []
