"""ldseg_rt.options: each default and each check in one place, the same wherever options are built
(the API's keywords, an options object, the command line, the service's settings)."""
import dataclasses
import inspect

import numpy as np
import pytest

from ldseg_rt import (EngineOptions, InvalidArgumentError, RayOptions, SampleOptions, SegmentOptions, Segmenter,
                      VolumeOptions)
from ldseg_rt.serve.config import ServeConfig


@pytest.mark.parametrize("cls,settings,match", [
    (SampleOptions, {"n": 0}, "n must be a positive integer"), (SampleOptions, {"n": "many"}, "or 'auto'"),
    (SampleOptions, {"n": 2.0}, "n must be"), (SampleOptions, {"steps": 0}, "steps must be a positive integer"),
    (SampleOptions, {"eta": 1.5}, r"eta must be a number in \[0, 1\]"), (SampleOptions, {"max_n": 0}, "max_n"),
    (SampleOptions, {"tolerance": 1}, r"tolerance must be a number in \[0, 1\)"),
    (SampleOptions, {"return_samples": 1}, "return_samples must be True or False"),
    (VolumeOptions, {"axis": 3}, "axis must be 0, 1 or 2"), (VolumeOptions, {"axis": True}, "axis must be"),
    (VolumeOptions, {"max_batch": 0}, "max_batch must be a positive integer"),
    (SegmentOptions, {"formats": "nifti,gif"}, "unknown output format"),
    (SegmentOptions, {"select": "colour=red"}, "colour"),
    (EngineOptions, {"memory_limit": 0}, "memory_limit"), (EngineOptions, {"kernels": "yes"}, "kernels must be"),
    (RayOptions, {"workers": 0}, "workers must be a positive integer"), (RayOptions, {"retries": -1}, "retries"),
    (RayOptions, {"cpus_per_worker": -1}, "cpus_per_worker must be a non-negative number"),
])
def test_each_setting_is_checked_where_it_is_defined(cls, settings, match):
    with pytest.raises(InvalidArgumentError, match=match):
        cls(**settings)
    with pytest.raises(InvalidArgumentError, match=match):  # built from another object: checked again
        cls.of(cls(), **settings)


def test_of_merges_settings_over_an_object_and_refuses_unknown_ones():
    base = SegmentOptions(n=4, seed=9, formats=("nifti",))
    merged = SegmentOptions.of(base, steps=3)
    assert (merged.n, merged.seed, merged.steps, merged.formats) == (4, 9, 3, ("nifti",))
    assert SegmentOptions.of(base) is base and SampleOptions.of() == SampleOptions()
    with pytest.raises(InvalidArgumentError, match="unknown setting.*nn.*SegmentOptions has"):
        SegmentOptions.of(base, nn=3)
    with pytest.raises(InvalidArgumentError, match="options must be VolumeOptions, got SampleOptions"):
        VolumeOptions.of(SampleOptions())
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.n = 5


def test_values_are_normalised():
    options = SegmentOptions(n=np.int64(3), seed=np.uint64(5), eta=0, formats="npy, nifti")
    assert (type(options.n), type(options.seed), options.eta, options.formats) == (int, int, 0.0, ("npy", "nifti"))
    assert VolumeOptions().return_samples is False and SampleOptions().return_samples is True
    assert SampleOptions(n="auto", max_n=12).draws == 12 and SampleOptions(n=5).draws == 5


def test_the_api_takes_keywords_beyond_the_first_argument(small_model, rng):
    seg = Segmenter(small_model, backend="torch", device="cpu")
    for method in (Segmenter.__init__, Segmenter.sample, Segmenter.sample_batch, Segmenter.segment_volume):
        kinds = [p.kind for p in inspect.signature(method).parameters.values()][2:]
        assert all(k in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for k in kinds), method
    img = rng.random((40, 44)).astype(np.float32)
    with pytest.raises(TypeError):
        seg.sample(img, 2)
    by_keywords = seg.sample(img, n=2, steps=3, seed=4)
    by_object = seg.sample(img, options=SampleOptions(n=2, steps=3, seed=4))
    overridden = seg.sample(img, options=SampleOptions(n=2, steps=5, seed=1), steps=3, seed=4)
    for other in (by_object, overridden):
        np.testing.assert_array_equal(other.latents, by_keywords.latents)
    with pytest.raises(InvalidArgumentError, match="unknown setting"):
        seg.sample(img, samples=2)


def test_the_service_leaves_unset_settings_to_the_options():
    config = ServeConfig(model="builtin:phantom", n=4, select="modality=MR")
    assert config.segment_options() == SegmentOptions(n=4, select="modality=MR")
    assert ServeConfig(model="m").segment_options() == SegmentOptions()
    assert ServeConfig(model="m", backend="torch").engine_options() == EngineOptions(backend="torch")
    with pytest.raises(InvalidArgumentError, match="n must be a positive integer"):
        ServeConfig(model="m", n=0).check()
