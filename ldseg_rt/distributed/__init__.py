"""Batch segmentation of a study list on Ray Data (`python -m ldseg_rt segment ... --ray`): one
Segmenter per actor, each case through the same per-case function as `segment`, outputs
written by the actors to OUT, lost actors' cases retried, reruns finishing only what is
missing. Ray is an optional extra (pip install 'ldseg_rt[ray]'): importing this package does
not import it; `segment_on_ray` says clearly when it is missing.

    from ldseg_rt.distributed import segment_on_ray
    report = segment_on_ray(["cases.csv"], "model.ldseg", "out/", cluster=RayOptions(workers=2))
"""
from ..options import RayOptions
from .driver import RayBatchReport, import_ray, segment_on_ray
from .worker import CaseWorker

__all__ = ["segment_on_ray", "RayOptions", "RayBatchReport", "CaseWorker", "import_ray"]
