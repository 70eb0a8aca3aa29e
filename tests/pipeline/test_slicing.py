"""Segmenter.segment_volume: a 2-D model over a volume's slices, against sample() of each slice
alone (with the slice's own seed), whatever the batching and the axis; results on the input's
grid; empty slices and bad requests handled before any work."""
import numpy as np
import pytest

from ldseg_rt import Segmenter
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.io.volume import Volume
from ldseg_rt.seeds import slice_seed


@pytest.fixture(scope="module")
def seg(small_model):
    return Segmenter(small_model, backend="torch", device="cpu")


def smooth_volume(rng, shape):
    """A volume with structure in every slice (sums of random Gaussian blobs)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    out = np.zeros(shape)
    for _ in range(6):
        centre, width = rng.uniform(0, shape), rng.uniform(3, 8)
        out += np.exp(-((grid - centre) ** 2).sum(-1) / (2 * width ** 2))
    return (1000 * out + rng.normal(0, 5, shape)).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 2])
def test_each_slice_is_its_own_sample_whatever_the_batch(seg, rng, axis):
    array = smooth_volume(rng, (21, 17, 5) if axis == 2 else (4, 19, 23))
    seed = int(rng.integers(2 ** 62))
    affine = np.diag([0.8, 0.9, 3.0, 1.0]) if axis == 2 else np.diag([4.0, 1.0, 1.1, 1.0])
    volume = Volume(array, affine)
    one = seg.segment_volume(volume, n=3, steps=3, seed=seed, max_batch=1, return_samples=True, progress=False)
    three = seg.segment_volume(volume, n=3, steps=3, seed=seed, max_batch=3, return_samples=True, progress=False)
    assert one.axis == axis and one.volume is volume  # the through-plane axis: the largest spacing
    assert one.mask.shape == array.shape and one.probs.shape == (3, *array.shape)
    assert one.samples.shape == (3, *array.shape) and one.uncertainty.dtype == np.float32
    np.testing.assert_allclose(three.probs, one.probs, atol=1e-4)
    assert (three.mask == one.mask).mean() > 0.999
    for k in range(array.shape[axis]):
        alone = seg.sample(np.take(array, k, axis=axis), n=3, steps=3, seed=slice_seed(seed, k))
        np.testing.assert_allclose(np.take(one.probs, k, axis=axis + 1), alone.probs, atol=1e-4)
        np.testing.assert_allclose(np.take(one.uncertainty, k, axis=axis), alone.uncertainty, atol=1e-4)
        assert (np.take(one.samples, k, axis=axis + 1) == alone.samples).mean() > 0.999


def test_slices_without_contrast_are_background(seg, rng):
    array = smooth_volume(rng, (20, 20, 6))
    array[:, :, 0] = 0
    array[:, :, 5] = 7
    res = seg.segment_volume(array, n=2, steps=2, seed=1, progress=False)
    assert res.axis == 2  # identity geometry: a tie, so the last axis
    for k in (0, 5):
        assert (res.mask[:, :, k] == 0).all() and (res.uncertainty[:, :, k] == 0).all()
        assert (res.probs[0, :, :, k] == 1).all()
    assert any("2 of 6 slices have no contrast" in w for w in res.warnings)


def test_bad_requests_are_refused_before_any_work(seg):
    with pytest.raises(InvalidArgumentError, match="axis must be 0, 1 or 2"):
        seg.segment_volume(np.zeros((8, 8, 8), np.float32), axis=3)
    with pytest.raises(InvalidArgumentError, match="max_batch"):
        seg.segment_volume(np.zeros((8, 8, 8), np.float32), max_batch=0)


def test_volumes_are_sliced_along_the_axis_the_model_was_trained_on(tmp_path, rng):
    """Training on slices of volumes records their axis; export carries it into the manifest;
    segment_volume then slices along it by default, whatever the spacing says."""
    import nibabel as nib

    from ldseg_rt.configs import get_config
    from ldseg_rt.export import export_bundle
    from ldseg_rt.io.pairs import find_pairs
    from ldseg_rt.models.checkpoint import load_checkpoint
    from ldseg_rt.training.dataset import volume_data
    from ldseg_rt.training.trainer import Trainer, TrainSettings

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    array = smooth_volume(rng, (10, 12, 14))
    array[:, 0, :] = 0  # an empty edge slice: left out of training, as segmenting leaves it to background
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "images" / "case.nii.gz")
    nib.save(nib.Nifti1Image((array > array.mean()).astype(np.uint8), np.eye(4)), tmp_path / "labels" / "case.nii.gz")
    cfg = get_config("small")
    data = volume_data(cfg, find_pairs(tmp_path / "images", tmp_path / "labels"), axis=-2)
    assert data.slice_axis == 1 and len(data) == 11
    Trainer(cfg, TrainSettings(steps=0), device="cpu").fit(data, tmp_path / "run.pt", progress=False)
    model = load_checkpoint(tmp_path / "run.pt")
    assert model.slice_axis == 1
    bundle = export_bundle(model, tmp_path / "run.ldseg", check_batches=(1,), progress=False)
    assert bundle.manifest["preprocessing"]["slice_axis"] == 1
    for engine in (tmp_path / "run.pt", bundle.path):
        seg = Segmenter(engine)
        assert seg.slice_axis == 1
        assert seg.segment_volume(Volume(array, np.diag([1.0, 1.0, 5.0, 1.0])), n=1, steps=2, progress=False).axis == 1
