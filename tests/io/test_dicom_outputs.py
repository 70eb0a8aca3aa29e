"""DICOM outputs (ldseg_rt.io.dicom_outputs): the Segmentation, fractional Segmentation and
Parametric Map read back with pydicom/highdicom place voxel (i, j, k) of the result where
voxel (i, j, k) of an oblique source series lies, hold the values written, keep the source's
study and frame of reference in a new series, and are written atomically."""
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_factory import OBLIQUE, write_series
from ldseg_rt.errors import InvalidArgumentError, InvalidImageError
from ldseg_rt.io.dicom_outputs import write_parametric_map, write_probability_segmentation, write_segmentation

I, J, K = 5, 6, 4  # columns, rows, slices: all different, so a transposition cannot pass
CLASS_NAMES = ["background", "lesion", "oedema"]
SPACING = (0.8, 0.7, 2.5)  # mm along i, j, k


def make_series(folder, descending: bool = False) -> list[Dataset]:
    """An oblique MR series, saved and read back as a reader would give it, in k order: along
    the slice normal, or against it."""
    stored = np.random.default_rng(0).integers(-100, 1000, (K, J, I)).astype(np.int16)
    normal, origin = OBLIQUE[:, 2], np.array([-40.0, 25.0, 10.0])
    if descending:
        origin, step = origin + (K - 1) * SPACING[2] * normal, -SPACING[2]
    else:
        step = SPACING[2]
    files = write_series(folder, stored, rotation=OBLIQUE, pixel_spacing=(SPACING[1], SPACING[0]), step=step,
                         origin=origin)
    return [pydicom.dcmread(f) for f in files]


@pytest.fixture
def sources(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    return make_series(folder)


def random_labels(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(CLASS_NAMES), (I, J, K), dtype=np.uint8)


def by_uid(sources) -> dict[str, tuple[int, Dataset]]:
    return {str(ds.SOPInstanceUID): (k, ds) for k, ds in enumerate(sources)}


def referenced_slice(frame_item, sources) -> tuple[int, Dataset]:
    """The source slice (k, dataset) a frame says it was derived from."""
    uid = frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    return by_uid(sources)[str(uid)]


def check_frame_geometry(out: Dataset, frame_item, source: Dataset) -> None:
    """The frame lies where the source slice lies: same position, orientation and spacing, so
    pixel (row j, column i) of both is the same point in the patient."""
    np.testing.assert_allclose(np.array(frame_item.PlanePositionSequence[0].ImagePositionPatient, float),
                               np.array(source.ImagePositionPatient, float), atol=1e-4)
    shared = out.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
                               np.array(source.ImageOrientationPatient, float), atol=1e-6)
    np.testing.assert_allclose(np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float),
                               np.array(source.PixelSpacing, float), atol=1e-6)


def check_new_series_same_study(out: Dataset, sources) -> None:
    source = sources[0]
    assert out.StudyInstanceUID == source.StudyInstanceUID
    assert out.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert out.SeriesInstanceUID != source.SeriesInstanceUID
    assert out.SOPInstanceUID not in by_uid(sources)
    assert out.PatientID == source.PatientID
    referenced = out.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    referenced_uids = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
    assert referenced_uids == set(by_uid(sources))


def check_segments(seg, algorithm_name: str = "ldseg_rt") -> None:
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "lesion"), (2, "oedema")]
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == algorithm_name and algorithm.AlgorithmVersion
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


@pytest.mark.parametrize("descending", [False, True], ids=["along-normal", "against-normal"])
def test_segmentation_frames_match_labels_and_source_slices(tmp_path, descending):
    folder = tmp_path / "series"
    folder.mkdir()
    sources = make_series(folder, descending)
    labels = random_labels()
    path = write_segmentation(tmp_path / "out" / "seg.dcm", labels, sources, CLASS_NAMES, algorithm=("net", "2.1"))
    assert path == tmp_path / "out" / "seg.dcm"

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    check_segments(seg, "net")
    check_new_series_same_study(seg, sources)
    frames = pydicom.dcmread(path).pixel_array
    seen = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k, source = referenced_slice(item, sources)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        check_frame_geometry(seg, item, source)
        np.testing.assert_array_equal(frames[f], labels[:, :, k].T == segment, err_msg=f"frame {f}")
        seen.add((k, segment))
    assert seen == {(k, s) for k in range(K) for s in (1, 2)}  # every slice of every segment, empty or not


def test_probability_segmentation_matches_within_one_step(tmp_path, sources):
    rng = np.random.default_rng(2)
    probabilities = rng.dirichlet(np.ones(len(CLASS_NAMES)), (I, J, K)).transpose(3, 0, 1, 2)  # (C, I, J, K)
    probabilities[1, 0, 0, 0] = 1 + 1e-7  # float32 means may pass 1 by rounding: accepted, stored as 255
    path = write_probability_segmentation(tmp_path / "probs.dcm", probabilities, sources, CLASS_NAMES)
    probabilities = np.clip(probabilities, 0, 1)

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == 255
    check_segments(seg)
    check_new_series_same_study(seg, sources)
    stored = pydicom.dcmread(path).pixel_array
    assert len(seg.PerFrameFunctionalGroupsSequence) == K * 2
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k, source = referenced_slice(item, sources)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        check_frame_geometry(seg, item, source)
        np.testing.assert_allclose(stored[f] / 255.0, probabilities[segment, :, :, k].T, atol=1 / 255)


def test_write_segmentation_with_probabilities_writes_the_fractional_one(tmp_path, sources):
    labels = random_labels()
    probabilities = np.stack([labels == c for c in range(len(CLASS_NAMES))]).astype(np.float64) * 0.9
    path = write_segmentation(tmp_path / "seg.dcm", labels, sources, CLASS_NAMES, probabilities=probabilities)
    assert hd.seg.segread(path).SegmentationType == "FRACTIONAL"


def test_parametric_map_holds_the_values_and_their_mapping(tmp_path, sources):
    values = np.random.default_rng(3).random((I, J, K), dtype=np.float32)
    path = write_parametric_map(tmp_path / "uncertainty.dcm", values, sources)

    dataset = pydicom.dcmread(path)
    pm = hd.pm.ParametricMap.from_dataset(dataset)
    check_new_series_same_study(pm, sources)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "uncertainty"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == 0.0
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == 1.0
    assert "FloatPixelData" in dataset
    frames = dataset.pixel_array
    assert frames.dtype == np.float32 and len(pm.PerFrameFunctionalGroupsSequence) == K
    for f, item in enumerate(pm.PerFrameFunctionalGroupsSequence):
        k, source = referenced_slice(item, sources)
        check_frame_geometry(pm, item, source)
        np.testing.assert_array_equal(frames[f], values[:, :, k].T)


def test_mismatches_are_refused_naming_them(tmp_path, sources):
    labels = random_labels()
    with pytest.raises(InvalidArgumentError, match="4 slices.*3 source"):
        write_segmentation(tmp_path / "a.dcm", labels, sources[:3], CLASS_NAMES)
    with pytest.raises(InvalidArgumentError, match="Columns 5 and Rows 6"):
        write_segmentation(tmp_path / "a.dcm", labels.transpose(1, 0, 2), sources, CLASS_NAMES)  # (J, I, K)
    with pytest.raises(InvalidArgumentError, match="class ids 0..2 but only 2 class names"):
        write_segmentation(tmp_path / "a.dcm", labels, sources, CLASS_NAMES[:2])
    with pytest.raises(InvalidArgumentError, match="2 class names given for 3 classes"):
        write_probability_segmentation(tmp_path / "a.dcm", np.full((3, I, J, K), 1 / 3), sources, CLASS_NAMES[:2])
    with pytest.raises(InvalidArgumentError, match="within"):
        write_probability_segmentation(tmp_path / "a.dcm", np.full((3, I, J, K), 1.5), sources, CLASS_NAMES)
    with pytest.raises(InvalidArgumentError, match="do not fit labels"):
        write_segmentation(tmp_path / "a.dcm", labels, sources, CLASS_NAMES, probabilities=np.zeros((3, I, J, K - 1)))
    with pytest.raises(InvalidArgumentError, match="Columns 5 and Rows 6"):
        write_parametric_map(tmp_path / "a.dcm", np.zeros((J, I, K), np.float32), sources)
    with pytest.raises(InvalidArgumentError, match="within"):
        write_parametric_map(tmp_path / "a.dcm", np.full((I, J, K), np.nan, np.float32), sources)
    del sources[1].ImagePositionPatient
    with pytest.raises(InvalidImageError, match="source dataset 1 .* lacks ImagePositionPatient"):
        write_segmentation(tmp_path / "a.dcm", labels, sources, CLASS_NAMES)
    assert not list(tmp_path.glob("a.dcm*")) and not list(tmp_path.glob(".a.dcm*"))


def test_failure_mid_write_leaves_no_file(tmp_path, sources, monkeypatch):
    def broken_save(self, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_as", broken_save)
    target = tmp_path / "out" / "seg.dcm"
    with pytest.raises(OSError, match="disk full"):
        write_segmentation(target, random_labels(), sources, CLASS_NAMES)
    with pytest.raises(OSError, match="disk full"):
        write_parametric_map(target, np.zeros((I, J, K), np.float32), sources)
    assert list(target.parent.iterdir()) == []  # neither the target nor a temporary file
