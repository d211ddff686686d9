"""One GPU call that measures what issue 7 asks: (a) kernel backends, forward and forward+backward TFLOP/s;
(b) per-rank compute efficiency of ring, zigzag and Hamilton (one rank's full step sequence emulated on
this GPU) against the ideal = monolithic kernel time / n; (c) the share of that time spent outside the
attention kernels (merges, copies, launches). Prints tables, writes results.json and PNG plots.

    python benchmarks/engine_gpu.py --out results/ [--budget-s 480] [--quick | --lengths 8192 --ns 8] [--no-backends]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tasp_plugin.bench import attention_flops, monolithic_seconds, per_rank_seconds
from tasp_plugin.kernels import get_kernel

HEADS, HEAD_DIM = 32, 128
MONO_CAP = 131072  # longest monolithic call measured; beyond it the rate measured here is used


def backends_table(length: int) -> list[dict]:
    rows = []
    for backend in ("cudnn", "torch_flash", "torch_efficient"):
        for kv_heads in (HEADS, 8):
            for causal in (True, False):
                row = {"backend": backend, "kv_heads": kv_heads, "causal": causal, "tokens": length}
                for phase, backward in (("fwd", False), ("fwd_bwd", True)):
                    try:
                        s = monolithic_seconds(length, HEADS, kv_heads, HEAD_DIM, causal, backward, backend)
                        row[phase] = attention_flops(1, HEADS, length, length, HEAD_DIM, causal, backward) / s / 1e12
                    except RuntimeError as exc:  # a backend that rejects this shape on this GPU
                        row[phase] = f"error: {str(exc).splitlines()[0][:60]}"
                rows.append(row)
                print(f"  {backend:<16} kv={kv_heads:<3} causal={causal!s:<5} fwd {_fmt(row['fwd'])} TFLOP/s   "
                      f"fwd+bwd {_fmt(row['fwd_bwd'])} TFLOP/s", flush=True)
    return rows


def _fmt(x) -> str:
    return f"{x:7.1f}" if isinstance(x, float) else str(x)


_mono_cache: dict = {}


def ideal_seconds(n: int, local: int, kv_heads: int, causal: bool, backward: bool) -> tuple[float, str]:
    """Monolithic time over n * local tokens / n (measured up to MONO_CAP tokens, else at MONO_CAP's rate)."""
    total = n * local
    measured = min(total, MONO_CAP)
    key = (measured, kv_heads, causal, backward)
    if key not in _mono_cache:
        _mono_cache[key] = monolithic_seconds(measured, HEADS, kv_heads, HEAD_DIM, causal, backward)
    rate = attention_flops(1, HEADS, measured, measured, HEAD_DIM, causal, backward) / _mono_cache[key]
    how = "measured" if measured == total else f"rate at {measured // 1024}K"
    return attention_flops(1, HEADS, total, total, HEAD_DIM, causal, backward) / n / rate, how


def configs(quick: bool, lengths: list[int] | None = None, ns: list[int] | None = None) -> list[tuple]:
    lengths = lengths or ([4096, 8192] if quick else [4096, 8192, 16384, 32768, 65536])
    out = []
    for local in lengths:
        for n in ns or (8, 16, 32):
            if n * local > 1 << 20 and local > 32768:
                continue
            for kv_heads in ((HEADS, 8) if n == 8 else (HEADS,)):
                for algorithm in (("ring", "zigzag", "hamilton") if n == 8 else ("zigzag", "hamilton")):
                    for causal in (True, False):
                        out.append((algorithm, n, local, kv_heads, causal))
    return sorted(out, key=lambda c: c[1] * c[2] * c[2])


def efficiency_table(budget_s: float, quick: bool, lengths: list[int] | None = None,
                     ns: list[int] | None = None) -> tuple[list[dict], list[tuple]]:
    rows, skipped, start = [], [], time.time()
    for algorithm, n, local, kv_heads, causal in configs(quick, lengths, ns):
        if time.time() - start > budget_s:
            skipped.append((algorithm, n, local, kv_heads, causal))
            continue
        row = {"algorithm": algorithm, "n": n, "tokens_per_gpu": local, "kv_heads": kv_heads, "causal": causal}
        for phase, backward in (("fwd", False), ("fwd_bwd", True)):
            ideal, how = ideal_seconds(n, local, kv_heads, causal, backward)
            # "ring" here is the paper's baseline: the ring schedule on contiguous sharding
            got = per_rank_seconds(algorithm, n, local, HEADS, kv_heads, HEAD_DIM, causal, backward,
                                   sharding="contiguous" if algorithm == "ring" else "zigzag")
            row[phase] = {"ms": got.seconds * 1e3, "ideal_ms": ideal * 1e3, "efficiency": ideal / got.seconds,
                          "outside_kernels": 1 - got.kernel_seconds / got.seconds, "ideal_from": how}
        rows.append(row)
        f, b = row["fwd"], row["fwd_bwd"]
        print(f"  {algorithm:<9} n={n:<3} {local // 1024:>3}K/GPU kv={kv_heads:<3} causal={causal!s:<5} "
              f"fwd {f['efficiency']:6.1%} (outside kernels {f['outside_kernels']:5.1%})   "
              f"fwd+bwd {b['efficiency']:6.1%} (outside {b['outside_kernels']:5.1%})", flush=True)
    return rows, skipped


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey=True)
    for (i, causal), (j, phase) in [((i, c), (j, p)) for i, c in enumerate((True, False))
                                    for j, p in enumerate(("fwd", "fwd_bwd"))]:
        ax = axes[i][j]
        series: dict = {}
        for r in rows:
            if r["causal"] == causal and r["kv_heads"] == HEADS:
                series.setdefault((r["algorithm"], r["n"]), []).append((r["tokens_per_gpu"], r[phase]["efficiency"]))
        for (alg, n), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] / 1024 for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{alg} n={n}")
        ax.axhline(90, color="grey", ls=":", lw=1)
        ax.axhline(95, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{'causal' if causal else 'non-causal'}, {'forward' if phase == 'fwd' else 'forward+backward'}")
        ax.set_xlabel("tokens per GPU (K)")
        ax.set_ylabel("% of ideal (monolithic / n)")
        ax.legend(fontsize=7)
    fig.suptitle(f"per-rank compute efficiency, {torch.cuda.get_device_name()}, bf16, {HEADS} heads x {HEAD_DIM}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting efficiency configs after this")
    parser.add_argument("--quick", action="store_true", help="two lengths only")
    parser.add_argument("--lengths", type=int, nargs="+", help="tokens per GPU (default: 4K to 64K)")
    parser.add_argument("--ns", type=int, nargs="+", help="emulated group sizes (default: 8 16 32)")
    parser.add_argument("--no-backends", action="store_true", help="skip the kernel-backend table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("engine_gpu.py needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, auto backend for bf16 d={HEAD_DIM}: "
          f"{get_kernel('auto', torch.device('cuda'), torch.bfloat16, HEAD_DIM).name}", flush=True)
    if not args.no_backends:
        print("(a) kernel backends, one call over 16K tokens, 32 heads x 128, bf16", flush=True)
    backends = [] if args.no_backends else backends_table(16384)
    print("(b, c) per-rank efficiency = (monolithic time / n) / one rank's measured time", flush=True)
    rows, skipped = efficiency_table(args.budget_s, args.quick, args.lengths, args.ns)
    if skipped:
        print(f"skipped (time budget): {skipped}")
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"device": device, "torch": torch.__version__, "backends": backends, "per_rank": rows,
                   "skipped": skipped}, fh, indent=1)
    plot(rows, os.path.join(args.out, "per_rank_efficiency.png"))
    print(f"wrote {args.out}/results.json and per_rank_efficiency.png")


if __name__ == "__main__":
    main()
