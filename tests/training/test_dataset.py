"""Training examples from each source, at the model's size, preprocessed like inference."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ldseg_rt.configs import get_config
from ldseg_rt.data.phantom_volumes import make_phantom_volume
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.io.images import write_label_png, write_png
from ldseg_rt.pipeline.preprocess import prepare
from ldseg_rt.training.dataset import SyntheticData, build_dataset, resize_label, zoom_label

CFG = get_config("small")
CFG3D = get_config("small3d")
KNEE = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_synthetic_examples_are_prepared_phantoms():
    data = build_dataset(CFG, "synthetic")
    image, label = data[17]
    raw_image, raw_label = make_phantom(128, 17)
    np.testing.assert_array_equal(image, prepare(raw_image, CFG).pixels)
    np.testing.assert_array_equal(label, raw_label)
    assert image.shape == (1, 128, 128) and label.dtype == np.uint8


def test_synthetic_needs_three_classes():
    with pytest.raises(ValueError, match="3 classes"):
        SyntheticData(get_config("glas512"))


def test_resize_label_is_nearest(rng):
    label = rng.integers(0, 3, size=(64, 64)).astype(np.uint8)
    up = resize_label(label, 128)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(label, 2, 0), 2, 1))
    assert set(np.unique(resize_label(rng.integers(0, 3, size=(37, 91)), 128))) <= {0, 1, 2}


def test_folder_of_pngs(tmp_path, rng):
    for i in range(3):
        write_png(tmp_path / "img" / f"case{i}.png", rng.integers(0, 256, size=(40 + i, 50), dtype=np.uint8))
        write_label_png(tmp_path / "lab" / f"case{i}_label.png", rng.integers(0, 3, size=(40 + i, 50)))
    data = build_dataset(CFG, str(tmp_path / "img"), str(tmp_path / "lab"))
    assert len(data) == 3
    assert all(x.shape == (1, 128, 128) and y.shape == (128, 128) and y.max() <= 2 for x, y in data)


def test_nifti_volumes_are_sliced(tmp_path, rng):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        vol = rng.integers(0, 255, size=(20, 30, 5)).astype(np.int16)
        lab = rng.integers(0, 3, size=(20, 30, 5)).astype(np.int8)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "img" / f"Case{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab" / f"Case{i}_label.nii.gz")
    assert len(build_dataset(CFG, str(tmp_path / "img"), str(tmp_path / "lab"), axis=2)) == 10
    assert len(build_dataset(CFG, str(tmp_path / "img"), str(tmp_path / "lab"), axis=0)) == 40


def test_bad_sources(tmp_path, rng):
    with pytest.raises(ValueError, match="needs --labels"):
        build_dataset(CFG, str(tmp_path))
    write_png(tmp_path / "img" / "a.png", rng.integers(0, 256, size=(20, 20), dtype=np.uint8))
    write_label_png(tmp_path / "lab" / "a.png", np.full((20, 20), 5))
    with pytest.raises(ValueError, match="class 5"):
        build_dataset(CFG, str(tmp_path / "img"), str(tmp_path / "lab"))


def test_volumes_train_a_3d_model_whole(tmp_path, rng):
    """A 3-D model gets each volume whole, prepared as at inference, its label on the same grid."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    volumes = [make_phantom_volume((40, 36, 22), seed) for seed in (3, 4)]
    for i, (vol, lab) in enumerate(volumes):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "img" / f"Case{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab" / f"Case{i}_label.nii.gz")
    data = build_dataset(CFG3D, str(tmp_path / "img"), str(tmp_path / "lab"))
    assert len(data) == 2
    for (image, label), (vol, lab) in zip(data, volumes):
        np.testing.assert_array_equal(image, prepare(vol, CFG3D).pixels)
        assert image.shape == (1, *CFG3D.image_shape) and label.shape == CFG3D.image_shape
        assert set(np.unique(label)) == {0, 1, 2}
    write_png(tmp_path / "png" / "a.png", rng.integers(0, 256, size=(20, 20), dtype=np.uint8))
    write_label_png(tmp_path / "pnglab" / "a.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="3-D: it trains on NIfTI volumes"):
        build_dataset(CFG3D, str(tmp_path / "png"), str(tmp_path / "pnglab"))


def test_synthetic_volumes_for_a_3d_model():
    image, label = build_dataset(CFG3D, "synthetic")[5]
    vol, lab = make_phantom_volume(CFG3D.image_shape[::-1], 5)
    np.testing.assert_array_equal(image, prepare(vol, CFG3D).pixels)
    np.testing.assert_array_equal(label, lab.transpose())  # the networks' (Z, Y, X) order


def test_zoom_label_per_class(rng):
    """Against a twin: class c wherever c's mask, linearly zoomed, is at least a half (the highest such c)."""
    label = rng.integers(0, 3, size=(11, 7, 9))
    got = zoom_label(label, CFG3D)
    from scipy.interpolate import RegularGridInterpolator
    axes = [np.arange(n) for n in label.T.shape]
    points = np.stack(np.meshgrid(*(np.arange(m) * ((n - 1) / (m - 1)) for n, m in zip(label.T.shape,
                                                                                         CFG3D.image_shape)),
                                  indexing="ij"), -1)
    want = np.zeros(CFG3D.image_shape, np.uint8)
    for c in (1, 2):
        cover = RegularGridInterpolator(axes, (label.T == c).astype(float))(points)
        want[cover >= 0.5 - 1e-9] = c
    mismatch = got != want
    assert mismatch.mean() < 1e-3  # scipy rounds exact halves to even; the twin takes them all


@pytest.mark.skipif(not (KNEE / "ldseg-official").is_dir(), reason="official LDSeg reference outputs not found")
def test_zoom_label_reproduces_the_official_3d_loader():
    label = np.asarray(nib.load(KNEE / "ldseg-demo" / "Knee" / "Label" / "Case4_label.nii.gz").dataobj)
    want = np.load(KNEE / "ldseg-official" / "reference" / "knee_label.npy")[0]
    np.testing.assert_array_equal(zoom_label(label, get_config("knee3d")), want)
