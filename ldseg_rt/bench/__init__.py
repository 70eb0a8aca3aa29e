"""End-to-end benchmark of `Segmenter.sample()`: latency, throughput, peak memory,
FLOPs and the fraction of the machine's matmul rate they reach, per configuration, n, backend
and precision, against two plain-PyTorch baselines run in the same process with the same
weights.

    python -m ldseg_rt bench [--quick] [--configs small amb_small] [--n 1 16] [--threads 2]
    python benchmarks/speed/end_to_end.py ...                      # the same, as benchmarks/ runs it

What is measured, per row (config, backend, precision, n):
- latency_ms: median over --repeats calls of `sample(image, n, seed=0)` after --warmup calls
  (wall clock; on CUDA the call returns numpy, so it includes the device's work);
  samples_per_s = n / latency.
- peak_rss_mb: the process's resident-set high-water mark during the measured calls. On
  Linux the kernel's VmHWM (/proc/self/status), reset to the current RSS by writing "5" to
  /proc/self/clear_refs just before them: exact, no sampling. Where that is unavailable,
  psutil's RSS sampled every 2 ms by a thread (if psutil is installed), else ru_maxrss (the
  peak since the process started, not resettable). It is process-wide: the interpreter,
  libraries and every model loaded so far count. On CUDA torch.cuda.max_memory_allocated
  (reset before the measured calls) is reported beside it in the tables.
- flops: counted from the graph with torch.utils.flop_counter.FlopCounterMode on each
  network at the batch it is called with, on the meta device (shapes only, nothing runs):
  the image encoder once at batch 1, the denoiser at batch n times `steps`, the decoder at
  batch n. FlopCounterMode counts matmuls, convolutions and attention (2 FLOPs per
  multiply-add), not norms or elementwise work. gflops_per_s = flops / latency, and
  fraction_of_matmul = that / the fp32 rate of torch.mm on 2048x2048 matrices measured in
  the same run with the same thread count (median of several, after warm-up).
- speedup_vs_eager_per_sample, speedup_vs_eager_batched: the latency of two plain PyTorch
  pipelines (`eager_per_sample`, `eager_batched` in baselines.py; fp32, on the row's device, same
  weights, same seed and Philox noise) divided by the row's latency.

Threads: --threads sets torch.set_num_threads before anything is built; the onnxruntime
backend gives its sessions torch's thread count, and the matmul rate is measured with it.
The C++ sampler's step math uses its own threads (one per hardware thread).

The table is printed, rewritten between the markers `<!-- begin speed/end_to_end -->` and
`<!-- end speed/end_to_end -->` of benchmarks/RESULTS.md (appended at its end if absent; the
rest of the file is left untouched), and written to benchmarks/results.json, one record per
row with exactly the keys of ROW_KEYS; --no-write writes neither. Unavailable
backend/precision combinations are skipped with the reason printed.
"""
from .baselines import eager_batched, eager_per_sample
from .flops import flops_per_call, network_flops, network_inputs
from .harness import ROW_KEYS, Bench, Workload, add_arguments, main, plan_backends, run
from .report import write_section

__all__ = ["Bench", "ROW_KEYS", "Workload", "add_arguments", "eager_batched", "eager_per_sample", "flops_per_call",
           "main", "network_flops", "network_inputs", "plan_backends", "run", "write_section"]
