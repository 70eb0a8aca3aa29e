"""Small synthetic study lists for the Ray batch tests: NIfTI volumes stacked from the
built-in model's phantoms, on oblique-free but offset grids, and one 2-D PNG."""
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ldseg_rt.data.phantoms import make_phantom
from ldseg_rt.io.images import write_png

MODEL = "builtin:phantom"
FLAGS = ["-n", "2", "--steps", "4", "--seed", "11"]  # segment's flags, the same for every run compared


def write_cases(folder: Path, volumes: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    for i in range(volumes):
        stack = np.stack([make_phantom(40, seed=1000 * seed + 10 * i + k)[0] for k in range(3)], -1)
        affine = np.diag([0.9, 0.8, 3.0, 1.0])
        affine[:3, 3] = [i, -2.0 * i, 5.0]
        nib.save(nib.Nifti1Image((400 * stack).astype(np.float32), affine), folder / f"vol{i}.nii.gz")
    write_png(folder / "slide.png", np.round(255 * np.clip(make_phantom(44, seed=seed + 7)[0], 0, 1)).astype(np.uint8))
    return folder


def files_sha256(folder: Path) -> dict:
    """sha256 of each output file of a case folder, read from disk (not from result.json)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "result.json"}


def assert_exactly_once(out: Path, names, reference: Path) -> None:
    """OUT holds each case once, whole (its files are what its result.json lists), nothing half
    written beside it, and each case's files are byte for byte the reference run's."""
    import json
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    for name in names:
        record = json.loads((out / name / "result.json").read_text())
        assert record["outputs"] == files_sha256(out / name), name
        assert files_sha256(out / name) == files_sha256(reference / name), name
