"""Exporters torch -> ONNX -> bundle (installed as ldseg_rt.export):
`python -m ldseg_rt.export CKPT --out NAME.ldseg`. TensorRT engines are built from the
bundle's ONNX graphs by the tensorrt backend, on the GPU that runs them."""
from .exporter import export_bundle

__all__ = ["export_bundle"]
