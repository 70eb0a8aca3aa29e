"""Benchmark output: the harness's rows as a text table (printed) and as its RESULTS.md section
(machine, matmul rate, method notes, the table, the baselines' latencies and what was skipped),
markdown tables, an evaluation's Dice and uncertainty as markdown, and `write_section`, which
replaces one named section of a markdown file in place and keeps the rest byte for byte."""
from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from .machine import MATMUL_SIZE, RSS_METHODS, describe_machine


def format_number(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def table_rows(records: list[dict], extras: dict) -> tuple[list[str], list[list[str]]]:
    gpu = any(e.get("peak_gpu_mb") is not None for e in extras.values())
    busy = any(r["busy_ratio"] is not None for r in records)
    header = ["config", "backend", "precision", "n", "steps", "latency ms", "samples/s", "GFLOP/call", "GFLOP/s",
              "of matmul", "vs eager per-sample", "vs eager batched", "peak RSS MB"] + (["peak GPU MB"] if gpu else []) \
        + ["consensus vs first fp32"] + (["busy ms", "busy / quiet"] if busy else [])
    rows = []
    for r in records:
        extra = extras.get((r["config"], r["backend"], r["precision"], r["n"]), {})
        rows.append([r["config"], r["backend"] + (" (cpu)" if extra.get("device") == "cpu" and gpu else ""),
                     r["precision"], str(r["n"]), str(r["steps"]), f"{r['latency_ms']:.1f}",
                     format_number(r["samples_per_s"]), format_number(r["flops"] / 1e9),
                     format_number(r["gflops_per_s"]), f"{r['fraction_of_matmul']:.3f}",
                     f"{r['speedup_vs_eager_per_sample']:.2f}x", f"{r['speedup_vs_eager_batched']:.2f}x",
                     f"{r['peak_rss_mb']:.0f}"] + ([format_number(extra.get("peak_gpu_mb"), 4)] if gpu else [])
                    + [_agreement(r)]
                    + ([format_number(r["busy_latency_ms"], 4), f"{r['busy_ratio']:.2f}x"] if busy else []))
    return header, rows


def _agreement(r: dict) -> str:
    if r["consensus_agreement"] is None:
        return "-"
    return f"{r['consensus_agreement']:.4%}" + (f" ({r['agreement_reference']})" if r["agreement_reference"] else "")


def format_text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


def markdown_row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def format_markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [markdown_row(header), markdown_row("---" for _ in header)]
    return "\n".join(lines + [markdown_row(r) for r in rows])


def evaluation_markdown(result) -> str:
    """An `evaluate` result: Dice per class (per image and pooled), then how the uncertainty
    map relates to the errors."""
    per_image = result.dice_per_image
    rows = [[f"class {c + 1}", f"{mean:.3f} / {median:.3f} / {low:.3f}", f"{pooled:.3f}"]
            for c, (mean, median, low, pooled) in enumerate(zip(
                per_image.mean(0), np.median(per_image, 0), per_image.min(0), result.dice_pooled))]
    table = format_markdown_table(["class", f"Dice per image, mean / median / min ({len(per_image)} images)",
                                   "Dice pooled over all pixels"], rows)
    return (f"{table}\n\nUncertainty: mean {result.uncertainty_wrong:.3f} on wrong pixels vs "
            f"{result.uncertainty_right:.3f} on right ones; error rate {result.error_rate_most_uncertain:.3f} in "
            f"the 10% most uncertain pixels vs {result.error_rate_rest:.4f} in the rest.")


def markdown_section(records, extras, info, matmul: dict, baselines: dict, skipped, command: str,
                     rss: str) -> str:
    header, rows = table_rows(records, extras)
    lines = [f"`{command}`, {datetime.date.today().isoformat()}. Generated: rerunning the command rewrites "
             "this section (between its markers) and benchmarks/results.json.", "",
             f"Machine: {describe_machine(info)}.", "",
             "fp32 matmul rate (torch.mm " + f"{MATMUL_SIZE}x{MATMUL_SIZE}, median, same threads): " +
             ", ".join(f"{d}: {g:.1f} GFLOP/s" for d, g in matmul.items()) + ".", "",
             "Latency: median of the repeats after the warm-up of sample(image, n, seed=0) on one image at the "
             "model's input size, random weights (seed 0); samples/s = n / latency. GFLOP/call: "
             "FlopCounterMode (matmuls, convolutions, attention; 2 per multiply-add) on each network at the "
             "batch it runs at: image encoder once at batch 1, denoiser at batch n x steps, decoder at batch "
             "n. 'of matmul': achieved GFLOP/s over the matmul rate. 'vs eager': the latency of the plain "
             "PyTorch pipeline (fp32, same weights and noise, same device) over the row's. Peak RSS: "
             f"process-wide, {RSS_METHODS[rss]}. 'consensus vs first fp32': the fraction of pixels whose "
             "consensus equals that of the config's first fp32 row at the same n (named), same seed. 'busy': "
             "the same calls while competing programs keep every core busy (--busy K: K programs, one "
             "process per core each); 'busy / quiet' is the ratio of the medians.", "",
             format_markdown_table(header, rows), ""]
    if baselines:
        lines += ["Plain PyTorch baselines (ms): 'per-sample' runs the whole pipeline once per sample (encoder, "
                  "the step loop at batch 1, decoder; what the original code does), 'batched' the encoder once "
                  "and the n samples as one batch.", "",
                  format_markdown_table(["config", "n", "device", "eager per-sample ms", "eager batched ms"],
                                        [[c, str(n), str(d), f"{b['eager_per_sample'] * 1e3:.1f}",
                                          f"{b['eager_batched'] * 1e3:.1f}"]
                                         for (c, n, d), b in baselines.items()]), ""]
    if skipped:
        lines += ["Skipped here: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the markers `<!-- begin NAME -->` and `<!-- end NAME -->` of the markdown
    file at `path`, in place of what was there; without those markers (or without the file), append
    the section, headed NAME, at the end. Everything outside the markers is kept byte for byte, and
    the file is replaced at once (a temporary file, then os.replace), so a reader or a killed run
    never sees half of it."""
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    section = f"{begin}\n\n{body.strip()}\n\n{end}"  # blank lines: the markers never join a table
    text = _read(path)
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start != -1 else -1
    if stop != -1:
        text = text[:start] + section + text[stop + len(end):]
    else:
        text += ("" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n") + \
            f"## {name}\n\n{section}\n"
    _replace(path, text)


def _read(path: Path) -> str:
    if not path.exists():
        return ""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": line endings kept as they are
        return f.read()


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two runs never share it
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
