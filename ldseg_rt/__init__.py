"""ldseg_rt: an inference runtime for diffusion models that segment medical images.

    seg = ldseg_rt.Segmenter(engine)
    res = seg.sample(img, n=16, seed=0)   # res.samples, res.mask, res.probs, res.uncertainty
"""
from .configs import CONFIGS, LDSegConfig, get_config
from .errors import (BackendError, ConfigError, DeviceError, ImageTypeError, InvalidArgumentError, InvalidImageError,
                     LdsegError, ModelLoadError)
from .segmenter import SampleResult, Segmenter

__version__ = "0.1.0"

__all__ = ["Segmenter", "SampleResult", "LDSegConfig", "CONFIGS", "get_config", "LdsegError",
           "InvalidImageError", "ImageTypeError", "InvalidArgumentError", "BackendError",
           "DeviceError", "ModelLoadError", "ConfigError"]
