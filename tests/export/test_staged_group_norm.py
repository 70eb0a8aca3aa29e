"""GroupNorm as exported: statistics reduced axis by axis, equal to nn.GroupNorm in torch and, through
onnxruntime, to a float64 GroupNorm on groups of millions of values (where the plain operator drifts)."""
import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from ldseg_rt.export.staged_group_norm import STAGED_FROM, StagedGroupNorm, with_staged_group_norms
from ldseg_rt.models.layers import group_norm


def onnx_run(module, x: torch.Tensor) -> np.ndarray:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, input_names=["x"], output_names=["y"], opset_version=18,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def reference(norm, x: torch.Tensor) -> np.ndarray:
    out = F.group_norm(x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps)
    return (F.silu(out) if type(norm).__name__ == "GroupNormSiLU" else out).detach().numpy()


@pytest.mark.parametrize("shape, groups, silu", [((3, 8, 40, 50, 37), 4, True), ((2, 12, 300, 260), 3, False),
                                                 ((1, 4, 7, 9), 2, True)])
def test_staged_equals_group_norm(rng, shape, groups, silu):
    norm = group_norm(groups, shape[1], silu=silu)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        x = torch.from_numpy(rng.normal(3.0, 0.5, shape).astype(np.float32))
        np.testing.assert_allclose(StagedGroupNorm(norm)(x).numpy(), reference(norm, x), atol=2e-5)


def test_exported_large_groups_match_float64(rng):
    """Groups of 4.2M values with a large mean: the staged graph stays at float32 rounding; the plain one
    is an order of magnitude (or more) further off."""
    norm = group_norm(4, 32, silu=True)
    x = torch.from_numpy((5.0 + rng.standard_normal((1, 32, 64, 64, 128))).astype(np.float32))
    assert x[0].numel() // 4 >= STAGED_FROM
    want = reference(norm, x)
    staged = np.abs(onnx_run(with_staged_group_norms(torch.nn.Sequential(norm), (x,)), x) - want).max()
    plain = np.abs(onnx_run(torch.nn.Sequential(norm), x) - want).max()
    assert staged / np.abs(want).max() < 1e-5 and staged < plain / 10, (staged, plain)


def test_only_large_groups_are_staged():
    small, large = group_norm(2, 8), group_norm(2, 8)
    module = torch.nn.Sequential(small, torch.nn.Upsample(scale_factor=(8, 64, 64)), large)
    staged = with_staged_group_norms(module, (torch.rand(2, 8, 4, 4, 4),))
    assert isinstance(staged[0], torch.nn.GroupNorm) and isinstance(staged[2], StagedGroupNorm)
