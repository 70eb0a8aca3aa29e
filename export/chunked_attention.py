"""Attention for exported graphs: softmax(q k^T scale) v in blocks of queries.

The ONNX graph of plain attention materialises the (B, heads, T, T) score matrix and its
softmax: 2 x 537 MB per image at glas512's 4096 tokens, the largest activation of the whole
pipeline. Blocks of QUERY_BLOCK queries give the same numbers (each query's softmax is over
all keys either way) with a quarter of that or less alive at once; the arithmetic is the same.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

QUERY_BLOCK = 1024


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, heads, T, d) q, k, v -> (B, heads, T, d), queries QUERY_BLOCK at a time."""
    keys = k.transpose(-2, -1) * scale
    if q.shape[-2] <= QUERY_BLOCK:
        return torch.softmax(q @ keys, dim=-1) @ v
    tokens = q.shape[-2]
    sizes = [QUERY_BLOCK] * (tokens // QUERY_BLOCK) + [tokens % QUERY_BLOCK] * bool(tokens % QUERY_BLOCK)
    # Explicit sizes: the exporter turns split(QUERY_BLOCK) into a Split that onnxruntime
    # rejects when the last block is shorter.
    blocks = [torch.softmax(block @ keys, dim=-1) @ v for block in q.split(sizes, dim=-2)]
    return torch.cat(blocks, dim=-2)


def with_chunked_attention(module: nn.Module) -> nn.Module:
    """A copy of module whose attention layers (either family's: those with an `attend`
    hook) attend with chunked_attention."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        if hasattr(layer, "attend"):
            layer.attend = chunked_attention
    return module
