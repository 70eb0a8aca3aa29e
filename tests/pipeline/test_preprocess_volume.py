"""prepare() for a 3-D model: a volume (X, Y, Z) becomes the networks' (C, Z, Y, X), its intensities
scaled over the whole volume and zoomed linearly, checked against a separable np.interp twin, the
official 3-D loader's output on a real knee volume, and the refusals a wrong volume gets."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ldseg_rt.configs import OFFICIAL, ROBUST, get_config
from ldseg_rt.errors import InvalidImageError
from ldseg_rt.pipeline.preprocess import WINDOW_PERCENTILES, native_size, prepare

CFG = get_config("small3d")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def linear_zoom(values: np.ndarray, shape) -> np.ndarray:
    """Independent twin of scipy's zoom(order=1, mode='nearest'): output voxel i sits at input
    coordinate i (n_in - 1) / (n_out - 1) along each axis; trilinear is linear axis by axis."""
    for axis, (n_in, n_out) in enumerate(zip(values.shape, shape)):
        where = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
        values = np.apply_along_axis(lambda line: np.interp(where, np.arange(n_in), line), axis, values)
    return values


def reference(volume: np.ndarray, mode: str) -> np.ndarray:
    values = np.transpose(volume.astype(np.float64))  # (X, Y, Z) -> the networks' (Z, Y, X)
    lo, hi = ((values.min(), values.max()) if mode == OFFICIAL else np.percentile(values, WINDOW_PERCENTILES))
    return linear_zoom(np.clip((values - lo) / (hi - lo), 0, 1), CFG.image_shape)[None]


@pytest.mark.parametrize("mode", [ROBUST, OFFICIAL])
@pytest.mark.parametrize("shape", [(45, 19, 70), (32, 32, 64)[::-1], (9, 100, 13)])  # shrink, none, both ways
def test_volume_is_transposed_scaled_and_zoomed(rng, mode, shape):
    volume = rng.normal(100.0, 30.0, shape).astype(np.float32)
    volume[rng.random(shape) < 1e-3] = 5000.0  # hot voxels: the robust window leaves them out
    got = prepare(volume, CFG, mode=mode)
    assert got.pixels.shape == (1, *CFG.image_shape) and got.pixels.dtype == np.float32
    assert got.size == shape[::-1]  # results are resized back to it, then transposed to (X, Y, Z)
    np.testing.assert_allclose(got.pixels, reference(volume, mode), atol=2e-6)


def test_torch_channels_first_and_numpy_channels_last_agree(rng):
    volume = rng.random((20, 24, 28))
    want = prepare(volume, CFG).pixels
    np.testing.assert_array_equal(prepare(volume[..., None], CFG).pixels, want)
    np.testing.assert_array_equal(prepare(torch.from_numpy(volume)[None], CFG).pixels, want)
    assert native_size(CFG) == CFG.image_shape[::-1]


@pytest.mark.parametrize("volume, message", [
    (np.zeros((40, 40)), r"a 3-D model takes a volume \(X, Y, Z\)"),
    (np.zeros((1, 40, 40, 40)) + np.arange(40), "looks channels-first"),
    (np.zeros((40, 1, 40)), "too small"),
    (np.zeros((40, 0, 40)), "empty"),
    (np.full((10, 10, 10), 7.0), "no contrast"),
    (np.where(np.eye(10, dtype=bool)[..., None], np.nan, 1.0) * np.ones((10, 10, 10)), "NaN"),
    (np.random.default_rng(0).random((10, 10, 10, 2)), "expects 1 channel"),
])
def test_bad_volumes_are_refused(volume, message):
    with pytest.raises(InvalidImageError, match=message):
        prepare(volume, CFG)


@pytest.mark.skipif(not (SHARED / "ldseg-official").is_dir(), reason="official LDSeg reference outputs not found")
def test_official_mode_reproduces_the_official_3d_loader():
    """The knee case the reference outputs were made from, as nibabel reads it, becomes the official
    loader's input (knee_image.npy: SimpleITK order, min-max, scipy zoom) to float32 rounding."""
    import nibabel as nib
    volume = np.asarray(nib.load(SHARED / "ldseg-demo" / "Knee" / "Image" / "Case4.nii.gz").dataobj)
    want = np.load(SHARED / "ldseg-official" / "reference" / "knee_image.npy")[0, ..., 0]
    got = prepare(volume, get_config("knee3d"), mode=OFFICIAL).pixels[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
