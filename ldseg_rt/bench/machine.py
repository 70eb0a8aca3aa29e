"""The machine under measurement: what it is (CPU, cores, memory, GPU, library versions) and
its one-line description, its fp32 matmul rate, device synchronisation, the process's peak
memory during measured calls (kernel VmHWM, sampled psutil RSS or ru_maxrss; CUDA peak
allocation beside it), and `timed`, the median wall time of a callable after warm-up."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from ..backends import tensorrt_available

MATMUL_SIZE = 2048


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = MATMUL_SIZE, repeats: int = 5, warmup: int = 2) -> float:
    """The machine's fp32 matmul rate: median time of torch.mm on size x size matrices after
    warm-up, as 2 size^3 / time, in GFLOP/s (torch's current thread count)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(size, size, generator=gen).to(device) for _ in range(2))
    with torch.inference_mode():
        for _ in range(warmup):
            torch.mm(a, b)
        _synchronize(device)
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            torch.mm(a, b)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(times) / 1e9


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2 ** 20
    return None


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    import onnxruntime
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
            "memory_gib": _memory_gib(), "gpu": None, "tensorrt": None, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    with contextlib.suppress(AttributeError, OSError):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if tensorrt_available():
        with contextlib.suppress(Exception):
            import tensorrt
            info["tensorrt"] = tensorrt.__version__
    return info


# ---------------------------------------------------------------- peak memory
def _vm_hwm_kib() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_method() -> str:
    """How this machine's peak RSS is taken: 'VmHWM' (kernel high-water mark, reset through
    /proc/self/clear_refs), 'psutil' (sampled), or 'ru_maxrss' (since process start)."""
    if _vm_hwm_kib() is not None and _reset_vm_hwm():
        return "VmHWM"
    try:
        import psutil  # noqa: F401
        return "psutil"
    except ImportError:
        return "ru_maxrss"


RSS_METHODS = {
    "VmHWM": "VmHWM of /proc/self/status, reset by writing 5 to /proc/self/clear_refs before the measured calls",
    "psutil": "the process RSS sampled every 2 ms by a psutil thread during the measured calls",
    "ru_maxrss": "ru_maxrss (the peak since the process started: not resettable, so it never falls between rows)",
}


class PeakMemory:
    """`with PeakMemory(method, device) as peak: ...` then peak.rss_mb (and peak.gpu_mb on CUDA)."""

    def __init__(self, method: str, device: torch.device):
        self.method, self.device = method, device
        self.rss_mb = self.gpu_mb = None
        self._samples, self._stop = [], threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.method == "VmHWM":
            _reset_vm_hwm()
        elif self.method == "psutil":
            import psutil
            process = psutil.Process()

            def sample():
                while not self._stop.is_set():
                    self._samples.append(process.memory_info().rss)
                    self._stop.wait(0.002)
            self._samples.append(process.memory_info().rss)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.rss_mb = _vm_hwm_kib() / 1024
        elif self.method == "psutil":
            self._stop.set()
            self._thread.join()
            self.rss_mb = max(self._samples) / 2 ** 20
        else:
            import resource
            self.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        if self.device.type == "cuda":
            self.gpu_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return False


def timed(fn, warmup: int, repeats: int, device: torch.device, memory: PeakMemory | None = None) -> float:
    """Median wall time of fn() in seconds over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    with memory if memory is not None else contextlib.nullcontext():
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def describe_machine(info: dict) -> str:
    cores = f"{info['cores']} cores" + (f" ({info['usable_cores']} usable)"
                                         if info.get("usable_cores") not in (None, info["cores"]) else "")
    parts = [info["cpu"], cores]
    if info.get("memory_gib"):
        parts.append(f"{info['memory_gib']:.0f} GiB")
    parts.append(f"GPU {info['gpu']}" if info.get("gpu") else "no GPU")
    parts += [f"torch {info['torch']}", f"onnxruntime {info['onnxruntime']}"]
    if info.get("tensorrt"):
        parts.append(f"TensorRT {info['tensorrt']}")
    parts += [f"Python {info['python']}", f"{info['threads']} torch/ONNX Runtime thread(s)"]
    if info.get("load_average"):
        parts.append("load average at start " + " / ".join(f"{x:.2f}" for x in info["load_average"]))
    return ", ".join(parts)
