"""First result on real MRI: train the `small` configuration on 2-D slices of the knee
volumes in ../shared/data/ldseg-demo (cases 1-4), evaluate on case 5: Dice per bone class
of the n=16 consensus, and how the uncertainty map relates to the errors. Skips without
the data. The checkpoint goes to --work; the figures to its section of benchmarks/RESULTS.md
unless --no-write.

    python benchmarks/accuracy/knee.py [--steps 2000] [--axis 0] [--work /tmp/ldseg_knee]
"""
import argparse
import sys
from pathlib import Path

from ldseg_rt import Segmenter
from ldseg_rt.bench.report import evaluation_markdown
from ldseg_rt.bench.script import parse_args, publish, shared_data
from ldseg_rt.configs import get_config
from ldseg_rt.evaluation.scoring import evaluate
from ldseg_rt.io.nifti import read_volume, volume_slices
from ldseg_rt.training.dataset import volume_data
from ldseg_rt.training.trainer import Trainer, TrainSettings

KNEE = shared_data(__file__) / "ldseg-demo" / "Knee"


def case(i: int):
    return KNEE / "Image" / f"Case{i}.nii.gz", KNEE / "Label" / f"Case{i}_label.nii.gz"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--axis", type=int, default=0, help="slicing axis of the (240, 104, 160) volumes")
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--work", default="/tmp/ldseg_knee", help="where the checkpoint is kept")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --work")
    args = parse_args(parser)
    if not KNEE.is_dir():
        print(f"skipped: {KNEE} is absent")
        return 0

    cfg = get_config("small")
    checkpoint = Path(args.work) / "knee_small.pt"
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, checkpoint_every=250)
    trainer = (Trainer.resume(checkpoint, settings) if args.resume and checkpoint.exists()
               else Trainer(cfg, settings))
    train = volume_data(cfg, [case(i) for i in (1, 2, 3, 4)], args.axis)
    print(f"training on {len(train)} slices of cases 1-4 (axis {args.axis}), {args.steps} steps")
    trainer.fit(train, checkpoint)

    image, label = (read_volume(p)[0] for p in case(5))
    slices = list(zip(volume_slices(image.astype("float32"), args.axis), volume_slices(label, args.axis)))
    result = evaluate(Segmenter(str(checkpoint)), slices, n=args.n)
    report = (f"case 5, {len(slices)} slices along axis {args.axis}, consensus of n={args.n}, after {args.steps} "
              f"training steps:\n\n{evaluation_markdown(result)}")
    print(report)
    publish(__file__, report, no_write=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
