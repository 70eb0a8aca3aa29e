"""DICOM series reading: exact geometry, series selection, and clear errors on bad input.

The series are written here with pydicom from a known array and a known geometry; the
expected patient positions are computed from each written file's own IPP/IOP/PixelSpacing.
"""
import logging
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (ComprehensiveSRStorage, EncapsulatedPDFStorage, ExplicitVRBigEndian,
                         SecondaryCaptureImageStorage, generate_uid)

from dicom_factory import AXIAL, OBLIQUE, base_dataset, ds_values, image_dataset, save, write_series
from ldseg_rt.errors import DatasetError, InvalidArgumentError, InvalidImageError
from ldseg_rt.io.dicom_series import (SeriesRule, find_series, read_dicom_image, read_dicom_series, select_series,
                                      series_volume)


def stored_values(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2000, 3000, size=shape).astype(np.int16)


def expected_ras(path: Path, i: int, j: int) -> np.ndarray:
    """The RAS centre of pixel (row j, column i) from the file's own geometry."""
    ds = pydicom.dcmread(path)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
    lps = ipp + iop[:3] * between_columns * i + iop[3:] * between_rows * j
    return np.array([-lps[0], -lps[1], lps[2]])


# --- geometry and values ---------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_series_reads_with_exact_values_and_geometry(tmp_path, orientation):
    stored = stored_values((7, 9, 11))  # (slices, rows, columns)
    slope, intercept = 0.5, -1024.0
    files = write_series(tmp_path, stored, rotation=orientation, slope=slope, intercept=intercept)

    volume = read_dicom_series(tmp_path)

    expected = (stored * slope + intercept).transpose(2, 1, 0)  # (i = column, j = row, k)
    assert volume.array.shape == (11, 9, 7)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, expected)
    rng = np.random.default_rng(1)
    for _ in range(20):
        i, j, k = (int(rng.integers(n)) for n in volume.array.shape)
        np.testing.assert_allclose(volume.affine @ [i, j, k, 1], [*expected_ras(files[k], i, j), 1], atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (0.9, 0.7, 2.5), atol=1e-9)
    assert [ds.SOPInstanceUID for ds in volume.source] == [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert all("PixelData" in ds for ds in volume.source)
    assert "MR T1 axial" in volume.description and str(tmp_path) in volume.description


def test_single_slice_uses_slice_thickness(tmp_path):
    files = write_series(tmp_path, stored_values((1, 4, 5)), rotation=OBLIQUE)
    volume = read_dicom_series(tmp_path)
    assert volume.array.shape == (5, 4, 1)
    np.testing.assert_allclose(volume.spacing, (0.9, 0.7, 3.0), atol=1e-9)  # SliceThickness
    np.testing.assert_allclose(volume.affine @ [2, 3, 0, 1], [*expected_ras(files[0], 2, 3), 1], atol=1e-6)
    normal_ras = OBLIQUE[:, 2] * [-1, -1, 1]
    np.testing.assert_allclose(volume.affine[:3, 2] / 3.0, normal_ras, atol=1e-9)


def test_big_endian_signed_series_is_native_and_correct(tmp_path):
    stored = stored_values((4, 5, 6), seed=2)
    write_series(tmp_path, stored, big_endian=True)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    volume = read_dicom_series(tmp_path)
    assert volume.array.dtype.byteorder in ("=", "|") and volume.array.dtype.isnative
    np.testing.assert_array_equal(volume.array, stored.transpose(2, 1, 0))
    assert volume.array.min() < 0


def test_signed_values_in_fewer_bits_stored_are_sign_extended(tmp_path):
    stored = np.array([[[-2048, -5], [0, 2047]]], np.int16)
    write_series(tmp_path, stored, bits_stored=12, slope=2.0, intercept=10.0)
    volume = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(volume.array[..., 0], (stored[0] * 2.0 + 10.0).T)


@pytest.mark.parametrize("big_endian", [False, True])
def test_read_dicom_image_greyscale(tmp_path, big_endian):
    stored = stored_values((5, 7), seed=3)
    ds = image_dataset(stored, generate_uid(), big_endian=big_endian, slope=0.25, intercept=-3.0)
    image = read_dicom_image(save(ds, tmp_path / "one.dcm"))
    assert image.shape == (5, 7) and image.dtype == np.float32 and image.dtype.isnative
    np.testing.assert_array_equal(image, stored * 0.25 - 3.0)


def test_read_dicom_image_rgb_and_wide_values(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
    ds = base_dataset(SecondaryCaptureImageStorage, generate_uid(), modality="OT")
    ds.Rows, ds.Columns = 4, 6
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    image = read_dicom_image(save(ds, tmp_path / "rgb.dcm"))
    assert image.shape == (4, 6, 3)
    np.testing.assert_array_equal(image, rgb)

    # 32-bit values beyond 2**24 would be rounded in float32
    wide = np.array([[2**30 + 1, -(2**30) - 3]], np.int32)
    ds = image_dataset(np.zeros((1, 2), np.int16), generate_uid())
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = wide.astype("<i4").tobytes()
    image = read_dicom_image(save(ds, tmp_path / "wide.dcm"))
    assert image.dtype == np.float64
    np.testing.assert_array_equal(image, wide)


def test_read_dicom_image_refuses_multiframe_and_non_images(tmp_path):
    ds = image_dataset(np.zeros((4, 4), np.int16), generate_uid())
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, 4, 4), "<u2").tobytes()
    with pytest.raises(InvalidImageError, match="multi-frame"):
        read_dicom_image(save(ds, tmp_path / "multi.dcm"))
    with pytest.raises(InvalidImageError, match="Comprehensive SR Storage.*not an image"):
        read_dicom_image(save(sr_dataset(generate_uid()), tmp_path / "sr.dcm"))
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(InvalidImageError, match="not a DICOM file"):
        read_dicom_image(tmp_path / "notes.txt")


# --- finding and selecting series ------------------------------------------------------------

def write_study(folder: Path) -> dict:
    uids = {name: generate_uid() for name in ("t1", "t2", "ct")}
    write_series(folder / "a", stored_values((4, 3, 3)), series_uid=uids["t1"], description="T1 axial")
    write_series(folder / "b" / "deeper", stored_values((6, 3, 3)), series_uid=uids["t2"], description="T2 fat sat")
    write_series(folder / "c", stored_values((3, 3, 3)), series_uid=uids["ct"], modality="CT", description="Chest")
    (folder / "README.txt").write_text("a note, not DICOM")
    (folder / ".hidden").mkdir()
    save(image_dataset(np.zeros((2, 2), np.int16), generate_uid()), folder / ".hidden" / "stray.dcm")
    return uids


def test_several_series_need_a_rule(tmp_path):
    uids = write_study(tmp_path)
    series = find_series(tmp_path)
    assert sorted(s.uid for s in series) == sorted(uids.values())  # hidden folder skipped
    assert {s.uid: len(s.datasets) for s in series} == {uids["t1"]: 4, uids["t2"]: 6, uids["ct"]: 3}

    with pytest.raises(DatasetError, match="3 DICOM series found") as err:
        read_dicom_series(tmp_path)
    for uid in uids.values():
        assert uid in str(err.value)
    assert "T2 fat sat" in str(err.value) and "rule" in str(err.value)

    assert select_series(series, SeriesRule(modality="ct")).uid == uids["ct"]
    assert select_series(series, SeriesRule.parse("description=^T1")).uid == uids["t1"]
    assert select_series(series, SeriesRule.parse("modality=MR,largest")).uid == uids["t2"]
    assert select_series(series, SeriesRule(largest=True)).uid == uids["t2"]
    with pytest.raises(DatasetError, match="2 DICOM series match") as err:
        select_series(series, SeriesRule.parse("modality=MR"))
    assert uids["t1"] in str(err.value) and uids["t2"] in str(err.value) and uids["ct"] not in str(err.value)
    with pytest.raises(DatasetError, match="no DICOM series matches"):
        select_series(series, SeriesRule(modality="PT"))

    volume = read_dicom_series(tmp_path, SeriesRule.parse("description=T2"))
    assert volume.array.shape == (3, 3, 6)


def test_zip_reads_like_the_folder(tmp_path):
    write_study(tmp_path / "study")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "study").rglob("*")):
            zf.write(path, path.relative_to(tmp_path))
        zf.writestr("__MACOSX/study/a/._IM0000", b"resource fork")
    before = sorted(tmp_path.rglob("*"))
    rule = SeriesRule.parse("modality=MR, description=T1")
    from_folder = read_dicom_series(tmp_path / "study", rule)
    from_zip = read_dicom_series(archive, rule)
    np.testing.assert_array_equal(from_zip.array, from_folder.array)
    np.testing.assert_array_equal(from_zip.affine, from_folder.affine)
    assert len(find_series(archive)) == 3
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted

    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match="zip"):
        find_series(archive)


def test_frames_of_reference_split_a_series(tmp_path, caplog):
    uid = generate_uid()
    write_series(tmp_path / "a", stored_values((3, 2, 2)), series_uid=uid, frame_uid=generate_uid())
    write_series(tmp_path / "b", stored_values((2, 2, 2)), series_uid=uid, frame_uid=generate_uid())
    with caplog.at_level(logging.WARNING):
        series = find_series(tmp_path)
    assert sorted(len(s.datasets) for s in series) == [2, 3] and {s.uid for s in series} == {uid}
    assert "frames of reference" in caplog.text
    assert sorted(series_volume(s).array.shape[2] for s in series) == [2, 3]


def test_series_rule_parse():
    assert SeriesRule.parse("modality=MR,description=T1.*,largest") == SeriesRule("MR", "T1.*", True)
    assert SeriesRule.parse("description=T1{1,2},largest=false") == SeriesRule(None, "T1{1,2}", False)
    assert SeriesRule.parse("") == SeriesRule()
    with pytest.raises(InvalidArgumentError, match="unknown key 'series'"):
        SeriesRule.parse("modality=MR,series=3")
    with pytest.raises(InvalidArgumentError, match="regular expression"):
        SeriesRule.parse("description=T1(")
    with pytest.raises(InvalidArgumentError, match="needs a value"):
        SeriesRule.parse("modality=")


# --- faults ----------------------------------------------------------------------------------

def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "scan.npy").write_bytes(b"\x93NUMPY" + bytes(200))
    with pytest.raises(DatasetError, match="no DICOM files found"):
        read_dicom_series(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_dicom_series(tmp_path / "missing")


def test_missing_middle_slice(tmp_path):
    files = write_series(tmp_path, stored_values((6, 3, 3)), step=2.5, origin=(0, 0, 10))
    files[3].unlink()
    with pytest.raises(InvalidImageError, match=r"1 slice\(s\) missing between positions 15.0000 and 20.0000"):
        read_dicom_series(tmp_path)


def test_uneven_steps(tmp_path):
    files = write_series(tmp_path, stored_values((5, 3, 3)), origin=(0, 0, 0), step=2.0)
    ds = pydicom.dcmread(files[4])
    ds.ImagePositionPatient = ds_values([0, 0, 9.0])  # 3 mm after 6, not 2
    save(ds, files[4])
    with pytest.raises(InvalidImageError, match="a step of 3.0000 mm between positions 6.0000 and 9.0000"):
        read_dicom_series(tmp_path)


def test_duplicate_positions_and_tilted_gantry(tmp_path):
    files = write_series(tmp_path / "dup", stored_values((3, 3, 3)))
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
    save(ds, files[1])
    with pytest.raises(InvalidImageError, match="same position"):
        read_dicom_series(tmp_path / "dup")

    files = write_series(tmp_path / "tilt", stored_values((3, 3, 3)), origin=(0, 0, 0), step=2.0)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = ds_values([0, 0.5 * k, 2.0 * k])  # shifted along y per slice
        save(ds, path)
    with pytest.raises(InvalidImageError, match="tilted gantry"):
        read_dicom_series(tmp_path / "tilt")


def test_inconsistent_orientation_names_the_file(tmp_path):
    files = write_series(tmp_path, stored_values((4, 3, 3)))
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = ds_values([*OBLIQUE[:, 0], *OBLIQUE[:, 1]])
    save(ds, files[2])
    with pytest.raises(InvalidImageError, match="ImageOrientationPatient.*differs") as err:
        read_dicom_series(tmp_path)
    assert files[2].name in str(err.value)


def sr_dataset(series_uid: str) -> Dataset:
    ds = base_dataset(ComprehensiveSRStorage, series_uid, modality="SR")
    ds.ValueType = "CONTAINER"
    return ds


def pdf_dataset(series_uid: str) -> Dataset:
    ds = base_dataset(EncapsulatedPDFStorage, series_uid, modality="DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


@pytest.mark.parametrize("make, kind", [(sr_dataset, "Comprehensive SR Storage"),
                                        (pdf_dataset, "Encapsulated PDF Storage")])
def test_non_image_object_in_the_series(tmp_path, make, kind):
    uid = generate_uid()
    write_series(tmp_path, stored_values((3, 3, 3)), series_uid=uid)
    save(make(uid), tmp_path / "report.dcm")
    with pytest.raises(InvalidImageError, match=f"report.dcm: {kind} object without pixel data"):
        read_dicom_series(tmp_path)


def test_image_without_pixel_data_names_the_file(tmp_path):
    files = write_series(tmp_path, stored_values((3, 3, 3)))
    ds = pydicom.dcmread(files[1])
    del ds.PixelData
    save(ds, files[1])
    with pytest.raises(InvalidImageError, match=f"{files[1].name}: MR Image Storage object without pixel data"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("keep", [0.3, 0.6, -10])
def test_truncated_file_names_the_file(tmp_path, keep):
    files = write_series(tmp_path, stored_values((3, 16, 16)))
    data = files[1].read_bytes()
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    assert cut > 132  # past the 'DICM' header: a DICOM file, damaged
    files[1].write_bytes(data[:cut])
    with pytest.raises(InvalidImageError) as err:
        read_dicom_series(tmp_path)
    assert files[1].name in str(err.value)
    assert any(word in str(err.value) for word in ("truncated", "corrupt"))
