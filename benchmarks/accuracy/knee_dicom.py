"""Real data end to end through the clinical path: knee MRI case 5 of ../shared/data/ldseg-demo,
written as a DICOM series (pydicom, from the NIfTI, so that the series reads back as the same
voxels on the same grid), segmented with `python -m ldseg_rt segment` by the model that
benchmarks/accuracy/knee.py trained on cases 1-4, and scored against the case's label: volume
Dice per class, from the NIfTI mask and from the DICOM Segmentation read back with highdicom.
Writes its section of benchmarks/RESULTS.md unless --no-write.

    python benchmarks/accuracy/knee.py --work /tmp/ldseg_knee      # trains the model first
    python benchmarks/accuracy/knee_dicom.py [--model /tmp/ldseg_knee/knee_small.pt] [-n 16]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ldseg_rt.bench.report import format_markdown_table
from ldseg_rt.bench.script import parse_args, publish, shared_data
from ldseg_rt.io.nifti import read_nifti
from ldseg_rt.io.volume import LPS_TO_RAS

KNEE = shared_data(__file__) / "ldseg-demo" / "Knee"


def write_series(volume, folder: Path) -> None:
    """Slice k holds volume.array[:, :, k] (rows j, columns i) at the position the NIfTI
    affine gives voxel (0, 0, k), in LPS."""
    lps = LPS_TO_RAS @ volume.affine  # the same matrix turns RAS into LPS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for k in range(volume.array.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = MRImageStorage, ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.Modality, ds.SeriesDescription = MRImageStorage, "MR", "knee case 5"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Knee^Case5", "K5", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", "K5"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "", "ldseg-demo", 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        pixels = np.ascontiguousarray(volume.array[:, :, k].T).astype(np.int16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    return 2 * np.sum((a == c) & (b == c)) / max(np.sum(a == c) + np.sum(b == c), 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/ldseg_knee/knee_small.pt")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--axis", type=int, default=0, help="the slicing axis the model was trained on")
    args = parse_args(parser)
    if not KNEE.is_dir() or not Path(args.model).is_file():
        print(f"skipped: needs {KNEE} and a model at {args.model} (benchmarks/accuracy/knee.py trains it)")
        return 0
    image, label = read_nifti(KNEE / "Image" / "Case5.nii.gz"), read_nifti(KNEE / "Label" / "Case5_label.nii.gz")
    with tempfile.TemporaryDirectory() as work:
        series, out = Path(work) / "case5", Path(work) / "out"
        write_series(image, series)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ldseg_rt", "segment", str(series), "-m", args.model, "-o", str(out),
                        "-n", str(args.n), "--seed", "0", "--axis", str(args.axis)], check=True)
        wall = time.perf_counter() - start
        mask = read_nifti(out / "case5" / "mask.nii.gz")
        record = json.loads((out / "case5" / "result.json").read_text())
        seg = hd.seg.segread(out / "case5" / "segmentation.dcm")
        from_seg = np.zeros(mask.array.shape, np.uint8)
        index = {pydicom.dcmread(series / f"{k:04d}.dcm", stop_before_pixels=True).SOPInstanceUID: k
                 for k in range(image.array.shape[2])}  # slice k's file, as written
        for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
            uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            from_seg[:, :, index[uid]][seg.pixel_array[number].T > 0] = segment
    assert np.abs(mask.affine - image.affine).max() < 1e-4, "the result is not on the input's grid"
    table = format_markdown_table(["", "class 1", "class 2"], [
        ["volume Dice, NIfTI mask written by `segment`", *(f"{dice(mask.array, label.array, c):.3f}" for c in (1, 2))],
        ["volume Dice, DICOM Segmentation read back with highdicom",
         *(f"{dice(from_seg, label.array, c):.3f}" for c in (1, 2))]])
    report = (f"case 5 as a DICOM series of {image.array.shape[2]} files, segmented along voxel axis {args.axis} "
              f"({image.array.shape[args.axis]} slices), model {args.model}, n={args.n}: {wall:.1f} s for the whole "
              f"command; stages (ms) {record['timings_ms']}\n\n{table}")
    print(report)
    publish(__file__, report, no_write=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
