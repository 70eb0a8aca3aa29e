"""Model files: round trip, and clear errors for missing, corrupt and future files."""
import copy
import os

import numpy as np
import pytest
import torch

from ldseg_rt import Segmenter
from ldseg_rt.configs import OFFICIAL, ROBUST
from ldseg_rt.errors import ModelLoadError
from ldseg_rt.models.checkpoint import load_checkpoint, load_model, save_checkpoint


class NotATensor:
    """A Python object a checkpoint must not hold: unpickling it could run code."""


def test_round_trip_gives_identical_samples(small_model, tmp_path, rng):
    path = save_checkpoint(small_model, tmp_path / "m.pt")
    img = rng.uniform(0, 1, size=(128, 128)).astype(np.float32)
    a = Segmenter(small_model).sample(img, n=2, steps=3, seed=9)
    b = Segmenter(str(path)).sample(img, n=2, steps=3, seed=9)
    assert np.array_equal(a.latents, b.latents) and np.array_equal(a.samples, b.samples)
    assert load_checkpoint(path).config == small_model.config


def test_preprocessing_mode_is_kept(small_model, tmp_path):
    assert load_checkpoint(save_checkpoint(small_model, tmp_path / "ours.pt")).preprocessing == ROBUST
    official = copy.deepcopy(small_model)
    official.preprocessing = OFFICIAL  # as an imported official model has it
    path = save_checkpoint(official, tmp_path / "official.pt")
    assert load_checkpoint(path).preprocessing == Segmenter(str(path)).preprocessing == OFFICIAL


def test_missing_corrupt_and_future_files(small_model, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(ModelLoadError, match="not a readable ldseg_rt checkpoint"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelLoadError, match="not an ldseg_rt checkpoint"):
        load_model(other)
    future = save_checkpoint(small_model, tmp_path / "future.pt", version=99)
    with pytest.raises(ModelLoadError, match="version 99"):
        load_model(future)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(save_checkpoint(small_model, tmp_path / "full.pt").read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        load_model(truncated)


def test_a_folder_that_is_no_bundle_is_named_as_such(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelLoadError, match=r"is a folder, but neither a bundle \(it has no manifest.json\) "
                                             "nor a checkpoint file") as error:
        load_model(tmp_path / "model")
    assert "does not exist" not in str(error.value)


def test_python_objects_are_refused_without_advice_to_unpickle_them(small_model, tmp_path):
    path = save_checkpoint(small_model, tmp_path / "m.pt", note=NotATensor())
    with pytest.raises(ModelLoadError, match="holds Python objects beyond tensors, which ldseg_rt refuses to "
                                             "unpickle because unpickling them could run code") as error:
        load_model(path)
    assert "weights_only=False" not in str(error.value) and "weights_only" not in str(error.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02" + os.urandom(1000))  # a pickle protocol header, then noise
    with pytest.raises(ModelLoadError, match="not a readable ldseg_rt checkpoint") as error:
        load_model(junk)
    assert "weights_only" not in str(error.value)


def test_mismatched_weights(small_model, tmp_path):
    path = save_checkpoint(small_model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["denoiser_widths"] = [16, 32, 32]
    torch.save(payload, path)
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(path)


def test_unknown_builtin_and_engine_type():
    with pytest.raises(ModelLoadError, match="no built-in model 'nope'"):
        load_model("builtin:nope")
    with pytest.raises(ModelLoadError, match="cannot load a model from int"):
        load_model(42)


def test_failed_save_leaves_nothing(small_model, tmp_path, monkeypatch):
    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small_model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_inference_checkpoint_drops_training_only_weights(small_model, tmp_path, rng):
    from ldseg_rt.models.checkpoint import save_inference_checkpoint
    full = save_checkpoint(small_model, tmp_path / "full.pt")
    slim = save_inference_checkpoint(small_model, tmp_path / "slim.pt")
    stored = torch.load(slim, weights_only=True)["state_dict"]
    assert stored and not any(k.startswith("label_encoder.") for k in stored)
    assert slim.stat().st_size < full.stat().st_size
    img = rng.uniform(0, 1, size=(96, 128)).astype(np.float32)
    a = Segmenter(str(full)).sample(img, n=2, steps=3, seed=4)
    b = Segmenter(str(slim)).sample(img, n=2, steps=3, seed=4)
    assert np.array_equal(a.latents, b.latents) and np.array_equal(a.samples, b.samples)
    payload = torch.load(slim, weights_only=True)
    del payload["state_dict"]["decoder.norm.weight"]
    torch.save(payload, slim)
    with pytest.raises(ModelLoadError, match="missing"):
        load_model(slim)
