"""The 3-D LDSeg networks (design section L3): the official sizes, shapes, and the 3-D layers against
float64 numpy implementations of their definitions, on awkward shapes."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import perturbed
from ldseg_rt.configs import get_config
from ldseg_rt.errors import ConfigError
from ldseg_rt.models import LDSeg
from ldseg_rt.models.layers import (KERAS_EPS, KERAS_MIN_SCALE, SameConv3d, SelfAttention, Upsample, same_conv,
                                    tf_same_padding)
from ldseg_rt.models.ldseg3d import Denoiser3D, ImageEncoder3D, LabelDecoder3D, LabelEncoder3D

# Keras count_params() of the official model3D.py networks built at 128x128x256 (the savedModels load into
# them): trainable weights plus BatchNorm moving statistics.
KERAS_COUNTS = {"image_encoder": 138_853, "label_encoder": 788_897, "decoder": 788_431, "denoiser": 2_209_937}
KERAS_NON_TRAINABLE = {"image_encoder": 2, "label_encoder": 1_248, "decoder": 1_158, "denoiser": 0}


def keras_count(module: nn.Module) -> tuple[int, int]:
    """(all, non-trainable) as Keras counts them: parameters plus BN running mean/var (not num_batches_tracked)."""
    stats = sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in module.parameters()) + stats, stats


@pytest.fixture(scope="module")
def knee3d_meta() -> LDSeg:
    """knee3d without storage or arithmetic: its parameters and shapes, not its values."""
    with torch.device("meta"):
        return LDSeg(get_config("knee3d")).eval()


@pytest.fixture(scope="module")
def small3d() -> LDSeg:
    return perturbed(LDSeg.from_config(get_config("small3d"), seed=2), seed=3).eval()


@pytest.mark.parametrize("part", sorted(KERAS_COUNTS))
def test_knee3d_parameter_counts_match_keras(knee3d_meta, part):
    assert keras_count(getattr(knee3d_meta, part)) == (KERAS_COUNTS[part], KERAS_NON_TRAINABLE[part])


def test_knee3d_structure(knee3d_meta):
    """What the counts alone would not pin: the layers that make the 3-D networks differ from the 2-D ones."""
    enc, lab, den = knee3d_meta.image_encoder, knee3d_meta.label_encoder, knee3d_meta.denoiser
    assert (type(enc), type(lab), type(den), type(knee3d_meta.decoder)) == (
        ImageEncoder3D, LabelEncoder3D, Denoiser3D, LabelDecoder3D)
    assert [(b.conv1.groups, b.conv2.groups, b.residual.groups, type(b.down)) for b in enc.blocks] == \
        [(4, 4, 1, nn.MaxPool3d)] * 4
    assert not any(isinstance(m, SelfAttention) for m in enc.modules())
    assert enc.to_latent.kernel_size == (3, 3, 3)
    downsamples = [m for m in lab.blocks if isinstance(m, SameConv3d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in downsamples] == \
        [(16, 16, (2,) * 3), (32, 32, (2,) * 3), (64, 64, (2,) * 3), (64, 64, (2,) * 3)]
    assert lab.to_latent.kernel_size == (2, 2, 2) and lab.to_latent.needs_tf_pad
    assert lab.norm.normalized_shape == (1, 8, 8, 16)
    # Skips from the six res blocks only, two up blocks per level.
    assert [b.res.conv1.in_channels for b in den.up] == [128, 128, 96, 64, 48, 32]
    assert [isinstance(b.attention, SelfAttention) for b in den.up] == [True] * 4 + [False] * 2
    assert all(b.attention.heads == 1 and b.attention.residual_from_normalized
               for b in [*den.down, *den.middle, *den.up] if isinstance(b.attention, SelfAttention))


@pytest.mark.parametrize("name", ["knee3d", "small3d"])
def test_shapes(name, knee3d_meta, small3d):
    cfg = get_config(name)
    model, device = (knee3d_meta, "meta") if name == "knee3d" else (small3d, "cpu")
    assert model.config.name == name
    latent, image = cfg.latent_shape, cfg.image_shape
    assert cfg.spatial_dims == 3 and len(latent) == 4
    with torch.no_grad(), torch.device(device):
        z_i = model.image_encoder(torch.rand(2, cfg.in_channels, *image))
        z_l = model.label_encoder(torch.randint(0, cfg.num_classes, (2, 1, *image)).float())
        eps = model.denoiser(torch.randn(2, *latent), z_i, torch.tensor([0.0, 999.0]))
        probs = model.decoder(torch.randn(2, *latent))
        logits = model.decoder.logits(torch.randn(2, *latent))
    assert z_i.shape == z_l.shape == eps.shape == (2, *latent)
    assert probs.shape == logits.shape == (2, cfg.num_classes, *image)
    if device == "cpu":
        torch.testing.assert_close(probs.sum(1), torch.ones(2, *image))
        assert torch.isfinite(eps).all() and torch.isfinite(z_i).all()


def test_networks_are_batch_independent(small3d):
    cfg = small3d.config
    gen = torch.Generator().manual_seed(0)
    z, z_i = (torch.randn(3, *cfg.latent_shape, generator=gen) for _ in range(2))
    image = torch.rand(3, 1, *cfg.image_shape, generator=gen)
    t = torch.tensor([999.0, 71.4, 0.0])
    with torch.no_grad():
        for batched, alone in [
            (small3d.denoiser(z, z_i, t), [small3d.denoiser(z[i:i + 1], z_i[i:i + 1], t[i:i + 1]) for i in range(3)]),
            (small3d.decoder(z), [small3d.decoder(z[i:i + 1]) for i in range(3)]),
            (small3d.image_encoder(image), [small3d.image_encoder(image[i:i + 1]) for i in range(3)]),
        ]:
            torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_attention_in_the_image_encoder_when_configured():
    """knee3d has none (as the official network); a configuration's flags still add it."""
    import dataclasses
    cfg = dataclasses.replace(get_config("small3d"), name="small3d_attn", image_encoder_attention=(False, False, True))
    model = LDSeg.from_config(cfg)
    assert sum(isinstance(m, SelfAttention) for m in model.image_encoder.modules()) == 1
    with torch.no_grad():
        assert model.image_encoder(torch.rand(1, 1, *cfg.image_shape)).shape == (1, *cfg.latent_shape)


def test_official_initialisers():
    """kernel_init(0) is VarianceScaling(1e-10): tiny, not zero; from_config is seeded."""
    a, b = (LDSeg.from_config(get_config("small3d"), seed=7) for _ in range(2))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    for conv in (a.image_encoder.to_latent, a.image_encoder.blocks[0].conv2, a.denoiser.down[0].res.conv2):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
        limit = math.sqrt(3 * KERAS_MIN_SCALE / ((fan_in + fan_out) / 2))
        assert 0 < conv.weight.abs().max() <= limit
    proj = a.denoiser.middle[0].attention.proj.weight
    assert 0 < proj.abs().max() < 1e-4


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (16, 2, 1, (0, 1)), (7, 2, 1, (0, 1)), (8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (5, 2, 2, (0, 1)), (6, 2, 2, (0, 0)),
])
def test_tf_same_padding_of_the_3d_cases(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def conv3d_same_numpy(x, w, b, stride, groups):
    """TF Conv3D(padding='same') from its definition, in float64: output ceil(n / s) per axis, output o
    reads input o*s + a - pad_before for kernel offset a (zero outside), pad_before = floor(total / 2) of
    total = max((out - 1) s + k - n, 0); groups split input and output channels into contiguous blocks."""
    n, cin, *size = x.shape
    cout, cin_g, *kernel = w.shape
    out_size = [-(-s // stride) for s in size]
    before = [max((o - 1) * stride + k - s, 0) // 2 for o, k, s in zip(out_size, kernel, size)]
    out = np.zeros((n, cout, *out_size)) + b[:, None, None, None]
    cout_g = cout // groups
    for offset in np.ndindex(*kernel):
        index = [np.arange(o) * stride + a - p for o, a, p in zip(out_size, offset, before)]
        d, h, w_ = ((i >= 0) & (i < s) for i, s in zip(index, size))
        inside = d[:, None, None] & h[None, :, None] & w_[None, None, :]
        patch = x[np.ix_(range(n), range(cin), *[np.clip(i, 0, s - 1) for i, s in zip(index, size)])] * inside
        for g in range(groups):
            out[:, g * cout_g:(g + 1) * cout_g] += np.einsum(
                "oc,ncdhw->nodhw", w[g * cout_g:(g + 1) * cout_g, :, *offset], patch[:, g * cin_g:(g + 1) * cin_g])
    return out


@pytest.mark.parametrize("shape,cout,kernel,stride,groups", [
    ((2, 4, 8, 6, 10), 5, 3, 2, 1),   # even sizes: pad (0, 1) per axis, the downsampling convs
    ((1, 3, 7, 5, 9), 2, 3, 2, 1),    # odd sizes: pad (1, 1)
    ((1, 3, 8, 5, 6), 2, 3, 2, 1),    # mixed
    ((2, 3, 4, 5, 6), 1, 2, 1, 1),    # kernel 2, stride 1: pad (0, 1), the label encoder's head
    ((1, 2, 5, 4, 3), 3, 2, 2, 1),    # kernel 2, stride 2
    ((2, 8, 3, 4, 5), 4, 3, 1, 4),    # grouped (the image encoder's convs), stride 1: symmetric
    ((1, 4, 6, 3, 5), 6, 3, 2, 2),    # grouped and strided
    ((1, 3, 2, 3, 4), 5, 1, 1, 1),    # 1x1x1
])
def test_same_conv3d_matches_definition(rng, shape, cout, kernel, stride, groups):
    conv = same_conv(shape[1], cout, kernel, stride, groups=groups, dims=3).double()
    assert isinstance(conv, SameConv3d)
    torch.nn.init.normal_(conv.bias)
    x = rng.standard_normal(shape)
    got = conv(torch.from_numpy(x)).detach().numpy()
    want = conv3d_same_numpy(x, conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride, groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_same_conv_refuses_other_dimensions():
    with pytest.raises(ConfigError, match="1 spatial dimensions"):
        same_conv(1, 1, 3, dims=1)


def attention3d_numpy(x, p, groups, from_normalized):
    """The official 3-D AttentionBlock in float64, as model3D.py writes it (channels last): GroupNorm,
    q/k/v dense, scores einsum('bdhwc,bDHWc->bdhwDHW') * C^-0.5, softmax over all D*H*W, proj, + input."""
    b, c, *spatial = x.shape
    xg = x.reshape(b, groups, -1)
    normed = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + KERAS_EPS)).reshape(x.shape)
    normed = normed * p["norm.weight"][:, None, None, None] + p["norm.bias"][:, None, None, None]
    last = normed.transpose(0, 2, 3, 4, 1)
    q, k, v = (last @ p[f"{n}.weight"].T + p[f"{n}.bias"] for n in ("query", "key", "value"))
    scores = np.einsum("bdhwc,bDHWc->bdhwDHW", q, k) * c ** -0.5
    scores = scores.reshape(b, *spatial, -1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    weights = (scores / scores.sum(-1, keepdims=True)).reshape(b, *spatial, *spatial)
    proj = np.einsum("bdhwDHW,bDHWc->bdhwc", weights, v) @ p["proj.weight"].T + p["proj.bias"]
    return (normed if from_normalized else x) + proj.transpose(0, 4, 1, 2, 3)


@pytest.mark.parametrize("channels,groups,spatial", [(8, 4, (2, 3, 5)), (4, 1, (1, 1, 1)), (12, 4, (3, 1, 4))])
@pytest.mark.parametrize("from_normalized", [True, False])
def test_self_attention_over_volume_tokens(rng, channels, groups, spatial, from_normalized):
    layer = SelfAttention(channels, 1, groups, from_normalized).double()
    with torch.no_grad():
        for prm in layer.parameters():
            prm.copy_(torch.from_numpy(rng.standard_normal(prm.shape) * 0.5))
    x = rng.standard_normal((2, channels, *spatial)) * 3 + 1
    got = layer(torch.from_numpy(x)).detach().numpy()
    p = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    np.testing.assert_allclose(got, attention3d_numpy(x, p, groups, from_normalized), rtol=1e-9, atol=1e-10)


def test_label_encoder_layer_norm_is_over_the_whole_latent(rng):
    """Keras LayerNormalization(axis=(1, 2, 3, 4)): one mean and variance per sample, per-element affine."""
    norm = LabelEncoder3D(get_config("small3d")).norm.double()
    shape = norm.normalized_shape
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.standard_normal(shape)))
        norm.bias.copy_(torch.from_numpy(rng.standard_normal(shape)))
    x = rng.standard_normal((3, *shape)) * 4 + 2
    flat = x.reshape(3, -1)
    want = ((flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + KERAS_EPS)).reshape(x.shape)
    want = want * norm.weight.detach().numpy() + norm.bias.detach().numpy()
    np.testing.assert_allclose(norm(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_upsampling_repeats_each_voxel(rng):
    """Keras UpSampling3D(2): every voxel repeated 2x2x2, before the conv."""
    x = rng.standard_normal((2, 3, 2, 3, 5))
    want = x.repeat(2, axis=2).repeat(2, axis=3).repeat(2, axis=4)
    up = Upsample(3, 4, dims=3)
    assert isinstance(up[1], SameConv3d) and up[1].out_channels == 4
    np.testing.assert_array_equal(up[0](torch.from_numpy(x)).numpy(), want)
