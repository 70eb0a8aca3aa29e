"""ldseg_rt.training.decoder_calibration: it learns from exactly the latents sample() produces, changes
the decoder alone (on a copy), lowers the segmentation loss on those latents, and its loss is
LDSeg's CE + 2 (1 - Dice) checked against numpy."""
import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.cli import main as cli_main
from ldseg_rt.configs import get_config
from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.errors import InvalidArgumentError
from ldseg_rt.models import AmbiguousModel
from ldseg_rt.training.dataset import build_dataset
from ldseg_rt.training.decoder_calibration import (CalibrationSettings, calibrate_decoder, sampled_latents,
                                                   segmentation_loss)


def test_latents_are_those_sample_gives(small_model, rng):
    dataset = build_dataset(small_model.config, "synthetic")
    index, seed = int(rng.integers(1000)), int(rng.integers(2 ** 63))
    got = sampled_latents(small_model, dataset[index][0][None], [seed], progress=False)[0]
    image, _ = make_phantom(small_model.config.image_size, index, small_model.config.in_channels)
    want = Segmenter(small_model, backend="torch", device="cpu").sample(image, n=1, seed=seed).latents[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_segmentation_loss_matches_numpy(rng):
    logits = rng.standard_normal((3, 4, 5, 6))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(4, size=(3, 5, 6))
    onehot = np.eye(4)[labels].transpose(0, 3, 1, 2)
    ce = -(onehot * np.log(np.clip(probs, 1e-7, 1))).sum(1).mean()
    dice = 2 * (onehot * probs).sum() / (onehot.sum() + probs.sum() + 1e-6)
    got = segmentation_loss(torch.from_numpy(probs).float(), torch.from_numpy(labels))
    assert abs(float(got) - (ce + 2 * (1 - dice))) < 1e-5


def test_only_the_decoder_changes_and_its_loss_falls(small_model):
    settings = CalibrationSettings(examples=8, steps=8, batch_size=4, lr=1e-3, seed=3)  # loss ~0.53x seen
    dataset = build_dataset(small_model.config, "synthetic")
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    calibrated = calibrate_decoder(small_model, dataset, settings, progress=False)
    for name, value in small_model.state_dict().items():
        assert torch.equal(value, before[name])  # the caller's model is untouched
    changed = {k for k, v in calibrated.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert not any("running_" in k for k in changed)  # BatchNorm statistics kept
    images, labels = (np.stack(a) for a in zip(*(dataset[i] for i in range(settings.examples))))
    seeds = [int(s) for s in np.random.default_rng(settings.seed).integers(2 ** 63, size=settings.examples)]
    latents = torch.from_numpy(sampled_latents(small_model, images, seeds, progress=False))
    labels = torch.from_numpy(labels).long()
    with torch.no_grad():
        old, new = (float(segmentation_loss(m.decoder(latents), labels)) for m in (small_model, calibrated))
    print(f"segmentation loss on the sampled latents: {old:.4f} -> {new:.4f}")
    assert new < 0.9 * old


def test_cli_writes_an_inference_checkpoint(small_model, tmp_path):
    from ldseg_rt.models.checkpoint import save_checkpoint
    source = save_checkpoint(small_model, tmp_path / "model.pt")
    cli_main(["calibrate-decoder", str(source), "--out", str(tmp_path / "calibrated.pt"), "--examples", "4", "--steps", "2",
          "--batch-size", "2"])
    calibrated = Segmenter(str(tmp_path / "calibrated.pt"), backend="torch", device="cpu")
    assert calibrated.config == small_model.config


def test_pixel_family_is_refused():
    with pytest.raises(InvalidArgumentError, match="applies to LDSeg models"):
        calibrate_decoder(AmbiguousModel.from_config(get_config("amb_small"), seed=0), [], CalibrationSettings())


@pytest.mark.parametrize("field, value", [("examples", 0), ("batch_size", -2), ("lr", -1e-4), ("steps", -1),
                                          ("seed", -3)])
def test_settings_out_of_range_are_refused(field, value):
    with pytest.raises(InvalidArgumentError, match=f"{field} must be"):
        CalibrationSettings(**{field: value})
