"""LDSeg 3-D (`knee3d`) on a CPU: what one training step and one volume's sample() at n=16 cost,
with the official 3-D weights (../shared/data/ldseg-official; their denoiser is not public, so a
denoiser in the official layout with random values stands in: the figures are costs, not a
segmentation). Needs ../shared; never writes anything from it into the project.

    .venv/bin/python benchmarks/knee3d.py [-n 16] [--case 5] [--backends onnxruntime,torch] [--train-steps 2]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ldseg_rt import Segmenter
from ldseg_rt.bench.machine import describe_machine, machine_info
from ldseg_rt.configs import get_config
from ldseg_rt.export import export_bundle
from ldseg_rt.export.keras_weights import keras_files, load_keras_model
from ldseg_rt.training.trainer import Trainer, TrainSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL = SHARED / "ldseg-official"


def official_folder(into: Path) -> Path:
    """The published 3-D networks and the random-valued official-layout denoiser, side by side."""
    files = keras_files(get_config("knee3d"))
    for network, file in files.items():
        source = OFFICIAL / "reference" / "denoiser3D_random.hdf5" if network == "denoiser" else (
            OFFICIAL / "savedModels" / file)
        (into / file).symlink_to(source)
    return into


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--case", type=int, default=5)
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps at batch 1 (after one)")
    args = parser.parse_args()
    print(describe_machine(machine_info(torch.device("cpu"))))
    volume = np.asarray(nib.load(SHARED / "ldseg-demo" / "Knee" / "Image" / f"Case{args.case}.nii.gz").dataobj)
    work = Path(tempfile.mkdtemp(prefix="ldseg_rt-knee3d-"))
    try:
        model = load_keras_model(official_folder(Path(work)), "knee3d")
        start = time.perf_counter()
        bundle = export_bundle(model, work / "knee3d.ldseg", source="official knee3d", check_batches=(1,),
                               progress=False)
        print(f"export (ONNX + check at batch 1): {time.perf_counter() - start:.0f} s")
        for backend in args.backends.split(","):
            seg = Segmenter(bundle.path, backend=backend)
            res = seg.sample(volume, n=args.n, seed=0, return_samples=False)
            stages = ", ".join(f"{k} {v / 1e3:.1f} s" for k, v in res.timings.items())
            print(f"sample() {backend}, volume {'x'.join(map(str, volume.shape))}, n={args.n}: {stages}")
        trainer = Trainer(get_config("knee3d"), TrainSettings(batch_size=1), device="cpu")
        cfg = trainer.model.config
        rng = np.random.default_rng(0)
        example = [(rng.random((1, *cfg.image_shape), dtype=np.float32),
                    rng.integers(0, 3, cfg.image_shape).astype(np.uint8))]
        trainer.train_step(example)  # warm-up
        start = time.perf_counter()
        for _ in range(args.train_steps):
            trainer.train_step(example)
        per_step = (time.perf_counter() - start) / args.train_steps
        print(f"training step, batch 1, all four networks end to end: {per_step:.1f} s "
              f"({torch.get_num_threads()} threads)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
