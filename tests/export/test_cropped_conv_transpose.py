"""export/cropped_conv_transpose.py: a Keras-'same' transposed convolution exported as one
ConvTranspose with end padding computes what the torch layer does, at several kernels,
strides and awkward sizes, and the graph has no Slice left."""
import onnx
import pytest
import torch

from ldseg_rt.export.cropped_conv_transpose import CroppedConvTranspose2d, with_cropped_conv_transposes
from ldseg_rt.export.onnx_graphs import relative_error, to_onnx
from ldseg_rt.models.layers import SameConvTranspose2d


@pytest.mark.parametrize("cin,cout,k,s,h,w", [(1, 32, 3, 2, 32, 32), (3, 5, 3, 2, 7, 9), (4, 2, 4, 2, 5, 6),
                                              (2, 3, 5, 3, 4, 4), (2, 2, 2, 2, 1, 3)])
def test_exported_graph_equals_the_layer(rng, cin, cout, k, s, h, w):
    layer = SameConvTranspose2d(cin, cout, k, s).eval()
    torch.nn.init.normal_(layer.bias)
    inputs, outputs = {"z": ["batch", cin, h, w]}, {"out": ["batch", cout, s * h, s * w]}
    graph = to_onnx(layer, inputs, outputs, t_max=1.0)
    ops = [node.op_type for node in onnx.load_from_string(graph).graph.node]
    assert ops.count("ConvTranspose") == 1 and "Slice" not in ops
    assert relative_error(layer, graph, inputs, 3, rng, 1.0) < 1e-6


def test_torch_forward_equals_the_layer_and_the_original_is_left_alone(rng):
    model = torch.nn.Sequential(SameConvTranspose2d(2, 4), torch.nn.SiLU(), SameConvTranspose2d(4, 3)).eval()
    rewritten = with_cropped_conv_transposes(model)
    assert isinstance(rewritten[0], CroppedConvTranspose2d) and isinstance(model[0], SameConvTranspose2d)
    x = torch.from_numpy(rng.standard_normal((2, 2, 5, 7))).float()
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=0, atol=1e-6)


def test_kernel_smaller_than_stride_is_refused():
    with pytest.raises(ValueError, match="no single-ConvTranspose form"):
        CroppedConvTranspose2d(SameConvTranspose2d(2, 2, kernel=1, stride=2))
