"""PyTorch reference modules of the model families."""
from .ambiguous import AmbiguousModel, AmbiguousUNet
from .ldseg import Denoiser, ImageEncoder, LabelDecoder, LabelEncoder, LDSeg

MODELS = {"ldseg": LDSeg, "ambiguous": AmbiguousModel}  # by configuration family


def build_model(cfg, seed: int = 0):
    """A model of the configuration's family with random weights, reproducible for a seed."""
    return MODELS[cfg.family].from_config(cfg, seed)


__all__ = ["AmbiguousModel", "AmbiguousUNet", "LDSeg", "Denoiser", "ImageEncoder", "LabelDecoder", "LabelEncoder",
           "MODELS", "build_model"]
