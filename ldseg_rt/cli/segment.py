"""`python -m ldseg_rt segment INPUT... -m MODEL -o OUT`: segment every case the inputs name
(DICOM series, NIfTI volumes, 2-D images; ldseg_rt.io.cases) and write each case's results,
whole and atomically, to OUT/<case>/ (ldseg_rt.io.results). A case that fails is reported in
one line and the batch goes on; the exit status is 1 if any case failed. With --ray the same
per-case work (ldseg_rt.workflow) runs on Ray Data actors (ldseg_rt.distributed)."""
from __future__ import annotations

import logging
import sys

from ..errors import InvalidArgumentError
from ..io.atomic import check_writable

log = logging.getLogger(__name__)


def _print_table(rows) -> int:
    """The per-case table and the count line; the number of failed cases."""
    width = max([len(r.case) for r in rows] + [4])
    print(f"{'case':<{width}}  {'status':<8}{'seconds':>9}  output or reason")
    for r in rows:
        print(f"{r.case:<{width}}  {r.status:<8}{r.seconds:9.1f}  {r.detail}")
    failed = sum(r.status == "failed" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} case(s) done, {failed} failed")
    return failed


def _options(args):
    from ..workflow import SegmentOptions
    from ..io.results import parse_formats
    return SegmentOptions(n=args.n, steps=args.steps, axis=args.axis, max_batch=args.max_batch, samples=args.samples,
                          formats=parse_formats(args.format) if args.format else None)


def _run_on_ray(args) -> None:
    """--ray: the same cases, each segmented by the same per-case function, on Ray Data actors."""
    from ..distributed import segment_on_ray
    report = segment_on_ray(args.inputs, args.model, args.out, options=_options(args), seed=args.seed,
                            resume=args.resume, select=args.select, backend=args.backend, precision=args.precision,
                            address=args.ray or None, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker, threads_per_worker=args.threads_per_worker)
    failed = _print_table(report.outcomes)
    for line in report.summary_lines():
        print(line)
    if failed:
        sys.exit(1)


def run(args) -> None:
    if args.ray is not None:
        return _run_on_ray(args)
    if args.workers is not None or args.cpus_per_worker is not None or args.gpus_per_worker is not None \
            or args.threads_per_worker is not None:
        raise InvalidArgumentError("--workers, --cpus-per-worker, --gpus-per-worker and --threads-per-worker "
                                   "apply to --ray runs only")
    if "://" in str(args.out):
        raise InvalidArgumentError(f"output {args.out!r} is a URI: object stores are written by --ray runs only; "
                                   "give a folder")
    from .. import Segmenter
    from ..workflow import finished, read_record, segment_case, skipped_outcome
    from ..io.cases import find_cases
    from ..io.dicom_series import SeriesRule
    from ..io.results import algorithm_identity

    out = check_writable(args.out, folder=True)
    options = _options(args)
    rule = SeriesRule.parse(args.select) if args.select else None
    cases = find_cases(args.inputs)
    seg = Segmenter(args.model, backend=args.backend, precision=args.precision)
    algorithm = algorithm_identity(seg)
    log.info("%d case(s) with %s (%s, %s %s) -> %s", len(cases), args.model, seg.config.name, seg.backend_name,
             seg.precision, out)
    rows = []
    for case in cases:
        folder = out / case.name
        if args.resume and finished(folder):
            rows.append(skipped_outcome(case, read_record(folder)))
            continue
        rows.append(segment_case(seg, case, folder, options, args.model, args.seed, rule, algorithm))
        if rows[-1].status == "failed":
            log.error("%s: failed: %s", case.name, rows[-1].detail)
        else:
            log.info("%s: done in %.1f s -> %s", case.name, rows[-1].seconds, folder)
    if _print_table(rows):
        sys.exit(1)


def add_parser(sub) -> None:
    segment = sub.add_parser("segment", help="segment DICOM series, NIfTI volumes or images into OUT/<case>/",
                             description=__doc__.split("\n\n")[0])
    segment.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="DICOM series folder or .zip, NIfTI, PNG/BMP/TIFF/NPY/DICOM image, a folder of cases, "
                              "or a .csv list of them")
    segment.add_argument("-m", "--model", required=True, help="bundle (NAME.ldseg), checkpoint or builtin:NAME")
    segment.add_argument("-o", "--out", required=True, help="output folder; each case gets OUT/<case>/")
    segment.add_argument("-n", type=int, default=16, help="samples per image or slice (default 16)")
    segment.add_argument("--seed", type=int, help="the seed of every case (default: a fresh one, recorded)")
    segment.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    segment.add_argument("--backend", default="auto")
    segment.add_argument("--precision", default="auto")
    segment.add_argument("--axis", type=int, help="slicing axis of volumes (default: the through-plane axis)")
    segment.add_argument("--max-batch", type=int, default=8, help="slices per batched pass (bounds memory)")
    segment.add_argument("--format", help="comma-separated: nifti, dicom-seg, png, npy (default: nifti, and "
                                          "dicom-seg for DICOM series; png, npy for 2-D images)")
    segment.add_argument("--samples", action="store_true", help="also write the n samples")
    segment.add_argument("--continue", dest="resume", action="store_true",
                         help="skip cases whose results are complete in OUT")
    segment.add_argument("--select", help="series rule for folders with several series: modality=MR,"
                                          "description=REGEX,largest")
    ray = segment.add_argument_group("batch on Ray (pip install 'ldseg_rt[ray]')")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run the cases on Ray Data actors, one loaded model each: without ADDRESS (or RAY_ADDRESS) "
                          "on a local Ray started here, with one (the head's HOST:PORT, or auto) on that cluster; "
                          "OUT must be a folder every node sees, or a URI Ray's file systems write (s3://, gs://); "
                          "writes OUT/manifest.json and OUT/manifest.csv")
    ray.add_argument("--workers", type=int, metavar="N",
                     help="actors (default: as many as the cluster's CPUs, or GPUs, hold)")
    ray.add_argument("--cpus-per-worker", type=float, metavar="C", help="CPUs Ray reserves per actor (default 1)")
    ray.add_argument("--gpus-per-worker", type=float, metavar="G",
                     help="GPUs Ray reserves per actor (default: 1 where the cluster has GPUs, else 0)")
    ray.add_argument("--threads-per-worker", type=int, metavar="T",
                     help="torch CPU threads per actor (default: this process's, which keeps results bit-identical "
                          "to a single-process run; fewer trade that for throughput)")
    segment.set_defaults(run=run)
