"""Seeded scan-like phantoms with labels, to train and evaluate the built-in demo model.

A phantom is a grey (or colour) slice: a body of tissue on darker air, an organ (class 1) and a
smaller structure (class 2) nested in it or touching it, sometimes an unlabelled distractor blob,
with a smooth texture, a bias field, partial-volume edges and Gaussian noise.

    image, label = make_phantom(128, seed=0)     # (128, 128) float32, (128, 128) uint8 in {0, 1, 2}
    train = PhantomDataset((96, 160), range(10_000), channels=3)

Everything comes from np.random.default_rng(seed), and the arrays are built with +, -, *, /, sqrt
and comparisons only: no trigonometry, FFT or BLAS, whose last bits vary between CPUs and
libraries. So a seed gives the same arrays bit for bit on any machine with the same numpy.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InvalidArgumentError

NUM_CLASSES = 3
MIN_SIZE = 16


@dataclass(frozen=True)
class Blob:
    """A deformed ellipse. In its own frame, u along `axis` in units of `a` and v across it in
    units of `b`, the outline sits at radius 1 + sum_k coef[k] . (cos kt, sin kt), k = 2, 3, ..."""
    centre: tuple[float, float]  # (y, x) in pixels
    a: float
    b: float
    axis: tuple[float, float]  # unit (dy, dx)
    coef: np.ndarray  # (K, 2) float32

    @property
    def wobble(self) -> float:
        """The outline's largest relative deviation from the ellipse."""
        coef = self.coef.astype(np.float64)
        return float(np.sqrt((coef * coef).sum(1)).sum())

    @property
    def reach(self) -> float:
        """No point farther than this from the centre is inside."""
        return max(self.a, self.b) * (1 + self.wobble) + 1

    @property
    def area(self) -> float:
        return math.pi * self.a * self.b

    def to_pixels(self, u: float, v: float) -> tuple[float, float]:
        (ay, ax), (cy, cx) = self.axis, self.centre
        return cy + u * self.a * ay + v * self.b * ax, cx + u * self.a * ax - v * self.b * ay

    def depth(self, y, x):
        """Distance in pixels from (y, x) to the outline along the ray from the centre, > 0 inside."""
        (ay, ax), (cy, cx) = self.axis, self.centre
        dy, dx = y - cy, x - cx
        u = (dx * ax + dy * ay) / self.a
        v = (dy * ax - dx * ay) / self.b
        rho = np.sqrt(u * u + v * v)
        cos, sin = u / np.maximum(rho, 1e-6), v / np.maximum(rho, 1e-6)
        ray_length = np.sqrt(cos * cos * (self.a * self.a) + sin * sin * (self.b * self.b))  # pixels per unit
        return (_outline(self.coef, cos, sin) - rho) * ray_length


def _outline(coef, cos, sin):
    """The outline radius in direction (cos t, sin t); cos kt and sin kt come from angle addition."""
    radius, c, s = 1.0, cos, sin
    for alpha, beta in coef:
        c, s = c * cos - s * sin, s * cos + c * sin
        radius = radius + alpha * c + beta * s
    return radius


def _direction(rng) -> tuple[float, float]:
    """A uniformly random unit vector, without trigonometry."""
    y, x = rng.standard_normal(2)
    norm = math.sqrt(y * y + x * x)
    return float(y / norm), float(x / norm)


def _harmonics(rng, wobble: float, orders: int = 4) -> np.ndarray:
    """Random outline harmonics 2..orders+1, weaker with order (smooth outlines), rescaled so their
    amplitudes sum to `wobble`, which bounds how far the outline strays from the ellipse."""
    coef = rng.standard_normal((orders, 2)) / np.arange(2, orders + 2)[:, None]
    return (coef * (wobble / np.sqrt((coef * coef).sum(1)).sum())).astype(np.float32)


def random_blob(rng, area: float, aspect: tuple[float, float], wobble: tuple[float, float]) -> Blob:
    """A blob of about `area` pixels, randomly oriented, centred at the origin until placed."""
    q = rng.uniform(*aspect)
    a = math.sqrt(area / (math.pi * q))
    return Blob((0.0, 0.0), a, q * a, _direction(rng), _harmonics(rng, rng.uniform(*wobble)))


def smooth_noise(rng, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Noise that varies over about `cell` pixels: a cubic B-spline through a coarse random grid,
    applied along each axis with a few multiply-adds (no FFT or BLAS, so bit-reproducible)."""
    grid = rng.standard_normal((int(shape[0] / cell) + 4, int(shape[1] / cell) + 4), dtype=np.float32)
    for axis, n in enumerate(shape):
        t = np.arange(n, dtype=np.float32) / np.float32(cell)
        i = t.astype(np.intp)
        f = (t - i).reshape((n, 1) if axis == 0 else (1, n))
        g, f2, f3 = 1 - f, f * f, f * f * f  # products, not **: numpy's pow may differ between CPUs
        weights = (g * g * g / 6, (3 * f3 - 6 * f2 + 4) / 6, (3 * (f + f2 - f3) + 1) / 6, f3 / 6)
        grid = sum(np.take(grid, i + k, axis=axis) * wk for k, wk in enumerate(weights))
    return grid


def _grey(rng, others: list[float], gap: float = 0.07) -> float:
    """A tissue grey level at least `gap` from each of `others`: distinguishable, but the contrast
    is random and sometimes low."""
    while True:
        grey = rng.uniform(0.12, 0.9)
        if min(abs(grey - other) for other in others) >= gap:
            return grey


def _inside(rng, body: Blob, reach: float, shape: tuple[int, int], margin: float) -> tuple[float, float]:
    """A random centre for a blob of this reach: within the body's ellipse shrunk by the reach, and
    at least reach + margin from the frame's edges."""
    u, v = _direction(rng)
    r = 0.7 * math.sqrt(rng.uniform())
    y, x = body.to_pixels(r * u * max(1 - reach / body.a, 0), r * v * max(1 - reach / body.b, 0))
    lo = reach + margin
    return min(max(y, lo), shape[0] - lo), min(max(x, lo), shape[1] - lo)


def _nested(rng, organ: Blob, area: float) -> Blob:
    """A blob inside the organ, aligned with it, of about `area` pixels."""
    q = rng.uniform(0.8, 1.0)
    k = min(math.sqrt(area / organ.area / q), 0.65)  # the cap matters only where the frame limited the organ
    wobble = rng.uniform(0.03, 0.12)
    room = max(1 - organ.wobble - k * (1 + wobble), 0.0)  # free radius for the centre, in organ units
    u, v = _direction(rng)
    r = room * math.sqrt(rng.uniform())
    return Blob(organ.to_pixels(r * u, r * v), k * organ.a, k * q * organ.b, organ.axis,
                 _harmonics(rng, wobble))


def _adjacent(rng, organ: Blob, area: float, body: Blob, shape: tuple[int, int], margin: float) -> Blob | None:
    """A blob straddling the organ's outline, inside the body and the frame, or None if a few
    random directions found no room."""
    blob = random_blob(rng, area, (0.5, 1.0), (0.03, 0.12))
    for _ in range(8):
        u, v = _direction(rng)
        radius = float(_outline(organ.coef, u, v))
        py, px = organ.to_pixels(radius * u, radius * v)
        ny, nx = py - organ.centre[0], px - organ.centre[1]
        norm = math.sqrt(ny * ny + nx * nx)
        # The blob's centre goes out along the ray by less than its smallest radius, so it covers
        # the outline point: the two structures touch.
        step = rng.uniform(0.3, 0.75) * min(blob.a, blob.b) / norm
        y, x = py + step * ny, px + step * nx
        lo = blob.reach + margin
        if lo <= y <= shape[0] - lo and lo <= x <= shape[1] - lo and body.depth(y, x) > blob.reach:
            return replace(blob, centre=(y, x))
    return None


def _paint(image, texture, blob: Blob, colour, grain: float, edge: float, label=None, cls: int = 0):
    """Lays a tissue over the image with a partial-volume ramp `edge` pixels wide at its outline,
    and marks its pixels (depth > 0, i.e. more than half covered) as `cls` in `label`."""
    (cy, cx), reach = blob.centre, blob.reach + edge
    rows = slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, image.shape[0]))
    cols = slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, image.shape[1]))
    ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    depth = blob.depth(ys, xs)
    cover = np.clip(0.5 + depth / edge, 0, 1)[..., None]
    patch = image[rows, cols]
    patch += cover * (colour + grain * texture[rows, cols, None] - patch)
    if label is not None:
        label[rows, cols][depth > 0] = cls


def _frame_size(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise InvalidArgumentError(f"size must be an int or an (H, W) pair, got {size!r}")
        h, w = (operator.index(n) for n in size)
    else:
        h = w = operator.index(size)
    if min(h, w) < MIN_SIZE:
        raise InvalidArgumentError(f"size must be at least {MIN_SIZE} pixels in each dimension, got {(h, w)}")
    return h, w


def _check_channels(channels) -> int:
    channels = operator.index(channels)
    if channels < 1:
        raise InvalidArgumentError(f"channels must be at least 1, got {channels}")
    return channels


def make_phantom(size, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: `image` float32 (H, W), or (H, W, C) for channels > 1, roughly in [0, 1], and
    `label` uint8 (H, W): 0 air and body, 1 the organ, 2 the smaller structure.

    `size` is an int (square) or (H, W), each at least 16. The same seed gives the same arrays.
    """
    h, w = shape = _frame_size(size)
    channels = _check_channels(channels)
    seed = operator.index(seed)
    if seed < 0:
        raise InvalidArgumentError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    side, pixels = min(h, w), h * w
    edge = max(0.5, 0.006 * side)  # partial-volume ramp, in pixels: scales with the frame like the shapes
    margin = edge + 1

    # Tones first: the geometry's tries below vary with the size, and would shift them.
    greys = {"air": rng.uniform(0.0, 0.08), "body": rng.uniform(0.3, 0.55)}
    greys["organ"] = _grey(rng, [greys["body"]])
    greys["structure"] = _grey(rng, [greys["body"], greys["organ"]])
    greys["distractor"] = rng.uniform(0.85, 1.0) if rng.uniform() < 0.5 else rng.uniform(0.0, 0.1)
    colours = {}
    for name, grey in greys.items():
        # With colour each tissue but air gets its own tint, so a colour model can tell classes by hue too.
        tint = rng.uniform(-0.12, 0.12, channels) if channels > 1 and name != "air" else 0.0
        colours[name] = (np.full(channels, grey) + tint).astype(np.float32)
    grains = {name: rng.uniform(-0.08, 0.08) for name in greys}

    # The body fills most of the frame, stretched with it, tilted a little.
    tilt = rng.uniform(-0.15, 0.15)
    body = Blob(centre=(h * rng.uniform(0.46, 0.54), w * rng.uniform(0.46, 0.54)),
                 a=w * rng.uniform(0.36, 0.46), b=h * rng.uniform(0.32, 0.44),
                 axis=(tilt / math.sqrt(1 + tilt * tilt), 1 / math.sqrt(1 + tilt * tilt)),
                 coef=_harmonics(rng, rng.uniform(0.02, 0.06)))

    organ = random_blob(rng, rng.uniform(0.08, 0.16) * pixels, (0.6, 1.0), (0.05, 0.2))
    shrink = min(1.0, (0.38 * side - 1) / organ.reach)  # a very elongated frame cannot hold the full size
    organ = replace(organ, a=shrink * organ.a, b=shrink * organ.b)
    organ = replace(organ, centre=_inside(rng, body, organ.reach, shape, margin))

    structures = []
    for _ in range(2 if rng.uniform() < 0.3 else 1):
        area = max(rng.uniform(0.12, 0.28) * organ.area, 0.015 * pixels)
        blob = _adjacent(rng, organ, area, body, shape, margin) if rng.uniform() < 0.5 else None
        structures.append(blob or _nested(rng, organ, area))

    distractor = None
    if rng.uniform() < 0.35:
        blob = random_blob(rng, rng.uniform(0.003, 0.012) * pixels, (0.5, 1.0), (0.05, 0.2))
        for _ in range(8):  # somewhere in the body, clear of the labelled structures
            y, x = _inside(rng, body, blob.reach, shape, margin)
            if all(math.dist((y, x), s.centre) > s.reach + blob.reach + 0.02 * side for s in [organ, *structures]):
                distractor = replace(blob, centre=(y, x))
                break

    texture = smooth_noise(rng, shape, side / 8)
    image = np.empty((h, w, channels), np.float32)
    image[:] = colours["air"]
    label = np.zeros(shape, np.uint8)
    _paint(image, texture, body, colours["body"], grains["body"], edge)
    if distractor is not None:
        _paint(image, texture, distractor, colours["distractor"], grains["distractor"], edge)
    _paint(image, texture, organ, colours["organ"], grains["organ"], edge, label, 1)
    for blob in structures:
        _paint(image, texture, blob, colours["structure"], grains["structure"], edge, label, 2)

    image *= (1 + rng.uniform(0.03, 0.15) * smooth_noise(rng, shape, side / 1.5))[..., None]  # coil bias field
    image += rng.uniform(0.01, 0.06) * rng.standard_normal(image.shape, dtype=np.float32)
    return (image[..., 0] if channels == 1 else image), label


class PhantomDataset:
    """The phantoms of a sequence of seeds: item i is make_phantom(size, seeds[i], channels)."""

    def __init__(self, size, seeds, channels: int = 1):
        self.size = _frame_size(size)
        self.seeds = seeds
        self.channels = _check_channels(channels)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return make_phantom(self.size, self.seeds[i], self.channels)
