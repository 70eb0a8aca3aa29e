"""The benchmark harness (ldseg_rt.bench, `python -m ldseg_rt bench`): a row's record, the
FLOP accounting against counts taken here independently, the eager baselines against the
Segmenter, and the command writing results.json and its RESULTS.md section. No timing assertions."""
import contextlib
import json
import math
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import perturbed
from ldseg_rt import Segmenter
from ldseg_rt import bench as harness
from ldseg_rt.backends.precision import cpu_has_bf16
from ldseg_rt.bench import busy as busy_module
from ldseg_rt.cli import main as cli_main
from ldseg_rt.configs import get_config
from ldseg_rt.diffusion.plan import sampling_plan
from ldseg_rt.models import build_model


def counted(network, *inputs) -> int:
    """FLOPs of one call on real CPU tensors, attention forced into its math (bmm) form so
    that torch's own table counts it (the harness counts shapes on the meta device)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        network(*inputs)
    return counter.get_total_flops()


def expected_flops(model, n: int) -> int:
    cfg = model.config
    image = torch.rand(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    z_t, z_i = torch.randn(n, *cfg.latent_shape), torch.randn(n, *cfg.condition_shape)
    t = torch.full((n,), 500.0)
    return (counted(model.image_encoder, image) + cfg.steps * counted(model.denoiser, z_t, z_i, t)
            + counted(model.decoder, z_t))


def test_row_records_and_flops(small_model, monkeypatch):
    entered = []
    # The competing programs themselves are tested below; here only that rows are timed again among them.
    monkeypatch.setattr(harness.harness, "busy", lambda k: entered.append(k) or contextlib.nullcontext())
    bench = harness.Bench(warmup=0, repeats=1, device="cpu", models={"small": small_model}, matmul_size=256,
                          matmul_repeats=1, busy=2)
    try:
        records = [bench.row("small", backend, "fp32", 1) for backend in ("torch", "onnxruntime")]
    finally:
        bench.release("small")
    flops = expected_flops(small_model, 1)
    assert flops > 0
    for record, backend in zip(records, ("torch", "onnxruntime")):
        assert tuple(record) == harness.ROW_KEYS
        assert (record["config"], record["backend"], record["precision"], record["n"], record["steps"]) == \
            ("small", backend, "fp32", 1, 15)
        assert record["flops"] == flops
        numbers = [k for k in harness.ROW_KEYS[5:] if k != "agreement_reference"]
        for key in numbers:
            assert isinstance(record[key], (int, float)) and math.isfinite(record[key]) and record[key] > 0, key
        assert record["busy_programs"] == 2 and record["busy_ratio"] == record["busy_latency_ms"] / record["latency_ms"]
        json.dumps(record)
    # The first fp32 row is the reference; onnxruntime's consensus is torch's up to near-ties.
    assert [(r["agreement_reference"], r["consensus_agreement"] == 1.0) for r in records] == \
        [("torch fp32", True), ("torch fp32", records[1]["consensus_agreement"] == 1.0)]
    assert records[1]["consensus_agreement"] >= 0.999
    assert entered == [2, 2]
    assert set(bench.baselines) == {("small", 1, torch.device("cpu"))}


def state(pid: int) -> str:
    """The process's scheduler state (/proc/PID/stat field 3): R running or runnable, S sleeping."""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_busy_keeps_every_core_busy_and_stops(monkeypatch):
    """Every competitor is seen runnable (a CPU-bound program, never asleep on a timer or a lock),
    and all are gone once the block ends."""
    monkeypatch.setattr(busy_module, "SETTLE_S", 0.0)
    cores = len(os.sched_getaffinity(0))
    with busy_module.busy(2):
        rivals = multiprocessing.active_children()
        assert len(rivals) == 2 * cores and all(r.is_alive() for r in rivals)
        seen = {r.pid: set() for r in rivals}
        for _ in range(200):  # bounded: a few states per competitor suffice
            for pid, states in seen.items():
                states.add(state(pid))
            if all("R" in states for states in seen.values()):
                break
            time.sleep(0.005)
    assert all("R" in states for states in seen.values()), seen
    assert multiprocessing.active_children() == [] and not any(r.is_alive() for r in rivals)


def test_flops_scale_with_the_batch_each_network_runs_at(small_model):
    assert harness.flops_per_call(small_model, 4, small_model.config.steps) == expected_flops(small_model, 4)


@pytest.mark.parametrize("name", ["small", "amb_small"])
def test_eager_baselines_match_the_segmenter(name, small_model, rng):
    """Same weights, same Philox noise: the plain torch loops give the Segmenter's samples
    (LDSeg's eps/DDIM with renormalisation; the pixel family's x-prediction, clipping and
    DDPM noise at every step)."""
    model = small_model if name == "small" else perturbed(build_model(get_config(name), seed=5), seed=6)
    cfg, n, seed = model.config, 3, int(rng.integers(2 ** 63))
    image = rng.random((cfg.image_size + 8, cfg.image_size - 8), dtype=np.float32)  # resized in and out
    plan = sampling_plan(cfg, cfg.steps, float(cfg.eta))
    res = Segmenter(model, backend="torch", device="cpu").sample(image, n=n, seed=seed)
    for run in (harness.eager_batched, harness.eager_per_sample):
        samples, mask, latents = run(model, image, n, seed, plan)
        assert samples.shape == (n, *image.shape) and samples.dtype == np.uint8 and mask.shape == image.shape
        assert samples.max() < cfg.num_classes
        assert np.abs(latents - res.latents).max() < 1e-4, run.__name__
        assert (samples == res.samples).mean() >= 0.999, run.__name__
        assert (mask == res.mask).mean() >= 0.999, run.__name__


def test_cli_bench_writes_json_and_markdown(tmp_path, capsys):
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    md.write_text("# Results\n")
    cli_main(["bench", "--configs", "small", "--n", "1", "--repeats", "1", "--warmup", "0", "--backends", "torch",
              "--out-json", str(out), "--results-md", str(md)])
    records = json.loads(out.read_text())
    # The bf16 row runs exactly where the library's own predicate says this CPU multiplies bf16.
    precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() else [])
    assert [tuple(r) for r in records] == [harness.ROW_KEYS] * len(precisions)
    assert [(r["config"], r["backend"], r["precision"]) for r in records] == [("small", "torch", p) for p in precisions]
    text = md.read_text()
    section = harness.harness.SECTION
    assert text.startswith("# Results\n")
    assert text.count(f"<!-- begin {section} -->") == 1 and text.count(f"<!-- end {section} -->") == 1
    assert "| small | torch | fp32 | 1 | 15 |" in text and "Machine:" in text
    printed = capsys.readouterr().out
    assert "latency ms" in printed
    if not torch.cuda.is_available():
        assert "skipped torch fp16: precision 'fp16' with backend 'torch' needs a CUDA device" in printed
        assert ("skipped torch bf16" in printed) == (not cpu_has_bf16())


def test_cli_bench_no_write_leaves_the_files_alone(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    cli_main(["bench", "--configs", "small", "--n", "1", "--repeats", "1", "--warmup", "0", "--backends", "torch",
              "--out-json", str(out), "--results-md", str(md), "--no-write"])
    assert not out.exists() and not md.exists()


def test_largest_activation_set_by_hand(small_model):
    """small: the widest full-resolution layer is the decoder's last 16-channel 128x128 stage,
    whose 1x1 shortcut holds input and output (each batch x 16 x 128 x 128 float32) at once."""
    from ldseg_rt.bench.activations import largest_activation_bytes
    cfg = small_model.config
    one_sample = 2 * cfg.decoder_widths[-1] * cfg.image_size ** 2 * 4
    for n, decode_batch, batch in ((16, 4, 4), (16, None, 16), (3, 4, 3)):
        size, where = largest_activation_bytes(small_model, n, decode_batch)
        assert size == batch * one_sample and where.startswith("decoder.")
