"""ldseg_rt: an inference runtime for diffusion models that segment medical images.

    seg = ldseg_rt.Segmenter(engine)
    res = seg.sample(img, n=16, seed=0)   # res.samples, res.mask, res.probs, res.uncertainty
"""
import os

# PyTorch's CPU threads wait for each other in GNU OpenMP barriers that spin for 300,000 rounds by
# default before sleeping: on a machine whose cores other programs also use, a thread spins while
# the one it waits for is descheduled, and calls collapse. 1,000 rounds cost nothing quiet and keep
# a busy machine's calls near their fair share (section speed/busy_machine of benchmarks/RESULTS.md).
# OpenMP reads this once, when torch is first imported: it applies only if ldseg_rt is imported
# before torch, and never overrides a value the user set.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .configs import CONFIGS, LDSegConfig, get_config  # noqa: E402
from .errors import (BackendError, BundleError, ConfigError, DatasetError, DeviceError, ExportError, ImageTypeError,
                     InvalidArgumentError, InvalidImageError, LdsegError, ModelLoadError, SeriesNotSelectedError,
                     ServiceBusyError)
from .options import EngineOptions, NodeOptions, RayOptions, SampleOptions, SegmentOptions, VolumeOptions
from .pipeline.slicing import VolumeResult
from .segmenter import SampleResult, Segmenter

__version__ = "0.1.0"

__all__ = ["Segmenter", "SampleResult", "VolumeResult",
           "EngineOptions", "SampleOptions", "VolumeOptions", "SegmentOptions", "RayOptions", "NodeOptions",
           "LDSegConfig", "CONFIGS", "get_config",
           "LdsegError", "InvalidImageError", "ImageTypeError", "InvalidArgumentError", "BackendError", "DeviceError",
           "ModelLoadError", "BundleError", "ConfigError", "DatasetError", "SeriesNotSelectedError", "ExportError",
           "ServiceBusyError"]
