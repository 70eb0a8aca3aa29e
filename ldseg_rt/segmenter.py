"""The public API: one object that turns an image into n plausible segmentations, their
consensus and a per-pixel uncertainty map."""
from __future__ import annotations

import hashlib
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
from .memory import check_memory, sample_bytes_per_pixel
from .models import build_model
from .models.checkpoint import BUILTIN_DIR, load_model
from .options import EngineOptions, SampleOptions, VolumeOptions
from .pipeline.aggregate import Aggregator
from .pipeline.preprocess import ROBUST, Prepared, prepare, spatial_size
from .pipeline.slicing import VolumeResult, segment_volume
from .seeds import check_seed, resolve_seed

MAX_STEPS = 1000  # both families' schedules are defined on at most 1000 distinct times
# sample(n="auto"): samples drawn per round, and the fewest drawn.
AUTO_CHUNK, AUTO_MIN_N = 4, 8


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
    module (LDSeg or AmbiguousModel). How it runs is an EngineOptions (backend, device,
    precision, memory_limit, the torch backend's kernels and cuda_graphs), given as
    `options=` and/or its fields as keywords: `Segmenter("m.ldseg", backend="onnxruntime")`.
    See ldseg_rt.backends for what 'auto' picks.
    """

    def __init__(self, engine, *, options: EngineOptions | None = None, **settings):
        self.options = options = EngineOptions.of(options, **settings)
        source = load_bundle(engine) if is_bundle(engine) else load_model(engine)
        self.backend = create_backend(options.backend, source, options.device, options.precision,
                                      **options.backend_options())
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
    def from_config(cls, name: str, *, seed: int = 0, options: EngineOptions | None = None,
                    **settings) -> "Segmenter":
        """A model of a named configuration with random weights (the originals' initialisers,
        drawn from `seed`), on any backend: one that runs bundles gets the model exported to a
        temporary bundle, removed with the Segmenter."""
        options = EngineOptions.of(options, **settings)
        model = build_model(get_config(name), seed)
        if options.backend not in NEEDS_BUNDLE:
            return cls(model, options=options)
        from .export import export_bundle
        folder = tempfile.TemporaryDirectory(prefix="ldseg_rt-")
        bundle = export_bundle(model, Path(folder.name) / f"{name}.ldseg", source=f"from_config({name!r}, seed={seed})",
                               check_batches=(1,), progress=False)
        segmenter = cls(bundle.path, options=options)
        segmenter._bundle_folder = folder  # lives as long as the Segmenter
        return segmenter

    @property
    def backend_name(self) -> str:
        """The backend that runs the networks ('auto' resolved)."""
        return self.backend.name

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def memory_limit(self) -> int:
        return self.options.memory_limit

    def sample(self, img, *, options: SampleOptions | None = None, **settings) -> SampleResult:
        """n segmentations of one image (SampleOptions, as `options=` and/or keywords); with a
        seed, sample k is reproducible whatever n. return_samples=False keeps only probs, mask
        and uncertainty (samples is None), so the memory of the result does not grow with n.

        n="auto" draws samples AUTO_CHUNK at a time (the first AUTO_MIN_N in one call), up to
        max_n, and stops once the result has settled: after a chunk (from the AUTO_MIN_N-th
        sample on) that changed the consensus on at most `tolerance` of the pixels and moved the
        uncertainty map by at most `tolerance` on average. result.n says how many were drawn;
        with a seed they are the first result.n samples of any n, and a draw that reaches max_n
        unsettled says so in result.warnings."""
        options = SampleOptions.of(options, **settings)
        if options.n == "auto":
            return self._sample_until_settled(img, options)
        return self._sample_images([img], options, [options.seed])[0]

    def sample_batch(self, imgs, *, options: SampleOptions | None = None, **settings) -> list[SampleResult]:
        """n segmentations of each image in one batched pass. seed: one int used for every
        image (so an image's result does not depend on its batch), or one per image."""
        seed = settings.get("seed")
        many = isinstance(seed, (list, tuple)) or isinstance(seed, np.ndarray) and seed.ndim > 0
        if many:
            del settings["seed"]
        options = SampleOptions.of(options, **settings)
        imgs = list(imgs)
        if not imgs:
            raise InvalidArgumentError("sample_batch needs at least one image")
        if options.n == "auto":
            raise InvalidArgumentError("n='auto' decides n per image: use sample(img, n='auto') one image at a time")
        seeds = [check_seed(s) for s in seed] if many else [options.seed] * len(imgs)
        if len(seeds) != len(imgs):
            raise InvalidArgumentError(f"got {len(seeds)} seeds for {len(imgs)} images")
        return self._sample_images(imgs, options, seeds)

    def _sample_images(self, imgs: list, options: SampleOptions, seeds: list) -> list[SampleResult]:
        n, plan = options.n, self._plan(options)
        seeds = [resolve_seed(s) for s in seeds]
        self._check_sizes(imgs, n, options.return_samples)

        clock = _Stopwatch()
        total = time.perf_counter()
        prepared, z_i = self._encode(imgs, clock)
        with clock.stage("sample"):
            latents = self.backend.sample_latents(z_i, seeds, n, plan)
        results = []
        for i, (p, s) in enumerate(zip(prepared, seeds)):
            own, aggregator = latents[i * n:(i + 1) * n], Aggregator(p.size, options.return_samples)
            self._decode(own, aggregator, clock)
            with clock.stage("postprocess"):
                results.append(self._result(p, aggregator, own, s))
        clock.ms["total"] = (time.perf_counter() - total) * 1e3
        for r in results:
            r.timings = dict(clock.ms)
        return results

    def _sample_until_settled(self, img, options: SampleOptions) -> SampleResult:
        max_n, tolerance = options.max_n, options.tolerance
        plan, seed = self._plan(options), resolve_seed(options.seed)
        self._check_sizes([img], max_n, options.return_samples)

        clock = _Stopwatch()
        total = time.perf_counter()
        (p,), z_i = self._encode([img], clock)
        aggregator, chunks, previous = Aggregator(p.size, options.return_samples), [], None
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

    def _plan(self, options: SampleOptions) -> SamplingPlan:
        """The sampling plan for the options' steps and eta (None: the model's)."""
        steps = self.config.steps if options.steps is None else options.steps
        least = 2 if self.config.family == "ldseg" else 1  # LDSeg's 1-step grid is t = 0 alone: no denoising
        if not least <= steps <= MAX_STEPS:
            raise InvalidArgumentError(f"steps must be in [{least}, {MAX_STEPS}] for model {self.config.name!r}, "
                                       f"got {steps}")
        return sampling_plan(self.config, steps, self.config.eta if options.eta is None else options.eta)

    def _check_sizes(self, imgs, n: int, return_samples: bool) -> None:
        """Refuse, before any work (and before preprocessing copies an image), results that would not fit."""
        classes, chunk = self.config.num_classes, min(self.backend.decode_batch or n, n)
        for size in filter(None, (spatial_size(img, self.config.spatial_dims) for img in imgs)):
            check_memory(size, sample_bytes_per_pixel(classes, n, chunk, return_samples), self.memory_limit,
                         f"a {'x'.join(map(str, size))} {'image' if len(size) == 2 else 'volume'} with n={n}",
                         "pass return_samples=False to keep only probs, mask and uncertainty, segment a smaller "
                         "image, or raise Segmenter(memory_limit=...)")

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

    def segment_volume(self, volume, *, options: VolumeOptions | None = None, **settings) -> VolumeResult:
        """A 3-D volume (an ldseg_rt.io.volume.Volume, or an (I, J, K) array) with VolumeOptions
        (as `options=` and/or keywords): a 2-D model slice by slice along `axis` in batches of at
        most max_batch slices, a 3-D model whole; results on the volume's grid. With a seed,
        slice k's result does not depend on its batch."""
        return segment_volume(self, volume, VolumeOptions.of(options, **settings))

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
