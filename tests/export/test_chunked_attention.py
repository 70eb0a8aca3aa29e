"""export/chunked_attention.py: attention by blocks of queries against float64 softmax
attention, at token counts below, at and above the block (awkward remainders included), and
the exported graph of a long-sequence attention layer against the torch layer."""
import numpy as np
import pytest
import torch

from ldseg_rt.export.chunked_attention import QUERY_BLOCK, chunked_attention, with_chunked_attention
from ldseg_rt.export.onnx_graphs import relative_error, to_onnx
from ldseg_rt.models.layers import SelfAttention


def float64_attention(q, k, v, scale):
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    logits = q @ np.swapaxes(k, -1, -2) * scale
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


@pytest.mark.parametrize("b,heads,tokens,d", [(1, 2, 4096, 4), (2, 3, QUERY_BLOCK + 1, 5), (3, 1, 1000, 7),
                                              (1, 2, QUERY_BLOCK, 16), (2, 4, 2 * QUERY_BLOCK + 300, 2)])
def test_matches_float64_attention(rng, b, heads, tokens, d):
    q, k, v = (torch.from_numpy(rng.standard_normal((b, heads, tokens, d)).astype(np.float32)) for _ in range(3))
    scale = d ** -0.5
    got = chunked_attention(q, k, v, scale)
    assert got.shape == q.shape
    np.testing.assert_allclose(got.numpy(), float64_attention(q, k, v, scale), rtol=0, atol=1e-5)  # fp32 sums over up to 4096 keys


def test_exported_long_attention_matches_torch(rng):
    layer = SelfAttention(8, 2, 4, residual_from_normalized=False).eval()
    torch.nn.init.normal_(layer.proj.weight)  # the zero-initialised projection would hide attention
    inputs, outputs = {"image": ["batch", 8, 48, 48]}, {"out": ["batch", 8, 48, 48]}  # 2304 tokens
    graph = to_onnx(layer, inputs, outputs, t_max=1.0)
    assert relative_error(layer, graph, inputs, 3, rng, 1.0) < 1e-5
    assert layer.attend is torch.nn.functional.scaled_dot_product_attention  # the original is left alone
    assert with_chunked_attention(layer).attend is chunked_attention
