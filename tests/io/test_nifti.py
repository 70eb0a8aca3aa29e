"""NIfTI volumes keep their geometry: read as a Volume with the file's affine, written back on
exactly the same grid (a rotated, non-RAS affine with a negative determinant too), atomically."""
import nibabel as nib
import numpy as np
import pytest

from ldseg_rt.errors import InvalidArgumentError, InvalidImageError
from ldseg_rt.io import nifti
from ldseg_rt.io.volume import Volume


def oblique(rng, flip: bool):
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    if (np.linalg.det(rotation) > 0) == flip:
        rotation[:, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation * rng.uniform(0.5, 4.0, 3)
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


@pytest.mark.parametrize("flip", [False, True])
def test_round_trip_keeps_every_voxel_at_its_point(tmp_path, rng, flip):
    affine = oblique(rng, flip)
    data = rng.integers(-1000, 1000, (9, 7, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "in.nii.gz")
    volume = nifti.read_nifti(tmp_path / "in.nii.gz")
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-4)  # the file stores float32
    np.testing.assert_array_equal(volume.array, data)
    labels = (volume.array > 0).astype(np.uint8)
    nifti.write_nifti(tmp_path / "out.nii.gz", labels, volume)
    nifti.write_nifti(tmp_path / "out.nii", labels, volume)
    for name in ("out.nii.gz", "out.nii"):
        back = nib.load(tmp_path / name)
        np.testing.assert_array_equal(back.affine, volume.affine)
        np.testing.assert_allclose(back.get_qform(), volume.affine, atol=1e-5)  # qform agrees too
        np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
        for _ in range(5):  # a voxel of the output is the same point in mm as that voxel of the input
            ijk = np.append(rng.integers(0, data.shape), 1)
            np.testing.assert_allclose(back.affine @ ijk, affine @ ijk, atol=1e-3)


def test_class_axis_goes_last_as_nifti_stores_it(tmp_path, rng):
    volume = Volume(rng.random((4, 5, 6)).astype(np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    probs = rng.random((3, 4, 5, 6)).astype(np.float32)
    nifti.write_nifti(tmp_path / "probs.nii.gz", probs, volume)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "probs.nii.gz").dataobj), np.moveaxis(probs, 0, -1))


def test_bad_writes_leave_nothing(tmp_path, rng):
    volume = Volume(rng.random((4, 5, 6)).astype(np.float32), np.eye(4))
    with pytest.raises(InvalidArgumentError, match="does not end in the volume's grid"):
        nifti.write_nifti(tmp_path / "x.nii.gz", np.zeros((4, 5, 7)), volume)
    with pytest.raises(InvalidArgumentError, match=".nii or .nii.gz"):
        nifti.write_nifti(tmp_path / "x.png", np.zeros((4, 5, 6)), volume)
    with pytest.raises(InvalidImageError, match="invertible"):
        Volume(np.zeros((2, 2, 2)), np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []
