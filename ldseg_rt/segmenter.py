"""The public API: one object that turns an image into n plausible segmentations, their
consensus and a per-pixel uncertainty map."""
from __future__ import annotations

import hashlib
import numbers
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import NEEDS_BUNDLE, create_backend
from .bundle import DIGEST, SUFFIX, Bundle, is_bundle, load_bundle
from .configs import get_config
from .diffusion.plan import SamplingPlan, sampling_plan
from .errors import InvalidArgumentError
from .models import build_model
from .models.checkpoint import BUILTIN_DIR, load_model
from .pipeline.aggregate import Aggregator
from .pipeline.preprocess import ROBUST, Prepared, prepare, spatial_size
from .pipeline.slicing import DEFAULT_MAX_BATCH, VolumeResult, segment_volume

SEED_LIMIT = 2 ** 64
MAX_STEPS = 1000  # both families' schedules are defined on at most 1000 distinct times
DEFAULT_MEMORY_LIMIT = 8 * 2 ** 30  # bytes of results one sample() call may build; Segmenter(memory_limit=...)
# sample(n="auto"): samples drawn per round, the fewest drawn, and the defaults of max_n and tolerance.
AUTO_CHUNK, AUTO_MIN_N, AUTO_MAX_N, AUTO_TOLERANCE = 4, 8, 32, 0.005


@dataclass
class SampleResult:
    """What `sample` returns for one image, numpy or torch like the image was."""
    samples: object  # (n, H, W) uint8 class maps at the input's resolution (None: return_samples=False)
    probs: object  # (C, H, W) float32, mean class probabilities over the samples
    mask: object  # (H, W) uint8 consensus: argmax of probs
    uncertainty: object  # (H, W) float32 in [0, 1], normalised predictive entropy
    latents: np.ndarray  # (n, c, h, w) float32 final latents, before the decoder
    seed: int  # the seed that reproduces these samples
    n: int  # how many samples were drawn (n="auto" decides it)
    timings: dict = field(default_factory=dict)  # ms per stage (of the whole batched pass)
    warnings: list = field(default_factory=list)  # why this result may not be trustworthy, in words


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, np.ndarray) and seed.ndim == 0:
        seed = seed.item()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _identity(engine, source) -> tuple[str, str | None]:
    """The model's name (a built-in's name, a bundle's or checkpoint's file stem, else its
    configuration's) and the sha256 that identifies its bytes (None for a model in memory)."""
    if isinstance(source, Bundle):
        return source.path.name.removesuffix(SUFFIX), source.manifest.get(DIGEST)
    if isinstance(engine, str) and engine.startswith("builtin:"):
        name = engine.split(":", 1)[1]
        return name, hashlib.sha256((BUILTIN_DIR / f"{name}.pt").read_bytes()).hexdigest()
    if isinstance(engine, (str, Path)):
        return Path(engine).stem, hashlib.sha256(Path(engine).read_bytes()).hexdigest()
    return source.config.name, None


class _Stopwatch:
    def __init__(self):
        self.ms = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3


class Segmenter:
    """`Segmenter(engine).sample(img, n=16)`.

    engine: an exported bundle (NAME.ldseg), 'builtin:NAME', a checkpoint path or a model
    module (LDSeg or AmbiguousModel). backend: 'auto', 'torch', 'onnxruntime' or 'tensorrt' (the last two run
    bundles; see ldseg_rt.backends for what 'auto' picks). device: 'auto', 'cpu' or
    'cuda[:N]'. precision: 'auto' or one the backend offers ('fp32'; 'fp16' on TensorRT;
    'fp16', 'bf16' with torch on CUDA; 'bf16' with torch on CPUs with AVX-512 bf16 or
    AMX). backend_options: torch's `kernels` and `cuda_graphs`
    (both on by default on CUDA; False turns the Triton kernels or the graph capture off).
    """

    def __init__(self, engine, backend: str = "auto", device="auto", precision: str = "auto",
                 memory_limit: int = DEFAULT_MEMORY_LIMIT, **backend_options):
        """memory_limit: the most bytes of results one call may build; a larger request is
        refused before any work, naming what it would need (see `sample`'s return_samples)."""
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, numbers.Integral) or memory_limit < 1:
            raise InvalidArgumentError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self.memory_limit = int(memory_limit)
        source = load_bundle(engine) if is_bundle(engine) else load_model(engine)
        self.backend = create_backend(backend, source, device, precision, **backend_options)
        self.model_name, self.model_sha256 = _identity(engine, source)
        self.config = self.backend.config
        self.class_names = (list(source.manifest["classes"]) if isinstance(source, Bundle) else
                            ["background"] + [f"class {c}" for c in range(1, self.config.num_classes)])
        # The training images' statistics, where training recorded them: images unlike them are flagged.
        recorded = source.manifest["preprocessing"] if isinstance(source, Bundle) else vars(source)
        self.input_statistics = recorded.get("input_statistics")
        # The voxel axis the model's training slices were cut along: volumes are sliced the same way.
        self.slice_axis = recorded.get("slice_axis")
        # How images are prepared: the official loader's way for imported official weights, else ours.
        self.preprocessing = (recorded.get("mode", ROBUST) if isinstance(source, Bundle) else
                              getattr(source, "preprocessing", ROBUST))

    @classmethod
    def from_config(cls, name: str, seed: int = 0, backend: str = "auto", device="auto",
                    precision: str = "auto", **backend_options) -> "Segmenter":
        """A model of a named configuration with random weights (the originals' initialisers),
        on any backend: one that runs bundles gets the model exported to a temporary bundle,
        removed with the Segmenter."""
        model = build_model(get_config(name), seed)
        if backend not in NEEDS_BUNDLE:
            return cls(model, backend, device, precision, **backend_options)
        from .export import export_bundle
        folder = tempfile.TemporaryDirectory(prefix="ldseg_rt-")
        bundle = export_bundle(model, Path(folder.name) / f"{name}.ldseg", source=f"from_config({name!r}, seed={seed})",
                               check_batches=(1,), progress=False)
        segmenter = cls(bundle.path, backend, device, precision, **backend_options)
        segmenter._bundle_folder = folder  # lives as long as the Segmenter
        return segmenter

    @property
    def backend_name(self) -> str:
        """The backend that runs the networks ('auto' resolved)."""
        return self.backend.name

    @property
    def precision(self) -> str:
        return self.backend.precision

    def sample(self, img, n: int | str = 16, steps: int | None = None, seed: int | None = None,
               eta: float | None = None, return_samples: bool = True, max_n: int = AUTO_MAX_N,
               tolerance: float = AUTO_TOLERANCE) -> SampleResult:
        """n segmentations of one image; with a seed, sample k is reproducible whatever n.
        return_samples=False keeps only probs, mask and uncertainty (samples is None), so the
        memory of the result does not grow with n.

        n="auto" draws samples AUTO_CHUNK at a time (the first AUTO_MIN_N in one call), up to
        max_n, and stops once the result has settled: after a chunk (from the AUTO_MIN_N-th
        sample on) that changed the consensus on at most `tolerance` of the pixels and moved the
        uncertainty map by at most `tolerance` on average. result.n says how many were drawn;
        with a seed they are the first result.n samples of any n, and a draw that reaches max_n
        unsettled says so in result.warnings."""
        if isinstance(n, str):
            if n != "auto":
                raise InvalidArgumentError(f"n must be a positive integer or 'auto', got {n!r}")
            return self._sample_until_settled(img, max_n, tolerance, steps, seed, eta, return_samples)
        return self.sample_batch([img], n, steps, seed, eta, return_samples)[0]

    def sample_batch(self, imgs, n: int = 16, steps: int | None = None, seed=None,
                     eta: float | None = None, return_samples: bool = True) -> list[SampleResult]:
        """n segmentations of each image in one batched pass. seed: one int used for every
        image (so an image's result does not depend on its batch), or one per image."""
        n = _check_positive_int(n, "n")
        plan = self._plan(steps, eta)
        imgs = list(imgs)
        if not imgs:
            raise InvalidArgumentError("sample_batch needs at least one image")
        many = isinstance(seed, (list, tuple)) or isinstance(seed, np.ndarray) and seed.ndim > 0
        seeds = seed if many else [seed] * len(imgs)
        if len(seeds) != len(imgs):
            raise InvalidArgumentError(f"got {len(seeds)} seeds for {len(imgs)} images")
        seeds = [_check_seed(s) for s in seeds]
        self._check_sizes(imgs, n, return_samples)

        clock = _Stopwatch()
        total = time.perf_counter()
        prepared, z_i = self._encode(imgs, clock)
        with clock.stage("sample"):
            latents = self.backend.sample_latents(z_i, seeds, n, plan)
        results = []
        for i, (p, s) in enumerate(zip(prepared, seeds)):
            own, aggregator = latents[i * n:(i + 1) * n], Aggregator(p.size, return_samples)
            self._decode(own, aggregator, clock)
            with clock.stage("postprocess"):
                results.append(self._result(p, aggregator, own, s))
        clock.ms["total"] = (time.perf_counter() - total) * 1e3
        for r in results:
            r.timings = dict(clock.ms)
        return results

    def _sample_until_settled(self, img, max_n, tolerance, steps, seed, eta, return_samples) -> SampleResult:
        max_n = _check_positive_int(max_n, "max_n")
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 <= tolerance < 1:
            raise InvalidArgumentError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
        plan, seed = self._plan(steps, eta), _check_seed(seed)
        self._check_sizes([img], max_n, return_samples)

        clock = _Stopwatch()
        total = time.perf_counter()
        (p,), z_i = self._encode([img], clock)
        aggregator, chunks, previous = Aggregator(p.size, return_samples), [], None
        settled = changed = moved = None
        drawn = 0
        while drawn < max_n and not settled:
            # The first AUTO_MIN_N samples in one call (the rule cannot stop before them), then
            # AUTO_CHUNK at a time; the rule looks at the result every AUTO_CHUNK samples.
            with clock.stage("sample"):
                chunks.append(self.backend.sample_latents(z_i, [seed], min(AUTO_MIN_N if not drawn else AUTO_CHUNK,
                                                                           max_n - drawn), plan, first_sample=drawn))
            for start in range(0, len(chunks[-1]), AUTO_CHUNK):
                part = chunks[-1][start:start + AUTO_CHUNK]
                self._decode(part, aggregator, clock)
                drawn += len(part)
                with clock.stage("postprocess"):
                    _, _, mask, uncertainty = aggregator.result()
                    if previous is not None and drawn >= AUTO_MIN_N:
                        changed = (mask != previous[0]).float().mean().item()
                        moved = (uncertainty - previous[1]).abs().mean().item()
                        settled = changed <= tolerance and moved <= tolerance
                    previous = (mask, uncertainty)
        with clock.stage("postprocess"):
            result = self._result(p, aggregator, np.concatenate(chunks), seed)
        if settled is False:  # compared, and never settled
            result.warnings.append(f"n='auto' drew max_n={max_n} samples before the result settled (the last "
                                   f"{len(part)} changed the consensus on {changed:.2%} of the pixels and the "
                                   f"uncertainty by {moved:.4f} on average; tolerance {tolerance}): raise max_n "
                                   "or the tolerance")
        clock.ms["total"] = (time.perf_counter() - total) * 1e3
        result.timings = dict(clock.ms)
        return result

    def _plan(self, steps, eta) -> SamplingPlan:
        """The sampling plan for these steps and eta (None: the model's), after checking them."""
        steps = self._check_steps(self.config.steps if steps is None else steps)
        eta = self.config.eta if eta is None else eta
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
            raise InvalidArgumentError(f"eta must be a number in [0, 1] (0: deterministic DDIM), got {eta!r}")
        return sampling_plan(self.config, steps, float(eta))

    def _check_sizes(self, imgs, n: int, return_samples: bool) -> None:
        dims = self.config.spatial_dims
        for size in filter(None, (spatial_size(img, dims) for img in imgs)):  # before preprocessing copies it
            self._check_memory(size, n, return_samples)

    def _encode(self, imgs, clock: _Stopwatch):
        with clock.stage("preprocess"):
            prepared = [prepare(img, self.config, self.input_statistics, self.preprocessing) for img in imgs]
        with clock.stage("encode"):
            return prepared, self.backend.encode(np.stack([p.pixels for p in prepared]))

    def _decode(self, latents: np.ndarray, aggregator: Aggregator, clock: _Stopwatch) -> None:
        """One image's latents through the decoder, a backend's decode batch at a time, into its aggregator."""
        chunk = self.backend.decode_batch or len(latents)
        for start in range(0, len(latents), chunk):
            with clock.stage("decode"):
                probs = self.backend.decode_tensor(latents[start:start + chunk])
            with clock.stage("postprocess"):
                aggregator.add(probs)

    def segment_volume(self, volume, n: int = 16, axis: int | None = None, seed: int | None = None,
                       steps: int | None = None, eta: float | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                       return_samples: bool = False, progress: bool = True) -> VolumeResult:
        """A 3-D volume (an ldseg_rt.io.volume.Volume, or an (I, J, K) array) slice by slice along
        `axis` (default: the through-plane axis) in batches of at most max_batch slices; results
        on the volume's grid. With a seed, slice k's result does not depend on its batch."""
        return segment_volume(self, volume, n, axis, seed, steps, eta, max_batch, return_samples, progress)

    def _check_steps(self, steps) -> int:
        steps = _check_positive_int(steps, "steps")
        least = 2 if self.config.family == "ldseg" else 1  # LDSeg's 1-step grid is t = 0 alone: no denoising
        if not least <= steps <= MAX_STEPS:
            raise InvalidArgumentError(f"steps must be in [{least}, {MAX_STEPS}] for model {self.config.name!r}, "
                                       f"got {steps}")
        return steps

    def _check_memory(self, size: tuple[int, ...], n: int, return_samples: bool) -> None:
        """Refuse, before any work, results that would not fit: per pixel at the input's
        resolution, n uint8 maps (if kept), the decoder chunk's resized probabilities, their
        sum and mean, the consensus and the uncertainty."""
        classes, chunk = self.config.num_classes, min(self.backend.decode_batch or n, n)
        per_pixel = (n if return_samples else 0) + 4 * classes * (chunk + 2) + chunk + 1 + 8
        need = per_pixel * int(np.prod(size))
        if need > self.memory_limit:
            raise InvalidArgumentError(
                f"a {'x'.join(map(str, size))} {'image' if len(size) == 2 else 'volume'} with n={n} needs about {need / 2 ** 30:.1f} GiB for its results, more "
                f"than memory_limit ({self.memory_limit / 2 ** 30:.1f} GiB): pass return_samples=False to keep only "
                "probs, mask and uncertainty, segment a smaller image, or raise Segmenter(memory_limit=...)")

    def _result(self, p: Prepared, aggregator: Aggregator, latents: np.ndarray, seed: int) -> SampleResult:
        outputs = aggregator.result()
        if self.config.spatial_dims == 3:  # the networks' (Z, Y, X) back to the caller's (X, Y, Z)
            outputs = tuple(None if o is None else o.permute(*range(o.dim() - 3), -1, -2, -3).contiguous()
                            for o in outputs)
        if p.device is None:
            outputs = tuple(None if o is None else o.cpu().numpy() for o in outputs)
        else:
            outputs = tuple(None if o is None else o.to(p.device) for o in outputs)
        return SampleResult(*outputs, latents=latents, seed=seed, n=len(latents), warnings=list(p.warnings))
