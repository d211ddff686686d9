"""FlashAttention-4 beside cuDNN on one GPU: (a) the kernels alone, forward and forward+backward TFLOP/s;
(b) per-rank efficiency of Hamilton n = 8 (one rank's full step sequence emulated on this GPU, transfers
assumed overlapped) with backend cudnn, flash_attn and auto, against the ideal = the fastest monolithic
kernel over the whole sequence / n; (c) which kernel ``auto`` picked for each block shape.
Prints markdown tables, writes results.json and a PNG.

    python benchmarks/flash4_gpu.py --out bench_results/flash4
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from tasp_plugin.bench import attention_flops, monolithic_seconds, per_rank_seconds
from tasp_plugin.kernels import get_kernel
from tasp_plugin.kernels.flash4 import flash_attn4_available
from tasp_plugin.kernels.measured import MeasuredKernel

HEADS, HEAD_DIM, N = 32, 128, 8
KERNELS = ("cudnn", "flash_attn")
MONO_CAP = 131072  # longest monolithic call; beyond it that call's rate is used


def kernel_table() -> list[dict]:
    """TFLOP/s of one call over the whole sequence, per backend."""
    rows = []
    for tokens, causal, kv_heads in ((2048, True, HEADS), (8192, True, HEADS), (8192, False, HEADS),
                                     (16384, True, HEADS), (8192, True, 8), (32768, True, HEADS)):
        row: dict = {"tokens": tokens, "causal": causal, "kv_heads": kv_heads}
        for backend in KERNELS:
            for phase, backward in (("fwd", False), ("fwd_bwd", True)):
                s = monolithic_seconds(tokens, HEADS, kv_heads, HEAD_DIM, causal, backward, backend)
                flops = attention_flops(1, HEADS, tokens, tokens, HEAD_DIM, causal, backward)
                row[f"{backend} {phase}"] = flops / s / 1e12
        rows.append(row)
    return rows


def ideal_seconds(local: int, causal: bool, backward: bool) -> float:
    """The fastest monolithic kernel over N * local tokens, divided by N."""
    total = N * local
    measured = min(total, MONO_CAP)
    best = min(monolithic_seconds(measured, HEADS, HEADS, HEAD_DIM, causal, backward, b) for b in KERNELS)
    rate = attention_flops(1, HEADS, measured, measured, HEAD_DIM, causal, backward) / best
    return attention_flops(1, HEADS, total, total, HEAD_DIM, causal, backward) / N / rate


def efficiency_table() -> list[dict]:
    rows = []
    for local in (4096, 8192, 32768):
        for phase, backward in (("fwd", False), ("fwd_bwd", True)):
            ideal = ideal_seconds(local, True, backward)
            row: dict = {"tokens_per_gpu": local, "phase": phase, "ideal_ms": ideal * 1e3}
            for backend in (*KERNELS, "auto"):
                got = per_rank_seconds("hamilton", N, local, HEADS, HEADS, HEAD_DIM, True, backward, backend)
                row[backend] = {"ms": got.seconds * 1e3, "efficiency": ideal / got.seconds,
                                "outside_kernels": 1 - got.kernel_seconds / got.seconds}
            rows.append(row)
            print(f"  {local // 1024:>3}K/GPU {phase:<8} " + "  ".join(
                f"{b} {row[b]['efficiency']:6.1%}" for b in (*KERNELS, "auto")), flush=True)
    return rows


def markdown(kernels: list[dict], efficiency: list[dict], choices: dict) -> str:
    lines = ["| tokens | causal | KV heads | cuDNN fwd | FA4 fwd | cuDNN fwd+bwd | FA4 fwd+bwd (TFLOP/s) |",
             "|---|---|---|---|---|---|---|"]
    for r in kernels:
        lines.append(f"| {r['tokens'] // 1024}K | {'yes' if r['causal'] else 'no'} | {r['kv_heads']} | "
                     f"{r['cudnn fwd']:.0f} | {r['flash_attn fwd']:.0f} | {r['cudnn fwd_bwd']:.0f} | "
                     f"{r['flash_attn fwd_bwd']:.0f} |")
    lines += ["", "| Hamilton n=8, tokens/GPU | phase | cudnn | flash_attn | auto |", "|---|---|---|---|---|"]
    for r in efficiency:
        lines.append(f"| {r['tokens_per_gpu'] // 1024}K | {r['phase']} | " + " | ".join(
            f"{100 * r[b]['efficiency']:.1f}%" for b in (*KERNELS, "auto")) + " |")
    lines += ["", "| auto's choice: phase, q shape, k shape, causal | kernel |", "|---|---|"]
    lines += [f"| {key} | {name} |" for key, name in sorted(choices.items())]
    return "\n".join(lines)


def plot(efficiency: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, phase in zip(axes, ("fwd", "fwd_bwd"), strict=True):
        rows = [r for r in efficiency if r["phase"] == phase]
        for backend in (*KERNELS, "auto"):
            ax.plot([r["tokens_per_gpu"] / 1024 for r in rows], [100 * r[backend]["efficiency"] for r in rows],
                    marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per GPU (K)")
        ax.set_title(f"Hamilton n={N}, causal, {'forward' if phase == 'fwd' else 'forward+backward'}")
        ax.axhline(90, color="grey", ls=":", lw=1)
        ax.legend()
    axes[0].set_ylabel("% of ideal (fastest monolithic kernel / n)")
    fig.suptitle(f"{torch.cuda.get_device_name()}, bf16, {HEADS} heads x {HEAD_DIM}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_results/flash4")
    args = parser.parse_args()
    if not flash_attn4_available():
        raise SystemExit("flash4_gpu.py needs a Hopper (or newer) GPU and flash-attn-4: "
                         "pip install 'tasp_plugin[flash]'")
    os.makedirs(args.out, exist_ok=True)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    kernels = kernel_table()
    efficiency = efficiency_table()
    auto = get_kernel("auto", torch.device("cuda"), torch.bfloat16, HEAD_DIM)
    choices = {str(k): v for k, v in auto.choices().items()} if isinstance(auto, MeasuredKernel) else {}
    table = markdown(kernels, efficiency, choices)
    print(table, flush=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "kernels": kernels,
                   "per_rank": efficiency, "auto_choices": choices}, fh, indent=1)
    with open(os.path.join(args.out, "tables.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    plot(efficiency, os.path.join(args.out, "flash4_efficiency.png"))


if __name__ == "__main__":
    main()
