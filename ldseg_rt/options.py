"""The settings of a run, each with its default and its check in this one place: frozen
dataclasses that the API, every command line, the service and Ray share.

    EngineOptions   how the model runs: backend, device, precision, memory_limit
    SampleOptions   how one image is sampled: n, steps, seed, eta, return_samples (n="auto": max_n, tolerance)
    VolumeOptions   SampleOptions, and how a 2-D model cuts a volume: axis, max_batch, progress
    SegmentOptions  VolumeOptions, and what a case reads and writes: select (series rule), formats
    RayOptions      where a batch runs on Ray: address, workers and what each reserves, retries
    NodeOptions     how the DICOM node meets the network: AE titles, completeness, timeouts, delivery

A function that takes options takes them as `options=` and keyword settings on top of them:
`seg.sample(img, n=8)` is `seg.sample(img, options=SampleOptions(n=8))`. Checks that need the
model (the range of steps, the memory an input needs) are the Segmenter's.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from .errors import InvalidArgumentError
from .memory import DEFAULT_MEMORY_LIMIT
from .seeds import check_seed

DEFAULT_N = 16  # samples per image, what scanner-side pipelines typically ask for
DEFAULT_MAX_BATCH = 8  # slices per batched pass through a 2-D model: n samples of each go through together


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


class _Options:
    """What every options class does: build itself from an options object and settings."""

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # a normalised value, set once in __post_init__

    @classmethod
    def of(cls, options=None, /, **settings):
        """`options` (default: the defaults) with `settings` on top; a setting these options
        do not have is refused by name."""
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise InvalidArgumentError(f"options must be {cls.__name__}, got {type(options).__name__}")
        known = {f.name for f in dataclasses.fields(options)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown setting(s) {', '.join(unknown)}; {type(options).__name__} has "
                                       f"{', '.join(sorted(known))}")
        return dataclasses.replace(options, **settings) if settings else options



@dataclass(frozen=True, kw_only=True)
class EngineOptions(_Options):
    """How a Segmenter runs its model. backend: 'auto', 'torch', 'onnxruntime', 'openvino' or
    'tensorrt'; device: 'auto', 'cpu' or 'cuda[:N]'; precision: 'auto' or one the backend
    offers (ldseg_rt.backends checks both); memory_limit: the most bytes of results one call
    may build (larger requests are refused before any work); kernels, cuda_graphs: the torch
    backend's Triton kernels and CUDA graph capture (None: on CUDA, off elsewhere)."""
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    kernels: bool | None = None
    cuda_graphs: bool | None = None

    def __post_init__(self):
        for name in ("backend", "precision"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"{name} must be a name, got {getattr(self, name)!r}")
        if isinstance(self.memory_limit, bool) or not isinstance(self.memory_limit, numbers.Integral) \
                or self.memory_limit < 1:
            raise InvalidArgumentError(f"memory_limit must be a positive number of bytes, got {self.memory_limit!r}")
        self._set("memory_limit", int(self.memory_limit))
        for name in ("kernels", "cuda_graphs"):
            if getattr(self, name) is not None:
                _flag(getattr(self, name), name)

    def backend_options(self) -> dict:
        """The torch backend's own switches that were set."""
        return {name: getattr(self, name) for name in ("kernels", "cuda_graphs") if getattr(self, name) is not None}


@dataclass(frozen=True, kw_only=True)
class SampleOptions(_Options):
    """How one image is sampled. n: samples, or 'auto' (drawn until the result settles, up to
    max_n, see Segmenter.sample); steps: sampling steps (None: the model's); seed: None draws
    a fresh one, recorded in the result (ldseg_rt.seeds); eta: DDIM's noise (None: the
    model's; 0 deterministic); return_samples: keep the n class maps (else only probs, mask,
    uncertainty, whose memory does not grow with n)."""
    n: int | str = DEFAULT_N
    steps: int | None = None
    seed: int | None = None
    eta: float | None = None
    return_samples: bool = True
    max_n: int = 32
    tolerance: float = 0.005

    def __post_init__(self):
        if self.n != "auto":
            if isinstance(self.n, str):
                raise InvalidArgumentError(f"n must be a positive integer or 'auto', got {self.n!r}")
            self._set("n", _positive_int(self.n, "n"))
        if self.steps is not None:
            self._set("steps", _positive_int(self.steps, "steps"))
        self._set("seed", check_seed(self.seed))
        if self.eta is not None:
            if isinstance(self.eta, bool) or not isinstance(self.eta, numbers.Real) or not 0 <= self.eta <= 1:
                raise InvalidArgumentError(f"eta must be a number in [0, 1] (0: deterministic DDIM), got {self.eta!r}")
            self._set("eta", float(self.eta))
        _flag(self.return_samples, "return_samples")
        self._set("max_n", _positive_int(self.max_n, "max_n"))
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, numbers.Real) \
                or not 0 <= self.tolerance < 1:
            raise InvalidArgumentError(f"tolerance must be a number in [0, 1), got {self.tolerance!r}")

    @property
    def draws(self) -> int:
        """The most samples these options draw (n, or max_n for n='auto')."""
        return self.max_n if self.n == "auto" else self.n


@dataclass(frozen=True, kw_only=True)
class VolumeOptions(SampleOptions):
    """How a volume is segmented: SampleOptions per slice (a 2-D model) or for the whole volume
    (a 3-D model), and, for a 2-D model, the voxel axis it is sliced along (None: the model's
    training axis, else the through-plane axis) and at most max_batch slices per batched pass;
    progress: a progress bar over the batches. The n sample volumes are kept only on request."""
    return_samples: bool = False
    axis: int | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    progress: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.axis is not None and (isinstance(self.axis, bool) or self.axis not in (0, 1, 2)):
            raise InvalidArgumentError(f"axis must be 0, 1 or 2 (a voxel axis of the volume), got {self.axis!r}")
        self._set("max_batch", _positive_int(self.max_batch, "max_batch"))
        _flag(self.progress, "progress")


@dataclass(frozen=True, kw_only=True)
class SegmentOptions(VolumeOptions):
    """How each case is read, segmented and written: VolumeOptions, the series rule `select`
    for a folder holding several DICOM series ("modality=MR,description=T1.*,largest"), and
    the output formats (None: the case kind's defaults; a tuple or comma-separated text of
    nifti, dicom-seg, png, npy)."""
    select: str | None = None
    formats: tuple[str, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.select is not None:
            from .io.dicom_series import SeriesRule
            SeriesRule.parse(self.select)  # refused here, before any case is read
        if self.formats is not None:
            from .io.results import parse_formats
            text = self.formats if isinstance(self.formats, str) else ",".join(map(str, self.formats))
            self._set("formats", parse_formats(text))

    def series_rule(self):
        """The parsed series rule (None: take the only series there is)."""
        from .io.dicom_series import SeriesRule
        return None if self.select is None else SeriesRule.parse(self.select)


@dataclass(frozen=True, kw_only=True)
class RayOptions(_Options):
    """Where and how a batch runs on Ray. address: a cluster to join (None: RAY_ADDRESS, else a
    local cluster started for the run with `init_options` and shut down after; a Ray this
    process already runs is used as it is); workers: actors (None: as many as the cluster
    holds), each reserving cpus_per_worker (None: 1) and gpus_per_worker (None: 1 where the
    cluster has GPUs, else 0) and running torch on threads_per_worker threads (None: the
    driver's count, which keeps results bit-identical to a single-process run); retries: how
    often a case whose actor died is tried again; progress: Ray Data's progress bars."""
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int | None = None
    retries: int = 3
    progress: bool = True
    init_options: dict | None = None

    def __post_init__(self):
        for name in ("workers", "threads_per_worker"):
            if getattr(self, name) is not None:
                self._set(name, _positive_int(getattr(self, name), name))
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0):
                raise InvalidArgumentError(f"{name} must be a non-negative number, got {value!r}")
        self._set("retries", _non_negative_int(self.retries, "retries"))
        _flag(self.progress, "progress")


def _positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise InvalidArgumentError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class NodeOptions(_Options):
    """How the DICOM node meets the hospital's network. ae_title: its own; allowed_aes: the
    calling AE titles it accepts (none: it cannot start); quiet: seconds without an instance
    after which a series whose associations all ended with a normal release is complete;
    incomplete_after: seconds a series that an aborted, timed-out or refused association left
    incomplete waits for the rest before it is recorded failed; idle_timeout: seconds of silence
    after which an association is released (the ACSE, DIMSE and network timeouts);
    max_associations: open associations at once (more are rejected); send_retries and
    send_backoff: failed deliveries retried that often, the first after that many seconds,
    doubling; keep_received: keep a done series' instances (under the spool's received/);
    min_free_bytes: free disk in the spool below which new series are refused."""
    ae_title: str = "LDSEG_RT"
    allowed_aes: tuple = ()
    quiet: float = 5.0
    incomplete_after: float = 600.0
    idle_timeout: float = 30.0
    max_associations: int = 32
    send_retries: int = 10
    send_backoff: float = 30.0
    keep_received: bool = False
    min_free_bytes: int = 2 ** 30

    def __post_init__(self):
        if not isinstance(self.ae_title, str) or not 0 < len(self.ae_title.strip()) <= 16:
            raise InvalidArgumentError(f"ae_title must be 1 to 16 characters, got {self.ae_title!r}")
        if isinstance(self.allowed_aes, str) or not all(isinstance(ae, str) and ae for ae in self.allowed_aes):
            raise InvalidArgumentError(f"allowed_aes must be a list of calling AE titles, got {self.allowed_aes!r}")
        self._set("allowed_aes", tuple(self.allowed_aes))
        for name in ("quiet", "incomplete_after", "idle_timeout", "send_backoff"):
            self._set(name, _positive_number(getattr(self, name), name))
        self._set("max_associations", _positive_int(self.max_associations, "max_associations"))
        for name in ("send_retries", "min_free_bytes"):
            self._set(name, _non_negative_int(getattr(self, name), name))
        _flag(self.keep_received, "keep_received")
