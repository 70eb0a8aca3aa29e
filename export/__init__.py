"""Exporters torch -> ONNX -> TensorRT (installed as ldseg_rt.export; SPEC section 4)."""
