"""The package's architecture holds: the runtime imports no training code, data generator,
evaluation code or plotting, and the move into folders changed no sample (latents recorded
with the flat layout, before the move, for both families)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ldseg_rt import Segmenter

RECORDED = Path(__file__).parent / "fixtures" / "latents_before_layout.npz"

PROBE = """
import json, sys
import numpy as np
import ldseg_rt
seg = ldseg_rt.Segmenter("builtin:phantom")
seg.sample(np.random.default_rng(0).random((40, 52)), n=2, seed=1)
amb = ldseg_rt.Segmenter.from_config("amb_small", backend="torch")
amb.sample(np.random.default_rng(0).random((30, 30)), n=2, seed=1)
print(json.dumps(sorted(sys.modules)))
"""


def test_runtime_imports_no_training_data_evaluation_or_plotting():
    loaded = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout)
    assert "ldseg_rt.segmenter" in loaded and "ldseg_rt.diffusion.pixel_schedule" in loaded  # the probe ran both
    forbidden = [m for m in loaded if m.split(".")[:2] in (["ldseg_rt", "training"], ["ldseg_rt", "data"],
                                                            ["ldseg_rt", "evaluation"], ["ldseg_rt", "cli"])
                 or m.split(".")[0] == "matplotlib"]
    assert forbidden == []


def test_the_service_imports_no_command_line_training_or_plotting():
    """serve -> {segmenter, io}; and the runtime alone loads none of the service's stack."""
    probe = ("import json, sys\nimport ldseg_rt\nbare = sorted(sys.modules)\n"
             "import ldseg_rt.serve.service, ldseg_rt.serve.oip, ldseg_rt.serve.dicom_node\n"
             "print(json.dumps([bare, sorted(sys.modules)]))")
    bare, served = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                             check=True).stdout)
    assert not [m for m in bare if m.split(".")[0] in ("fastapi", "uvicorn", "pynetdicom", "prometheus_client")]
    assert "ldseg_rt.serve.dicom_node" in served
    assert [m for m in served if m.split(".")[:2] in (["ldseg_rt", "cli"], ["ldseg_rt", "training"],
                                                       ["ldseg_rt", "data"], ["ldseg_rt", "evaluation"])
            or m.split(".")[0] == "matplotlib"] == []


def test_same_samples_as_before_the_layout_move():
    """Recorded with the flat layout on an AVX2 CPU, where these are bit-identical; another CPU's
    convolution kernels may round differently, so elsewhere the latents must agree to float
    tolerance. Each recorded image already spans its own intensity window (it was clipped at its
    1st/99th percentiles), so the robust intensity scaling that came after the move scales it as
    min-max scaling did."""
    recorded = np.load(RECORDED)
    ldseg = Segmenter("builtin:phantom", backend="torch").sample(recorded["ldseg_image"], n=4, seed=123)
    ambiguous = Segmenter.from_config("amb_small", seed=0, backend="torch").sample(recorded["ambiguous_image"], n=4,
                                                                                   seed=7)
    for family, result in (("ldseg", ldseg), ("ambiguous", ambiguous)):
        np.testing.assert_allclose(result.latents, recorded[f"{family}_latents"], rtol=0, atol=1e-4, err_msg=family)
        assert (result.samples == recorded[f"{family}_samples"]).mean() > 0.999, family
