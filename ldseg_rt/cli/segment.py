"""`python -m ldseg_rt segment INPUT... -m MODEL -o OUT`: segment every case the inputs name
(DICOM series, NIfTI volumes, 2-D images; ldseg_rt.io.cases) and write each case's results,
whole and atomically, to OUT/<case>/ (ldseg_rt.io.results). A case that fails is reported in
one line and the batch goes on; the exit status is 1 if any case failed. With --ray the same
per-case workflow (ldseg_rt.workflow) runs on Ray Data actors (ldseg_rt.distributed)."""
from __future__ import annotations

import logging
import sys

from ..errors import InvalidArgumentError
from ..io.atomic import check_writable
from .options import (add_engine_arguments, add_sample_arguments, add_volume_arguments, engine_options, options_from,
                      segment_options)

log = logging.getLogger(__name__)
RAY_FLAGS = ("workers", "cpus_per_worker", "gpus_per_worker", "threads_per_worker")  # --ray runs only


def _print_table(rows) -> int:
    """The per-case table and the count line; the number of failed cases."""
    width = max([len(r.case) for r in rows] + [4])
    print(f"{'case':<{width}}  {'status':<8}{'seconds':>9}  output or reason")
    for r in rows:
        print(f"{r.case:<{width}}  {r.status:<8}{r.seconds:9.1f}  {r.detail}")
    failed = sum(r.status == "failed" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} case(s) done, {failed} failed")
    return failed


def _run_on_ray(args) -> None:
    """--ray: the same cases, each segmented by the same per-case function, on Ray Data actors."""
    from ..distributed import RayOptions, segment_on_ray
    cluster = options_from(RayOptions, args, address=args.ray or None)
    report = segment_on_ray(args.inputs, args.model, args.out, options=segment_options(args),
                            engine=engine_options(args), cluster=cluster, resume=args.resume)
    failed = _print_table(report.outcomes)
    for line in report.summary_lines():
        print(line)
    if failed:
        sys.exit(1)


def _log_case(outcome) -> None:
    if outcome.status == "failed":
        log.error("%s: failed: %s", outcome.case, outcome.detail)
    else:
        log.info("%s: %s in %.1f s -> %s", outcome.case, "done" if outcome.status == "ok" else outcome.status,
                 outcome.seconds, outcome.detail)


def run(args) -> None:
    if args.ray is not None:
        return _run_on_ray(args)
    ray_only = [flag for flag in RAY_FLAGS if getattr(args, flag) is not None]
    if ray_only:
        raise InvalidArgumentError(f"{', '.join('--' + f.replace('_', '-') for f in ray_only)} apply to --ray runs only")
    if "://" in str(args.out):
        raise InvalidArgumentError(f"output {args.out!r} is a URI: object stores are written by --ray runs only; "
                                   "give a folder")
    from .. import Segmenter
    from ..io.cases import find_cases
    from ..workflow import run_cases

    out = check_writable(args.out, folder=True)
    options = segment_options(args)
    cases = find_cases(args.inputs)
    seg = Segmenter(args.model, options=engine_options(args))
    log.info("%d case(s) with %s (%s, %s %s) -> %s", len(cases), args.model, seg.config.name, seg.backend_name,
             seg.precision, out)
    outcomes = run_cases(seg, cases, out, options, model=args.model, resume=args.resume, on_case=_log_case)
    if _print_table(outcomes):
        sys.exit(1)


def add_parser(sub) -> None:
    segment = sub.add_parser("segment", help="segment DICOM series, NIfTI volumes or images into OUT/<case>/",
                             description=__doc__.split("\n\n")[0])
    segment.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="DICOM series folder or .zip, NIfTI, PNG/BMP/TIFF/NPY/DICOM image, a folder of cases, "
                              "or a .csv list of them")
    segment.add_argument("-m", "--model", required=True, help="bundle (NAME.ldseg), checkpoint or builtin:NAME")
    segment.add_argument("-o", "--out", required=True, help="output folder; each case gets OUT/<case>/")
    add_sample_arguments(segment, what="image or slice")
    segment.add_argument("--seed", type=int, help="the seed of every case (default: a fresh one per case, recorded)")
    add_engine_arguments(segment)
    add_volume_arguments(segment)
    segment.add_argument("--format", dest="formats", help="comma-separated: nifti, dicom-seg, png, npy (default: "
                                                          "nifti, and dicom-seg for DICOM series; png, npy for 2-D "
                                                          "images)")
    segment.add_argument("--samples", dest="return_samples", action="store_true", default=None,
                         help="also write the n samples")
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
