"""prepare(): the robust intensity window against np.percentile, images scanners corrupt (a hot
pixel, padding) read as the clean image is, images the model cannot read refused or flagged,
and every numeric array form turned into the same input as its plain float64 twin."""
import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.configs import get_config
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import InvalidImageError
from ldseg_rt.evaluation.metrics import dice_per_class
from ldseg_rt.pipeline.preprocess import WINDOW_PERCENTILES, prepare

CFG = get_config("small")


def reference_scaling(image, keep=None):
    """Independent float64 twin: clip to the percentiles of the kept pixels, scale to [0, 1]."""
    values = image.astype(np.float64)
    lo, hi = np.percentile(values[keep] if keep is not None else values, WINDOW_PERCENTILES)
    return np.clip((values - lo) / (hi - lo), 0, 1)


def phantom(rng):
    return make_phantom(CFG.image_size, int(rng.integers(10 ** 9)))


def test_window_is_the_percentiles_of_the_image(rng):
    image = rng.normal(3.0, 2.0, (CFG.image_size, CFG.image_size))
    got = prepare(image, CFG).pixels[0]
    np.testing.assert_allclose(got, reference_scaling(image), atol=1e-6)
    assert got.min() == 0 and got.max() == 1


def test_a_hot_pixel_does_not_squash_the_image(rng):
    image, _ = phantom(rng)
    hot = image.copy()
    hot[40, 50] = 50 * image.max()
    clean, got = prepare(image, CFG).pixels[0], prepare(hot, CFG).pixels[0]
    away = np.ones_like(clean, bool)
    away[40, 50] = False
    assert np.abs(got - clean)[away].max() < 0.02 and got[40, 50] == 1
    assert prepare(hot, CFG).warnings == []


def test_padding_is_left_out_of_the_window(rng):
    image, _ = phantom(rng)
    padded = image.copy()
    padded[:8], padded[-8:], padded[:, :8], padded[:, -8:] = -20, -20, -20, -20
    body = padded != -20
    got = prepare(padded, CFG).pixels[0]
    np.testing.assert_allclose(got, reference_scaling(padded, keep=body), atol=1e-6)
    assert (got[~body] == 0).all()


@pytest.mark.parametrize("corrupt", ["hot pixel", "padding"])
def test_builtin_model_reads_corrupted_images_as_clean_ones(rng, corrupt):
    """These corruptions took class-2 Dice to 0 with min-max scaling."""
    seg = Segmenter("builtin:phantom", backend="torch")
    scores = {}
    for name in ("clean", corrupt):
        dice = []
        for i in range(3):
            image, label = make_phantom(CFG.image_size, 777_000_000 + i)
            if name == "hot pixel":
                image = image.copy()
                image[30, 30] = 50 * image.max()
            elif name == "padding":
                image = image.copy()
                image[:8], image[-8:], image[:, :8], image[:, -8:] = -20, -20, -20, -20
            res = seg.sample(image, n=8, seed=i)
            dice.append(dice_per_class(res.mask, label, 3))
        scores[name] = np.mean(dice, axis=0)
    print(scores)
    assert (scores[corrupt] > scores["clean"] - 0.05).all()


@pytest.mark.parametrize("value", [0.0, 5.0, -3e38])
def test_an_image_without_contrast_is_refused(value):
    with pytest.raises(InvalidImageError, match="no contrast"):
        prepare(np.full((40, 30), value), CFG)


def test_noise_and_mostly_outliers_are_flagged(rng):
    assert prepare(phantom(rng)[0], CFG).warnings == []
    noise = prepare(rng.random((CFG.image_size, CFG.image_size)), CFG).warnings
    assert len(noise) == 1 and "noise" in noise[0]
    outliers = rng.random((CFG.image_size, CFG.image_size))
    outliers[rng.random(outliers.shape) < 0.6] = rng.uniform(1e5, 2e5, 1)[0] * rng.random(1)[0]
    res = Segmenter("builtin:phantom", backend="torch").sample(outliers, n=2, seed=0)
    assert any("outside the image's intensity window" in w for w in res.warnings)


def test_every_numeric_form_gives_the_float64_input(rng):
    image = (rng.random((37, 45)) * 4000).astype(np.uint16)
    want = prepare(image.astype(np.float64), CFG).pixels
    forms = [image.astype(">u2"), image.astype(">f8"), image.astype(np.longdouble), image.astype(np.uint32),
             torch.from_numpy(image.astype(np.int32)).to(torch.uint16), torch.from_numpy(image.astype(np.int64))]
    for form in forms:
        np.testing.assert_array_equal(prepare(form, CFG).pixels, want, err_msg=str(getattr(form, "dtype", form)))


def test_values_near_the_float64_limit_scale_like_small_ones(rng):
    image = rng.random((33, 33))
    image[0, 0], image[1, 1] = 0.0, 1.0
    huge = np.where(rng.random(image.shape) < 0.5, -1, 1) * 1.7e308 * image
    small = huge / 1.7e308
    np.testing.assert_allclose(prepare(huge, CFG).pixels, prepare(small, CFG).pixels, atol=1e-6)


def test_a_channels_first_numpy_image_is_named_as_such():
    with pytest.raises(InvalidImageError, match=r"looks channels-first.*transpose\(1, 2, 0\)"):
        prepare(np.zeros((1, 128, 128)), CFG)


def plain_statistics(pixels):
    """Independent numpy twin of the recorded statistics of one prepared image."""
    x = pixels.astype(np.float64)
    c = x - x.mean(axis=(1, 2), keepdims=True)
    correlation = ((c[:, 1:] * c[:, :-1]).mean() + (c[:, :, 1:] * c[:, :, :-1]).mean()) / (2 * (c ** 2).mean())
    return x.mean(), x.std(), correlation


def test_images_unlike_the_training_images_are_flagged(builtin_bundle, rng):
    """The built-in model records its training images' statistics; export carries them into the
    bundle. A phantom reads clean; a mostly bright image, structured but unlike any phantom, is flagged."""
    image, _ = phantom(rng)
    bright = np.ones((CFG.image_size, CFG.image_size))
    bright[40:70, 50:90] = 0.0
    bright += 0.02 * rng.standard_normal(bright.shape)
    recorded = builtin_bundle.manifest["preprocessing"]["input_statistics"]
    assert Segmenter("builtin:phantom").input_statistics == recorded
    assert recorded["neighbour_correlation"][0] > 0.5 and 0 < recorded["mean"][0] < recorded["mean"][1] < 1
    for seg in (Segmenter("builtin:phantom", backend="torch"), Segmenter(builtin_bundle.path)):
        assert seg.sample(image, n=2, seed=0).warnings == []
        warned = seg.sample(bright, n=2, seed=0).warnings
        assert len(warned) == 1 and "mean after scaling" in warned[0] and "training images' range" in warned[0]


def test_training_records_the_statistics_of_its_images(tmp_path):
    from ldseg_rt.models.checkpoint import load_checkpoint
    from ldseg_rt.training.dataset import build_dataset
    from ldseg_rt.training.trainer import Trainer, TrainSettings

    trainer = Trainer(CFG, TrainSettings(steps=0, batch_size=2), device="cpu")
    dataset = build_dataset(CFG, "synthetic")
    trainer.fit(dataset, tmp_path / "run.pt", progress=False)
    recorded = load_checkpoint(tmp_path / "run.pt").input_statistics
    picks = np.linspace(0, len(dataset) - 1, 512).round().astype(int)
    values = np.array([plain_statistics(dataset[int(i)][0]) for i in picks])
    for column, name in enumerate(("mean", "std", "neighbour_correlation")):
        np.testing.assert_allclose(recorded[name], [values[:, column].min(), values[:, column].max()], rtol=1e-6)
