"""Load on the service: `python -m ldseg_rt serve` started as the README says, on loopback,
driven by many concurrent HTTP clients (Open Inference Protocol JSON requests), bounded in
count and in time. Prints, per scenario, throughput, p50/p95/p99 latency, and the requests
answered, refused (503 with Retry-After) and lost or failed, and writes them to its section of
benchmarks/RESULTS.md unless --no-write.

    python benchmarks/service/load.py [--requests 64] [--size 64] [-n 4] [--queue 8]

Scenarios: clients at most the queue limit plus the one running (nothing may be refused or
lost), then a flood of 4x as many clients (some are refused at once with 503; clients that
honour Retry-After retry, and every request is answered in the end).
"""
import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from ldseg_rt.bench.report import format_markdown_table
from ldseg_rt.bench.script import parse_args, publish

HEADER = ["scenario", "clients", "requests", "answered 200", "refused 503", "retries", "lost or failed",
          "throughput (req/s)", "p50 ms", "p95 ms", "p99 ms"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_ms(image: np.ndarray, n: int, repeats: int = 15) -> float:
    """The median time of the same sample() in this process: what the service adds is the rest."""
    from ldseg_rt import Segmenter
    segmenter = Segmenter("builtin:phantom")
    segmenter.sample(image, n=n, seed=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.sample(image, n=n, seed=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def infer(port: int, body: bytes, timeout: float):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v2/models/phantom/infer", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        connection.close()


def scenario(port: int, body: bytes, clients: int, requests: int, retry: bool, deadline: float) -> dict:
    """`requests` requests spread over `clients` threads; each records its latency (first try
    to answer, retries included) and outcome."""
    latencies, outcomes, lock = [], {"ok": 0, "busy": 0, "failed": 0, "retries": 0}, threading.Lock()
    todo = iter(range(requests))

    def client():
        while time.monotonic() < deadline:
            with lock:
                if next(todo, None) is None:
                    return
            start = time.perf_counter()
            while True:
                try:
                    status, retry_after = infer(port, body, timeout=max(1.0, deadline - time.monotonic()))
                except OSError:
                    status, retry_after = None, None
                if status == 503 and retry and time.monotonic() < deadline:
                    with lock:
                        outcomes["retries"] += 1
                    time.sleep(float(retry_after or 1))
                    continue
                break
            with lock:
                outcome = "ok" if status == 200 else "busy" if status == 503 else "failed"
                outcomes[outcome] += 1
                if outcome == "ok":
                    latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    answered = outcomes["ok"] + outcomes["busy"] + outcomes["failed"]
    ms = np.percentile(np.array(latencies) * 1e3, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"clients": clients, "requests": requests, "seconds": wall, "throughput": outcomes["ok"] / wall,
            "p50": ms[0], "p95": ms[1], "p99": ms[2], "lost": requests - answered, **outcomes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per scenario")
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument("-n", type=int, default=4, help="samples per request")
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=300, help="seconds per scenario at most")
    args = parse_args(parser)

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:args.size, :args.size]
    image = ((yy - args.size / 2) ** 2 + (xx - args.size / 2) ** 2 < (args.size / 3) ** 2) * 200.0
    image = (image + rng.normal(0, 10, image.shape)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "IMAGE", "shape": list(image.shape), "datatype": "FP32",
                                   "data": image.ravel().tolist()}], "parameters": {"n": args.n, "seed": 0}}).encode()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ldseg_rt", "serve", "-m", "builtin:phantom", "--http",
                               f"127.0.0.1:{port}", "--queue", str(args.queue)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        infer(port, body, 120)  # warm-up
        rows = [("below the queue limit", scenario(port, body, args.queue + 1, args.requests, False,
                                                    time.monotonic() + args.time_limit)),
                ("flood, no retry", scenario(port, body, 4 * (args.queue + 1), args.requests, False,
                                             time.monotonic() + args.time_limit)),
                ("flood, clients retry after Retry-After", scenario(port, body, 4 * (args.queue + 1), args.requests,
                                                                     True, time.monotonic() + args.time_limit))]
    finally:
        server.terminate()
        server.wait(120)
    alone = direct_ms(image, args.n)  # after the server has gone: nothing else running
    table = format_markdown_table(HEADER, [
        [name, r["clients"], r["requests"], r["ok"], r["busy"], r["retries"], r["lost"] + r["failed"],
         f"{r['throughput']:.2f}", f"{r['p50']:.0f}", f"{r['p95']:.0f}", f"{r['p99']:.0f}"] for name, r in rows])
    report = (f"builtin:phantom, {args.size}x{args.size} image, n={args.n}, queue {args.queue}, {args.requests} "
              f"requests per scenario:\n\n{table}\n\nsample() of the same image in one process, median: "
              f"{alone:.0f} ms ({1e3 / alone:.2f} per second, the ceiling of one model instance).")
    print(report)
    publish(__file__, report, no_write=args.no_write)

if __name__ == "__main__":
    main()
