"""Seeded ambiguous-lesion cases whose annotations come from a known distribution.

Each case is a grey image (smooth background, texture, bias field, noise) with one or two
blob lesions with blurred edges, and a small discrete distribution over K plausible masks:

- a clear lesion's boundary is uncertain: annotators outline it at one of 2 or 3 levels
  (eroded by one unit, as painted, dilated by one unit; a unit is max(1, size / 32) pixels)
  with given probabilities (one of BOUNDARY_LEVELS);
- a faint lesion (low contrast) is left out by an annotator with probability MISS_PROBABILITY
  (1/3), and outlined as painted otherwise;
- lesions are annotated independently, so a mode is one choice per lesion and its probability
  the product. Modes are distinct (choices that give the same mask are merged).

A case is a lesion of each kind (about half of the seeds), a clear lesion only (about 30%)
or a faint lesion only (about 20%; a third of its annotations are then empty). Where the two
lesions find no room apart (some 1 in 4 tries at size 32, most below it) the faint one is
dropped, so at size 32 about 37% of the cases have two lesions.

    case = make_ambiguous_case(32, seed=0)
    case.image, case.modes, case.probs      # (32, 32) float32, (K, 32, 32) uint8, (K,) float64
    case.annotations(4, seed)               # what 4 annotators drew: (4, 32, 32)
    case.sample(16, seed)                   # 16 draws from the true distribution (the oracle)
    train = AmbiguousDataset(32, TRAIN_SEEDS[:5000])

Because the distribution is known, the oracle's GED and HM-IoU can be computed exactly (over
the modes, weighted by probs) or from `case.sample`. Seeds: TRAIN_SEEDS = [0, 1_000_000) for
training, EVAL_SEEDS = [1_000_000, 1_100_000) for evaluation; the two never overlap.
As ldseg_rt.data.phantoms, images are built without trigonometry, FFT or BLAS, so a seed gives the
same arrays bit for bit on any machine with the same numpy.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidArgumentError
from .phantoms import MIN_SIZE, Blob, random_blob, smooth_noise

DEFAULT_SIZE = 32
TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 1_100_000)
MISS_PROBABILITY = 1.0 / 3.0
# (offsets in units, probabilities): the levels at which annotators outline a clear lesion.
BOUNDARY_LEVELS = (
    ((-1, 0, 1), (0.25, 0.5, 0.25)),
    ((-1, 0, 1), (0.2, 0.3, 0.5)),
    ((0, 1), (0.5, 0.5)),
    ((-1, 0), (0.4, 0.6)),
)
# Streams of np.random.default_rng([stream, seed]) for draws of annotations vs oracle samples,
# so the same integer seed never gives an oracle sample equal to the annotations.
_ANNOTATION_STREAM, _SAMPLE_STREAM = 1, 2


@dataclass(frozen=True, eq=False)
class AmbiguousCase:
    """One image and its annotation distribution; the arrays are read-only."""
    image: np.ndarray  # float32 (S, S) in [0, 1]
    modes: np.ndarray  # uint8 (K, S, S) in {0, 1}, pairwise distinct
    probs: np.ndarray  # float64 (K,), > 0, summing to 1
    lesions: np.ndarray  # uint8 (L, S, S): each lesion as painted (boundary level 0)
    miss: tuple  # per lesion, the probability an annotator leaves it out (0 or MISS_PROBABILITY)
    seed: int

    @property
    def size(self) -> int:
        return self.image.shape[0]

    def draw(self, n: int, rng_or_seed, stream: int = _ANNOTATION_STREAM) -> np.ndarray:
        """Indices into `modes` of n independent draws from `probs`."""
        n = operator.index(n)
        if n < 0:
            raise InvalidArgumentError(f"the number of draws must be >= 0, got {n}")
        return _rng(rng_or_seed, stream).choice(len(self.probs), size=n, p=self.probs)

    def annotations(self, m: int, rng_or_seed) -> np.ndarray:
        """(m, S, S) uint8: the masks of m independent annotators. An int seed is
        reproducible; a np.random.Generator is used as it is."""
        return self.modes[self.draw(m, rng_or_seed, _ANNOTATION_STREAM)]

    def sample(self, n: int, seed) -> np.ndarray:
        """(n, S, S) uint8: n segmentations from the true distribution, the ideal segmenter
        (its GED and HM-IoU against the annotations are the oracle's)."""
        return self.modes[self.draw(n, seed, _SAMPLE_STREAM)]


def _rng(rng_or_seed, stream: int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    seed = operator.index(rng_or_seed)
    if seed < 0:
        raise InvalidArgumentError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng([stream, seed])


def _size(size) -> int:
    size = operator.index(size)
    if size < MIN_SIZE:
        raise InvalidArgumentError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    return size


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _depth_map(blob: Blob, size: int) -> np.ndarray:
    coords = np.arange(size, dtype=np.float32)
    return blob.depth(coords[:, None], coords[None, :])


def _place(rng, blob: Blob, size: int, margin: float) -> Blob:
    """A random centre at least reach + margin from the edges (the blob shrunk to fit a small frame)."""
    room = size / 2 - margin - 1  # the largest reach - 1 that fits
    scale = min(1.0, room / (blob.reach - 1))
    blob = replace(blob, a=blob.a * scale, b=blob.b * scale)
    lo, hi = blob.reach + margin, size - blob.reach - margin
    return replace(blob, centre=(rng.uniform(lo, hi), rng.uniform(lo, hi)))


def make_ambiguous_case(size: int = DEFAULT_SIZE, seed: int = 0) -> AmbiguousCase:
    """The case of this seed at this size (square, at least 16 pixels). Same seed, same arrays."""
    size = _size(size)
    seed = operator.index(seed)
    if seed < 0:
        raise InvalidArgumentError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    pixels = size * size
    unit = max(1.0, size / 32)  # one boundary level, in pixels
    noise_sd = rng.uniform(0.015, 0.03)

    # Which lesions, and each one's contrast, edge blur and annotation behaviour. Tones first,
    # so the geometry's retries below cannot shift them.
    u = rng.uniform()
    kinds = ["clear", "faint"] if u < 0.5 else ["clear"] if u < 0.8 else ["faint"]
    background = rng.uniform(0.3, 0.6)
    specs = []
    for kind in kinds:
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        if kind == "clear":
            offsets, probs = BOUNDARY_LEVELS[int(rng.integers(len(BOUNDARY_LEVELS)))]
            specs.append(dict(kind=kind, contrast=sign * rng.uniform(0.18, 0.32), edge=unit * rng.uniform(2.0, 3.0),
                              offsets=offsets, level_probs=probs, miss=0.0,
                              area=max(rng.uniform(0.03, 0.07) * pixels, 30 * unit * unit)))
        else:
            specs.append(dict(kind=kind, contrast=sign * rng.uniform(0.07, 0.11), edge=unit * rng.uniform(1.0, 1.5),
                              offsets=(0,), level_probs=(1.0,), miss=MISS_PROBABILITY,
                              area=max(rng.uniform(0.015, 0.035) * pixels, 14 * unit * unit)))

    # Geometry: blobs inside the frame with room for a dilation, and apart from each other.
    margin = 2 * unit + 1
    gap = 2 * unit + 1  # pixels between the lesions' largest outlines
    blobs, depths = [], []
    for spec in specs:
        blob = random_blob(rng, spec["area"], (0.55, 1.0), (0.03, 0.2))
        for _ in range(40):
            placed = _place(rng, blob, size, margin)
            depth = _depth_map(placed, size)
            if all(not np.any((depth > -gap) & (other > -gap)) for other in depths):
                blobs.append(placed)
                depths.append(depth)
                break
    specs = specs[:len(blobs)]  # the first lesion always fits; a second one that did not is dropped

    # The image: smooth background with texture and a bias field, lesions with blurred edges, noise.
    image = np.full((size, size), background, np.float32)
    image += rng.uniform(0.03, 0.07) * smooth_noise(rng, (size, size), size / 5)
    for spec, depth in zip(specs, depths):
        cover = np.clip(0.5 + depth / np.float32(spec["edge"]), 0, 1)
        image += np.float32(spec["contrast"]) * cover
    image *= 1 + rng.uniform(0.02, 0.08) * smooth_noise(rng, (size, size), size / 1.5)
    image += noise_sd * rng.standard_normal((size, size), dtype=np.float32)
    image = np.clip(image, 0, 1).astype(np.float32)

    # The annotation distribution: per lesion, its outline levels (and leaving it out).
    choices = []
    for spec, depth in zip(specs, depths):
        options = []
        for off, p in zip(spec["offsets"], spec["level_probs"]):
            level = (depth > -off * unit).astype(np.uint8)
            if level.any():
                options.append((level, p * (1 - spec["miss"])))
            else:  # an erosion that leaves nothing (a very thin blob): outlined as painted instead
                options.append(((depth > 0).astype(np.uint8), p * (1 - spec["miss"])))
        if spec["miss"] > 0:
            options.append((np.zeros((size, size), np.uint8), spec["miss"]))
        choices.append(options)
    modes, probs = [np.zeros((size, size), np.uint8)], [1.0]
    for options in choices:
        modes = [m | o for m in modes for o, _ in options]
        probs = [p * q for p in probs for _, q in options]
    merged: dict[bytes, int] = {}
    kept_modes, kept_probs = [], []
    for m, p in zip(modes, probs):
        key = m.tobytes()
        if key in merged:
            kept_probs[merged[key]] += p
        else:
            merged[key] = len(kept_modes)
            kept_modes.append(m)
            kept_probs.append(p)
    probs = np.asarray(kept_probs, np.float64)
    lesions = np.stack([(d > 0).astype(np.uint8) for d in depths])
    return AmbiguousCase(image=_frozen(image), modes=_frozen(np.stack(kept_modes)), probs=_frozen(probs / probs.sum()),
                         lesions=_frozen(lesions), miss=tuple(float(s["miss"]) for s in specs), seed=seed)


class AmbiguousDataset:
    """The cases of a sequence of seeds, each with `annotators` fixed annotations (drawn from
    the case's distribution with its seed), as LIDC stores 4 per image.

    item i is (image float32 (S, S), annotations uint8 (annotators, S, S)). For training, as
    the paper does, `training_example(i, rng)` pairs the image with one of its annotations
    picked uniformly at random. Use TRAIN_SEEDS for training and EVAL_SEEDS for evaluation.
    """

    def __init__(self, size, seeds, annotators: int = 4):
        self.size = _size(size)
        self.seeds = seeds
        self.annotators = operator.index(annotators)
        if self.annotators < 1:
            raise InvalidArgumentError(f"annotators must be >= 1, got {annotators}")

    @classmethod
    def train(cls, size=DEFAULT_SIZE, count: int = 1000, annotators: int = 4) -> "AmbiguousDataset":
        return cls(size, TRAIN_SEEDS[:count], annotators)

    @classmethod
    def evaluation(cls, size=DEFAULT_SIZE, count: int = 100, annotators: int = 4) -> "AmbiguousDataset":
        return cls(size, EVAL_SEEDS[:count], annotators)

    def __len__(self) -> int:
        return len(self.seeds)

    def case(self, i: int) -> AmbiguousCase:
        return make_ambiguous_case(self.size, self.seeds[i])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        case = self.case(i)
        return case.image, case.annotations(self.annotators, case.seed)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def training_example(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask): item i's image and one of its annotations, chosen uniformly by rng."""
        image, annotations = self[i]
        return image, annotations[int(rng.integers(len(annotations)))]
