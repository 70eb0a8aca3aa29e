"""PyTorch reference modules of the model families."""
from .ldseg import LDSeg, Denoiser, ImageEncoder, LabelDecoder, LabelEncoder

__all__ = ["LDSeg", "Denoiser", "ImageEncoder", "LabelDecoder", "LabelEncoder"]
