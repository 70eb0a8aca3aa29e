"""A one-page picture of a result: the image, the consensus in class colours, the
uncertainty map and a few of the samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.images import CLASS_COLOURS


def overlay(image: np.ndarray, classes: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey (or RGB) image in [0, 1] with every non-background class tinted by its colour."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-12)
    colours = CLASS_COLOURS[classes % len(CLASS_COLOURS)]
    tinted = (1 - alpha) * rgb + alpha * colours
    return np.where(classes[..., None] > 0, tinted, rgb)


def save_figure(image: np.ndarray, result, path, title: str = "", n_samples: int = 4,
                label: np.ndarray | None = None) -> Path:
    """Write the figure as a PNG (atomically) and return its path. numpy inputs, channels-last;
    a reference `label`, when given, is shown beside the consensus."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.images import write_png

    shown = min(n_samples, len(result.samples))
    fig, axes = plt.subplots(2, max(3, shown), figsize=(3.2 * max(3, shown), 6.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    grey = image if image.ndim == 2 else image.mean(-1)
    axes[0, 0].imshow(image if image.ndim == 3 else grey, cmap="gray")
    axes[0, 0].set_title("image")
    axes[0, 1].imshow(overlay(image.astype(np.float64), result.mask))
    axes[0, 1].set_title(f"consensus of n={len(result.samples)}")
    shown_unc = axes[0, 2].imshow(result.uncertainty, cmap="magma", vmin=0, vmax=1)
    axes[0, 2].set_title("uncertainty (normalised entropy)")
    fig.colorbar(shown_unc, ax=axes[0, 2], fraction=0.046, pad=0.04)
    if label is not None and axes.shape[1] > 3:
        axes[0, 3].imshow(overlay(image.astype(np.float64), label))
        axes[0, 3].set_title("reference label")
    for k in range(shown):
        axes[1, k].imshow(overlay(image.astype(np.float64), result.samples[k]))
        axes[1, k].set_title(f"sample {k}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    write_png(path, pixels)
    return Path(path)
