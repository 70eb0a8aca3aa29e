"""`python -m ldseg_rt segment`: NIfTI and 2-D cases written whole to OUT/<case>/ on the input's
grid, equal to the library's results for the recorded seed; a bad case reported while the
batch goes on; --continue skips complete cases."""
import json

import nibabel as nib
import numpy as np
import pytest

from ldseg_rt import Segmenter
from ldseg_rt.cli import main
from ldseg_rt.io.images import read_image, write_png
from ldseg_rt.io.nifti import read_nifti
from ldseg_rt.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def model_file(small_model, tmp_path_factory):
    return save_checkpoint(small_model, tmp_path_factory.mktemp("model") / "small.pt")


def oblique_affine(rng):
    """A rotated, non-RAS voxel grid with a negative determinant, and anisotropic spacing."""
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    if np.linalg.det(rotation) > 0:
        rotation[:, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation * [0.9, 1.1, 3.5]
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    return affine


def structured(rng, shape):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    out = sum(np.exp(-((grid - rng.uniform(0, shape)) ** 2).sum(-1) / 30.0) for _ in range(5))
    return (800 * out + rng.normal(0, 3, shape)).astype(np.float32)


def test_nifti_and_png_cases(model_file, small_model, tmp_path, rng, capsys):
    affine = oblique_affine(rng)
    volume = structured(rng, (24, 20, 4))
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "knee.nii.gz")
    image = structured(rng, (30, 26, 1))[..., 0]
    write_png(tmp_path / "slide.png", np.round(255 * image / image.max()).astype(np.uint8))
    out = tmp_path / "out"
    main(["segment", str(tmp_path / "knee.nii.gz"), str(tmp_path / "slide.png"), "-m", str(model_file), "-o", str(out),
          "-n", "2", "--steps", "2", "--seed", "5", "--format", "nifti,png,npy"])
    printed = capsys.readouterr().out
    assert "2 of 2 case(s) done, 0 failed" in printed
    seg = Segmenter(small_model, backend="torch", device="cpu")

    mask = read_nifti(out / "knee" / "mask.nii.gz")
    np.testing.assert_array_equal(mask.affine, read_nifti(tmp_path / "knee.nii.gz").affine)  # the same grid, exactly
    want = seg.segment_volume(read_nifti(tmp_path / "knee.nii.gz"), n=2, steps=2, seed=5, progress=False)
    assert want.axis == 2 and (mask.array == want.mask).mean() > 0.999
    probs = nib.load(out / "knee" / "probs.nii.gz")
    assert probs.shape == (24, 20, 4, 3)
    np.testing.assert_allclose(np.asarray(probs.dataobj), np.moveaxis(want.probs, 0, -1), atol=1e-4)
    record = json.loads((out / "knee" / "result.json").read_text())
    assert (record["seed"], record["n"], record["steps"], record["axis"], record["backend"]) == (5, 2, 2, 2, "torch")
    assert set(record["outputs"]) == {"mask.nii.gz", "probs.nii.gz", "uncertainty.nii.gz", "mask.npy", "probs.npy",
                                      "uncertainty.npy"}
    assert record["skipped_formats"] == ["png: a volume is written as NIfTI, DICOM or NPY"]

    slide = seg.sample(read_image(tmp_path / "slide.png"), n=2, steps=2, seed=5)
    np.testing.assert_array_equal(np.load(out / "slide" / "mask.npy"), slide.mask)
    colours = read_image(out / "slide" / "mask.png")
    assert colours.shape == (30, 26, 3) and (colours[slide.mask == 0] == 0).all()
    grey = read_image(out / "slide" / "uncertainty.png")
    np.testing.assert_array_equal(grey, np.round(slide.uncertainty * 255).astype(np.uint8))


def test_a_bad_case_is_reported_and_the_batch_goes_on(model_file, tmp_path, rng, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    nib.save(nib.Nifti1Image(structured(rng, (16, 16, 3)), np.eye(4)), cases / "good.nii.gz")
    write_png(cases / "rgb.png", np.full((20, 20, 3), 100, np.uint8))  # 3 channels for a 1-channel model
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(cases), "-m", str(model_file), "-o", str(out), "-n", "1", "--steps", "2", "--seed", "1"])
    assert exit_.value.code == 1
    printed = capsys.readouterr()
    assert "1 of 3 case(s) done, 2 failed" in printed.out
    assert "broken.nii.gz: cannot read the file" in printed.out and "expects 1 channel(s)" in printed.out
    assert (out / "good" / "result.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # nothing half-written for the failed ones

    before = (out / "good" / "result.json").stat().st_mtime_ns
    (cases / "broken.nii.gz").unlink()
    (cases / "rgb.png").unlink()
    nib.save(nib.Nifti1Image(structured(rng, (16, 16, 3)), np.eye(4)), cases / "late.nii.gz")
    main(["segment", str(cases), "-m", str(model_file), "-o", str(out), "-n", "1", "--steps", "2", "--continue"])
    printed = capsys.readouterr().out
    assert "skipped" in printed and "2 of 2 case(s) done, 0 failed" in printed
    assert (out / "good" / "result.json").stat().st_mtime_ns == before and (out / "late" / "result.json").is_file()
    drawn = json.loads((out / "late" / "result.json").read_text())["seed"]  # no --seed: the one drawn is recorded
    again = Segmenter(str(model_file), backend="torch").segment_volume(read_nifti(cases / "late.nii.gz"), n=1, steps=2,
                                                                       seed=drawn, progress=False)
    np.testing.assert_array_equal(read_nifti(out / "late" / "mask.nii.gz").array, again.mask)


def test_an_output_that_cannot_be_written_is_refused_first(model_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["segment", str(tmp_path), "-m", str(model_file), "-o", str(blocker)])
    assert exit_.value.code == 2 and "is a file" in capsys.readouterr().err


def test_a_dicom_series_gives_dicom_results_on_its_own_grid(model_file, small_model, tmp_path, rng):
    """An oblique series written in shuffled order: the Segmentation's frames sit at the source
    slices' positions and hold the consensus the library computes for the series volume; the
    Parametric Map holds the uncertainty; the NIfTI mask has the series' affine."""
    import highdicom as hd
    import pydicom

    from dicom_factory import OBLIQUE, write_series
    from ldseg_rt.io.dicom_series import read_dicom_series

    stored = np.moveaxis(structured(rng, (18, 14, 5)), 2, 0).round().astype(np.int16)  # (K, rows, columns)
    write_series(tmp_path / "series", stored, rotation=OBLIQUE, pixel_spacing=(0.8, 0.7), step=3.0, seed=3)
    out = tmp_path / "out"
    main(["segment", str(tmp_path / "series"), "-m", str(model_file), "-o", str(out), "-n", "2", "--steps", "2",
          "--seed", "9"])
    volume = read_dicom_series(tmp_path / "series")
    want = Segmenter(small_model, backend="torch", device="cpu").segment_volume(volume, n=2, steps=2, seed=9,
                                                                                progress=False)
    assert want.axis == 2
    mask = read_nifti(out / "series" / "mask.nii.gz")
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(mask.array, want.mask)

    seg = hd.seg.segread(out / "series" / "segmentation.dcm")
    positions = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in volume.source}
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(volume.source)}
    for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[source_uid], atol=1e-4)
        segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        pixels = seg.pixel_array[number] if seg.pixel_array.ndim == 3 else seg.pixel_array
        np.testing.assert_array_equal(pixels, (want.mask[:, :, slice_of[source_uid]] == segment).T)
    assert seg.StudyInstanceUID == volume.source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == volume.source[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != volume.source[0].SeriesInstanceUID

    pm = pydicom.dcmread(out / "series" / "uncertainty.dcm")
    values = pm.pixel_array
    for number, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(values[number], want.uncertainty[:, :, slice_of[source_uid]].T, atol=1e-6)


def test_a_csv_list_and_a_folder_of_several_series(model_file, tmp_path, rng, capsys):
    """Cases listed in a CSV (relative to it); a folder with two series fails without --select
    and is segmented with it."""
    from dicom_factory import AXIAL, write_series

    study = tmp_path / "study"
    stored = np.moveaxis(structured(rng, (12, 10, 3)), 2, 0).round().astype(np.int16)
    write_series(study, stored, rotation=AXIAL, modality="MR", description="T1 axial")
    write_series(study / "scout", stored[:2], rotation=AXIAL, modality="CT", description="scout")  # found inside
    nib.save(nib.Nifti1Image(structured(rng, (12, 12, 3)), np.eye(4)), tmp_path / "vol.nii.gz")
    (tmp_path / "cases.csv").write_text("path\nstudy\nvol.nii.gz\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path / "cases.csv"), "-m", str(model_file), "-o", str(out), "-n", "1", "--steps", "2"])
    printed = capsys.readouterr().out
    assert "1 of 2 case(s) done, 1 failed" in printed and "study" in printed and "rule" in printed
    main(["segment", str(tmp_path / "cases.csv"), "-m", str(model_file), "-o", str(out), "-n", "1", "--steps", "2",
          "--select", "modality=MR", "--continue"])
    assert "2 of 2 case(s) done, 0 failed" in capsys.readouterr().out
    record = json.loads((out / "study" / "result.json").read_text())
    assert record["input_shape"] == [10, 12, 3] and "segmentation.dcm" in record["outputs"]
