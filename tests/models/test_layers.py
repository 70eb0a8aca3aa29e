"""The Keras-compatible blocks against float64 numpy implementations of their definitions."""
import math

import numpy as np
import pytest
import torch

from ldseg_rt.models.layers import (KERAS_EPS, SameConv2d, SameConvTranspose2d, SelfAttention, TimeEmbedding,
                                    tf_same_padding)


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (512, 3, 2, (0, 1)), (9, 3, 1, (1, 1)),
    (6, 1, 2, (0, 0)), (5, 5, 1, (2, 2)), (10, 4, 2, (1, 1)), (11, 4, 3, (1, 1)), (11, 5, 3, (1, 2)),
])
def test_tf_same_padding_hand_cases(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def conv2d_same_numpy(x, w, b, stride):
    """TF 'same' conv from its definition: output ceil(n/s), input index o*s + k - pad_before."""
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    pt = max((oh - 1) * stride + kh - h, 0) // 2
    pl = max((ow - 1) * stride + kw - wd, 0) // 2
    out = np.zeros((n, cout, oh, ow)) + b[None, :, None, None]
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for c in range(kw):
                    y, xx = i * stride + a - pt, j * stride + c - pl
                    if 0 <= y < h and 0 <= xx < wd:
                        out[:, :, i, j] += x[:, :, y, xx] @ w[:, :, a, c].T
    return out


@pytest.mark.parametrize("shape,kernel,stride", [((2, 3, 8, 8), 3, 2), ((1, 2, 7, 9), 3, 2),
                                                 ((3, 4, 5, 6), 3, 1), ((1, 1, 6, 5), 1, 2)])
def test_same_conv_matches_definition(rng, shape, kernel, stride):
    conv = SameConv2d(shape[1], 5, kernel, stride).double()
    torch.nn.init.normal_(conv.bias)
    x = rng.standard_normal(shape)
    got = conv(torch.from_numpy(x)).detach().numpy()
    want = conv2d_same_numpy(x, conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 1, 1, 1), (1, 2, 3, 5), (2, 4, 16, 16)])
def test_conv_transpose_same_is_keras_crop(rng, shape):
    """Keras Conv2DTranspose(k3, s2, 'same') is the adjoint of the (0, 1)-padded stride-2
    conv: out[2o + a] += x[o] w[a] for out indices in [0, 2n), the trailing row/col cut."""
    layer = SameConvTranspose2d(shape[1], 3).double()
    torch.nn.init.normal_(layer.bias)
    x = rng.standard_normal(shape)
    w = layer.weight.detach().numpy()  # (in, out, k, k)
    n, cin, h, wd = shape
    full = np.zeros((n, 3, 2 * h + 1, 2 * wd + 1))
    for i in range(h):
        for j in range(wd):
            for a in range(3):
                for c in range(3):
                    full[:, :, 2 * i + a, 2 * j + c] += x[:, :, i, j] @ w[:, :, a, c]
    want = full[:, :, :2 * h, :2 * wd] + layer.bias.detach().numpy()[None, :, None, None]
    got = layer(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (n, 3, 2 * h, 2 * wd)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def attention_numpy(x, layer: SelfAttention):
    """float64 reference: GroupNorm(eps 1e-3), dense q/k/v, heads = contiguous channel slices
    (Keras reshape (B, T, heads, d)), softmax(q k^T / sqrt(d)) v, dense proj, residual."""
    p = {k: v.detach().double().numpy() for k, v in layer.state_dict().items()}
    b, c, h, w = x.shape
    g = layer.norm.num_groups
    xg = x.reshape(b, g, -1)
    normed = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + KERAS_EPS)).reshape(x.shape)
    normed = normed * p["norm.weight"][None, :, None, None] + p["norm.bias"][None, :, None, None]
    tokens = normed.reshape(b, c, h * w).transpose(0, 2, 1)
    q, k, v = (tokens @ p[f"{n}.weight"].T + p[f"{n}.bias"] for n in ("query", "key", "value"))
    d = c // layer.heads
    out = np.zeros_like(q)
    for head in range(layer.heads):
        sl = slice(head * d, (head + 1) * d)
        scores = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / math.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, :, sl] = (scores / scores.sum(-1, keepdims=True)) @ v[:, :, sl]
    out = out @ p["proj.weight"].T + p["proj.bias"]
    out = out.transpose(0, 2, 1).reshape(x.shape)
    return (normed if layer.residual_from_normalized else x) + out


@pytest.mark.parametrize("channels,heads,groups,size", [(64, 8, 8, 8), (32, 1, 4, 5), (1, 1, 1, 4),
                                                        (16, 2, 4, 3), (24, 3, 8, 1)])
@pytest.mark.parametrize("from_normalized", [False, True])
def test_self_attention_matches_reference(rng, channels, heads, groups, size, from_normalized):
    layer = SelfAttention(channels, heads, groups, from_normalized).double()
    with torch.no_grad():
        for prm in layer.parameters():
            prm.copy_(torch.from_numpy(rng.standard_normal(prm.shape) * 0.5))
    x = rng.standard_normal((2, channels, size, size + 1)) * 3 + 1
    got = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, attention_numpy(x, layer), rtol=1e-9, atol=1e-10)


def test_time_embedding_formula(rng):
    t = rng.uniform(0, 999, size=7)
    got = TimeEmbedding(64)(torch.from_numpy(t)).numpy()
    freqs = np.exp(-np.arange(32) * math.log(10000) / 31)
    want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(got, want, atol=5e-4)  # float32 angles up to 999 rad
