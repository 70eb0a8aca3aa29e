"""Random training batches: every draw of a step comes from a generator keyed by (seed, step),
so a resumed run repeats exactly what an uninterrupted one would have drawn."""
from __future__ import annotations

import numpy as np
import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step of a run: every draw of the step comes from it, so a resumed run repeats them."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


# The flips of augmentation, as in the original: none, vertical, horizontal, both.
FLIPS = ((), (-2,), (-1,), (-2, -1))


def _flip(x: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Per-sample flips: sample i gets FLIPS[kinds[i]]."""
    out = x.clone()
    for i, kind in enumerate(kinds.tolist()):
        dims = FLIPS[kind]
        if dims:
            out[i] = x[i].flip(dims)
    return out


def draw_batch(dataset, batch_size: int, gen: torch.Generator, augment: bool = True):
    """A random batch of (images, labels) tensors from `dataset`, randomly flipped if `augment`."""
    index = torch.randint(len(dataset), (batch_size,), generator=gen).tolist()
    images, labels = (torch.from_numpy(np.stack(a)) for a in zip(*(dataset[i] for i in index)))
    if augment:
        kinds = torch.randint(len(FLIPS), (batch_size,), generator=gen)
        images, labels = _flip(images, kinds), _flip(labels, kinds)
    return images, labels
