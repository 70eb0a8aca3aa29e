"""The exceptions ldseg_rt raises for bad input, each naming what is wrong.

They subclass ValueError or TypeError, so callers that already catch those keep working.
"""


class LdsegError(Exception):
    """Base of every ldseg_rt error."""


class InvalidImageError(LdsegError, ValueError):
    """The image's values or shape cannot be segmented (NaN/Inf, rank, channels, size)."""


class ImageTypeError(LdsegError, TypeError):
    """The image is not a numeric numpy array or torch tensor."""


class InvalidArgumentError(LdsegError, ValueError):
    """An argument is out of range (n, steps, eta, seed, a slicing axis)."""


class BackendError(LdsegError, ValueError):
    """The requested backend is unknown or cannot run here."""


class DeviceError(LdsegError, ValueError):
    """The requested device is unknown or not present on this machine."""


class ModelLoadError(LdsegError, ValueError):
    """A model file or built-in name cannot be loaded (missing, corrupt, incompatible)."""


class ConfigError(LdsegError, ValueError):
    """A model configuration name or field is unknown or inconsistent."""


class DatasetError(LdsegError, ValueError):
    """An image or label folder cannot be paired (missing, empty, unmatched or ambiguous files)."""


class SeriesNotSelectedError(DatasetError):
    """No DICOM series in a folder matches the series rule: the case is skipped, not failed."""


class BundleError(ModelLoadError):
    """A bundle is corrupt, incomplete, or written by an incompatible format version."""


class ExportError(LdsegError, RuntimeError):
    """An exported graph fails its checks (ONNX checker, agreement with PyTorch)."""


class ServiceBusyError(LdsegError, RuntimeError):
    """The service's work queue is full: the request was not accepted; try again later."""
