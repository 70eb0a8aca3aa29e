"""The pixel-space ambiguous-segmentation U-Net: published size, shapes, the output head,
conditioning, seeding, where attention sits, and ONNX export."""
import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch

from conftest import perturbed
from ldseg_rt.configs import AmbiguousConfig, get_config
from ldseg_rt.errors import ConfigError
from ldseg_rt.models import AmbiguousUNet
from ldseg_rt.models.ambiguous import MultiHeadAttention, SinusoidalEmbedding

AMB_CONFIGS = ["amb128", "amb_small"]

# amb128 is the original's UNetModel (JakobLC/AmbDiffSeg, default config) exactly, except that
# its stem sees 1 + 3 channels (grayscale repeated to RGB): the original has 6,891,905, 576
# stem weights more. Both are the paper's "about 6.9M".
PARAMETERS = {"amb128": 6_891_329, "amb_small": 288_225}


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(cfg, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return (torch.randn(batch, 1, s, s, generator=gen), torch.rand(batch, cfg.in_channels, s, s, generator=gen),
            torch.rand(batch, generator=gen))


@pytest.fixture(scope="module")
def small_unet():
    return perturbed(AmbiguousUNet.from_config(get_config("amb_small"), seed=3), seed=4).eval()


@pytest.mark.parametrize("name", AMB_CONFIGS)
def test_parameter_count(name):
    model = AmbiguousUNet.from_config(get_config(name))
    assert trainable(model) == PARAMETERS[name]
    if name == "amb128":
        assert round(trainable(model) / 1e6, 1) == 6.9  # the paper: "~6.9M parameters"
    # No state beyond the weights (no BatchNorm statistics; the frequencies are not saved).
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", AMB_CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(name, batch):
    cfg = get_config(name)
    model = perturbed(AmbiguousUNet.from_config(cfg), seed=1).eval()
    with torch.no_grad():
        out = model(*inputs(cfg, batch))
    assert out.shape == (batch, 1, cfg.image_size, cfg.image_size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_fresh_model_outputs_zero():
    """The original's zero inits (res-block second convs, attention projections, the head)."""
    cfg = get_config("amb_small")
    with torch.no_grad():
        out = AmbiguousUNet.from_config(cfg)(*inputs(cfg, 2))
    assert torch.equal(out, torch.zeros_like(out))


def test_x_prediction_is_tanh_and_eps_v_are_not_squashed():
    base = get_config("amb_small")
    models = {}
    for prediction in ("x", "eps", "v"):
        model = AmbiguousUNet.from_config(dataclasses.replace(base, prediction=prediction), seed=2)
        perturbed(model, seed=5)
        with torch.no_grad():
            model.out_conv.weight.mul_(20.0)  # a head large enough to leave (-1, 1)
        models[prediction] = model.eval()
    args = inputs(base, 3)
    with torch.no_grad():
        x, eps, v = (models[p](*args) for p in ("x", "eps", "v"))
    assert torch.equal(eps, v)  # the same raw head: only x is squashed
    assert eps.abs().max() > 1.5
    torch.testing.assert_close(x, torch.tanh(eps), rtol=0, atol=0)
    assert x.abs().max() <= 1 and (x.abs() < 1).float().mean() > 0.5


def test_condition_and_time_change_the_output(small_unet):
    cfg = small_unet.config
    x_t, image, _ = inputs(cfg, 2)
    _, other_image, _ = inputs(cfg, 2, seed=1)
    t, other_t = torch.tensor([0.05, 0.95]), torch.tensor([0.95, 0.05])
    with torch.no_grad():
        out = small_unet(x_t, image, t)
        by_image = small_unet(x_t, other_image, t)
        by_time = small_unet(x_t, image, other_t)
        by_x_t = small_unet(torch.randn_like(x_t), image, t)
    for changed in (by_image, by_time, by_x_t):
        assert (changed - out).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    # Every row depends on its own image only.
    with torch.no_grad():
        half = small_unet(x_t, torch.cat([image[:1], other_image[1:]]), t)
    torch.testing.assert_close(half[0], out[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(half[1], out[1])


def test_rows_are_batch_independent(small_unet):
    cfg = small_unet.config
    x_t, image, t = inputs(cfg, 4)
    with torch.no_grad():
        batched = small_unet(x_t, image, t)
        alone = torch.cat([small_unet(x_t[i:i + 1], image[i:i + 1], t[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_time_embedding_is_the_original_sinusoid():
    """cos then sin of t * 10^(-k/16), k < 16, for t in [0, 1] as given (max period 10)."""
    cfg = get_config("amb128")
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    got = SinusoidalEmbedding(cfg.time_embed_dim, cfg.time_max_period)(t).double()
    freqs = 10.0 ** (-np.arange(16) / 16)
    angles = t.double().numpy()[:, None] * freqs[None, :]
    expected = np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    assert SinusoidalEmbedding(5, 10.0)(t).shape == (4, 5)


@pytest.mark.parametrize("name,expected", [("amb128", (4, 3, 5)), ("amb_small", (1, 0, 2))])
def test_attention_only_at_the_lowest_resolution(name, expected):
    """Encoder blocks, middle (between res blocks) and decoder blocks of the lowest level."""
    cfg = get_config(name)
    model = AmbiguousUNet.from_config(cfg)
    counts = tuple(sum(isinstance(m, MultiHeadAttention) for m in part.modules())
                   for part in (model.encoder, model.middle, model.decoder))
    assert counts == expected
    lowest = cfg.image_size // 2 ** (len(cfg.channel_mults) - 1)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((tuple(args[0].shape[1:]), mod.heads)))
             for m in model.modules() if isinstance(m, MultiHeadAttention)]
    with torch.no_grad():
        model(*inputs(cfg, 1))
    for h in hooks:
        h.remove()
    width = cfg.base_channels * cfg.channel_mults[-1]
    assert seen == [((width, lowest, lowest), cfg.heads)] * sum(expected)


def test_attention_levels_config():
    cfg = AmbiguousConfig(name="two", image_size=32, base_channels=16, channel_mults=(1, 2, 2),
                          num_res_blocks=(1, 1, 1), num_middle_blocks=2, attention_levels=(1, 2), norm_groups=8)
    model = AmbiguousUNet.from_config(cfg)
    # Levels 1 and 2: 1 + 1 encoder, 1 middle, 2 + 2 decoder.
    assert sum(isinstance(m, MultiHeadAttention) for m in model.modules()) == 7
    assert AmbiguousConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="outside"):
        AmbiguousConfig(name="bad", attention_levels=(4,))
    with pytest.raises(ConfigError, match="heads"):
        AmbiguousConfig(name="bad", heads=3)


def test_onnx_export_matches_torch(small_unet):
    ort = pytest.importorskip("onnxruntime")
    cfg = small_unet.config
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_unet, inputs(cfg, 2), buffer, input_names=["x_t", "image", "t"],
                          output_names=["out"], opset_version=18, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ("x_t", "image", "t", "out")})
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        args = inputs(cfg, batch, seed=10 + batch)
        got = session.run(None, {n: a.numpy() for n, a in zip(("x_t", "image", "t"), args)})[0]
        with torch.no_grad():
            expected = small_unet(*args).numpy()
        assert got.shape == expected.shape == (batch, 1, cfg.image_size, cfg.image_size)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
