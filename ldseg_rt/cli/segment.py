"""`python -m ldseg_rt segment INPUT... -m MODEL -o OUT`: segment every case the inputs name
(DICOM series, NIfTI volumes, 2-D images; ldseg_rt.io.cases) and write each case's results,
whole and atomically, to OUT/<case>/ (ldseg_rt.io.results). A case that fails is reported in
one line and the batch goes on; the exit status is 1 if any case failed."""
from __future__ import annotations

import logging
import sys
import time

from ..errors import LdsegError
from ..io.atomic import check_writable

log = logging.getLogger(__name__)


def _segment(seg, data, args):
    """The case's result; without --seed the Segmenter draws one, and the result records it."""
    from ..io.volume import Volume
    if isinstance(data, Volume):
        return seg.segment_volume(data, n=args.n, axis=args.axis, seed=args.seed, steps=args.steps,
                                  max_batch=args.max_batch, return_samples=args.samples)
    return seg.sample(data, n=args.n, steps=args.steps, seed=args.seed, return_samples=args.samples)


def run(args) -> None:
    from .. import Segmenter
    from ..io.cases import find_cases, read_case
    from ..io.dicom_series import SeriesRule
    from ..io.results import (algorithm_identity, default_formats, is_complete, parse_formats, reproduction_record,
                              write_case)
    from ..io.volume import Volume

    out = check_writable(args.out, folder=True)
    formats = parse_formats(args.format) if args.format else None
    rule = SeriesRule.parse(args.select) if args.select else None
    cases = find_cases(args.inputs)
    seg = Segmenter(args.model, backend=args.backend, precision=args.precision)
    algorithm = algorithm_identity(seg)
    log.info("%d case(s) with %s (%s, %s %s) -> %s", len(cases), args.model, seg.config.name, seg.backend_name,
             seg.precision, out)
    rows = []
    for case in cases:
        folder = out / case.name
        if args.resume and is_complete(folder):
            rows.append((case.name, "skipped", 0.0, "complete already (--continue)"))
            continue
        start = time.perf_counter()
        try:
            data = read_case(case, rule)
            result = _segment(seg, data, args)
            volume = isinstance(data, Volume)
            sidecar = {"case": case.name, "input": str(case.path), "model": args.model,
                       **reproduction_record(seg, result, args.n, args.steps,
                                             data.array.shape if volume else data.shape)}
            chosen = formats or default_formats(volume, volume and isinstance(data.source, list))
            write_case(folder, result, chosen, seg.class_names, sidecar, algorithm)
        except (LdsegError, OSError) as e:
            rows.append((case.name, "failed", time.perf_counter() - start, str(e)))
            log.error("%s: failed: %s", case.name, e)
            continue
        rows.append((case.name, "ok", time.perf_counter() - start, str(folder)))
        log.info("%s: done in %.1f s -> %s", case.name, rows[-1][2], folder)
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'case':<{width}}  {'status':<8}{'seconds':>9}  output or reason")
    for name, status, seconds, detail in rows:
        print(f"{name:<{width}}  {status:<8}{seconds:9.1f}  {detail}")
    failed = sum(r[1] == "failed" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} case(s) done, {failed} failed")
    if failed:
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
    segment.set_defaults(run=run)
