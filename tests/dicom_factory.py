"""Synthetic DICOM series for the tests, written with pydicom from a known array and a known
geometry (an independent writer: the tests check ldseg_rt's reading and writing against it)."""
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

AXIAL = np.eye(3)


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    ax, az = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


OBLIQUE = rotation(20, 20)  # rotated about two axes


def ds_values(values) -> list[str]:
    # 12 significant digits first: pydicom 3.0.2 formats some values (10.000000000000002) in 17 characters
    return [format_number_as_ds(float(f"{float(v):.12g}")) for v in values]


def base_dataset(sop_class, series_uid: str, big_endian: bool = False, modality: str = "MR",
                 description: str = "T1 axial", frame_uid: str | None = None, study_uid: str | None = None) -> Dataset:
    """A dataset with the patient, study and series attributes that readers and highdicom need."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "0001", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", "A1"
    ds.ReferringPhysicianName, ds.Manufacturer, ds.SeriesNumber = "", "synthetic", 3
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesDescription = description
    if frame_uid:
        ds.FrameOfReferenceUID = frame_uid
    return ds


def save(ds: Dataset, path: Path) -> Path:
    big = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=not big)
    return path


def image_dataset(stored: np.ndarray, series_uid: str, *, big_endian=False, bits_stored=16, signed=True,
                  slope=1.0, intercept=0.0, **kwargs) -> Dataset:
    """A single-frame MR image holding `stored` (rows, columns) as 16-bit stored values."""
    ds = base_dataset(MRImageStorage, series_uid, big_endian, **kwargs)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = ds_values([slope, intercept])
    raw = stored.astype(np.int32) & ((1 << bits_stored) - 1)  # two's complement in BitsStored bits
    ds.PixelData = raw.astype(">u2" if big_endian else "<u2").tobytes()
    return ds


def write_series(folder: Path, stored: np.ndarray, *, rotation=AXIAL, pixel_spacing=(0.7, 0.9), step=2.5,
                 origin=(-100.0, -120.0, 40.0), slope=1.0, intercept=0.0, seed=0, series_uid=None,
                 **kwargs) -> list[Path]:
    """Writes stored[k] (rows, columns) as slice k at origin + normal * step * k, in shuffled
    file order with misleading InstanceNumbers; returns the file of each k."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    frame_uid = kwargs.pop("frame_uid", generate_uid())
    study_uid = kwargs.pop("study_uid", generate_uid())
    row_dir, col_dir, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    order = rng.permutation(len(stored))
    files = [None] * len(stored)
    for n, k in enumerate(order):
        ds = image_dataset(stored[k], series_uid, slope=slope, intercept=intercept, frame_uid=frame_uid,
                           study_uid=study_uid, **kwargs)
        ds.ImageOrientationPatient = ds_values([*row_dir, *col_dir])
        ds.ImagePositionPatient = ds_values(np.asarray(origin) + normal * step * k)
        ds.PixelSpacing = ds_values(pixel_spacing)
        ds.SliceThickness = "3"  # not the step: the reader must not use it
        ds.InstanceNumber = int(rng.integers(1, 1000))  # misleading on purpose
        files[k] = save(ds, folder / f"IM{n:04d}")
    return files
