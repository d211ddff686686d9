"""Predicted speedup of Hamilton attention over ring and zigzag ring vs sequence length (cost model, no GPU).

Prints a table for 8x MI300X (full mesh), 8x H100 (NVSwitch) and 2x8 H100 (NVSwitch + one 400 Gb/s NIC per
GPU), compares it with the TASP paper's reported trend, and saves a PNG.

    python benchmarks/costmodel_speedup.py [--kv-heads 32] [--png docs/costmodel_speedup.png]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from tasp_plugin.costmodel import (
    H100_NVSWITCH,
    MI300X_MESH,
    ComputeRates,
    Interconnect,
    MultiNode,
    Prediction,
    Problem,
    h100_nodes,
    predict,
)

TOPOLOGIES: tuple[Interconnect, ...] = (MI300X_MESH, H100_NVSWITCH, h100_nodes(2))
SEQ_LENS = (4096, 8192, 10240, 16384, 32768, 65536, 102400, 131072)


def _hamilton(interconnect: Interconnect) -> str:
    return "hamilton_multinode" if isinstance(interconnect, MultiNode) else "hamilton_flat"


def speedups(interconnect: Interconnect, problem: Problem, rates: ComputeRates) -> dict[str, float | Prediction]:
    """Hamilton's forward speedup over ring and zigzag, its forward+backward speedup over zigzag, and its
    prediction, for one interconnect and problem."""
    ring = predict(interconnect, problem, "ring", rates, sharding="contiguous")  # the paper's Ring Attention
    zigzag, ham = (predict(interconnect, problem, a, rates) for a in ("zigzag", _hamilton(interconnect)))
    return {"fwd_vs_ring": ring.fwd_s / ham.fwd_s, "fwd_vs_zigzag": zigzag.fwd_s / ham.fwd_s,
            "fwdbwd_vs_zigzag": zigzag.fwd_bwd_s / ham.fwd_bwd_s, "zigzag": zigzag, "hamilton": ham}


def print_table(base: Problem, rates: ComputeRates) -> dict[str, list[dict]]:
    """Print one row per interconnect and sequence length; return the rows for plotting."""
    print(f"shape: batch {base.batch}, {base.heads} heads, {base.kv_heads} kv heads, head dim {base.head_dim}, "
          f"{base.dtype_bytes}-byte K/V, causal={base.causal}; fwd {rates.fwd_tflops:g} / bwd {rates.bwd_tflops:g} "
          f"TFLOP/s, {rates.call_overhead_us:g} us per kernel call, contention at {rates.contention_gbps:g} GB/s")
    head = (f"{'machine':<11}{'tokens':>8}{'tok/GPU':>8}{'zigzag fwd':>12}{'hamilton fwd':>13}"
            f"{'x ring':>8}{'x zigzag':>9}{'x zz f+b':>9}  bound (zigzag -> hamilton)")
    print(head)
    print("-" * len(head))
    rows: dict[str, list[dict]] = {}
    for net in TOPOLOGIES:
        for seq in SEQ_LENS:
            r = speedups(net, replace(base, seq_len=seq), rates)
            bound = " -> ".join("comm" if p.comm_bound else "compute" for p in (r["zigzag"], r["hamilton"]))
            print(f"{net.name:<11}{seq:>8}{seq // net.world_size:>8}{r['zigzag'].fwd_s * 1e3:>9.3f} ms"
                  f"{r['hamilton'].fwd_s * 1e3:>10.3f} ms{r['fwd_vs_ring']:>8.2f}{r['fwd_vs_zigzag']:>9.2f}"
                  f"{r['fwdbwd_vs_zigzag']:>9.2f}  {bound}")
            per_gpu = speedups(net, replace(base, seq_len=seq * net.world_size), rates)["fwd_vs_zigzag"]
            rows.setdefault(net.name, []).append({"seq": seq, "fwd_vs_zigzag_per_gpu": per_gpu, **r})
        print()
    return rows


def compare_with_paper(base: Problem, rates: ComputeRates) -> None:
    """Model vs the TASP paper's reported forward speedups, reading its token counts as global or per GPU."""
    def fwd_vs_zigzag(net: Interconnect, tokens: int, per_gpu: bool, r: ComputeRates = rates) -> float:
        seq = tokens * net.world_size if per_gpu else tokens
        return speedups(net, replace(base, seq_len=seq), r)["fwd_vs_zigzag"]

    print("paper vs model (forward speedup of Hamilton over zigzag ring)")
    print(f"{'claim':<44}{'paper':>8}{'model, global':>15}{'model, per GPU':>16}")
    for tokens, paper in ((10240, 2.4), (102400, 1.1)):
        print(f"{f'8x MI300X, {tokens // 1024}K tokens':<44}{paper:>7.2f}x"
              f"{fwd_vs_zigzag(MI300X_MESH, tokens, False):>14.2f}x{fwd_vs_zigzag(MI300X_MESH, tokens, True):>15.2f}x")
    for label, paper, net in (("8x H100, average over 4K..128K", "1.05", H100_NVSWITCH),
                               ("2x8 H100, average over 4K..128K", "1.2-1.43", h100_nodes(2))):
        avg = [sum(fwd_vs_zigzag(net, s, g) for s in SEQ_LENS) / len(SEQ_LENS) for g in (False, True)]
        print(f"{label:<44}{paper:>7}x{avg[0]:>14.2f}x{avg[1]:>15.2f}x")
    peak = [max(fwd_vs_zigzag(H100_NVSWITCH, s, g) for s in SEQ_LENS) for g in (False, True)]
    print(f"{'8x H100, maximum over 4K..128K':<44}{'2.3':>7}x{peak[0]:>14.2f}x{peak[1]:>15.2f}x")
    slow = replace(rates, fwd_tflops=400.0)
    what_if = ", ".join(f"{t // 1024}K -> {fwd_vs_zigzag(MI300X_MESH, t, False, slow):.2f}x / "
                        f"{fwd_vs_zigzag(MI300X_MESH, t, True, slow):.2f}x" for t in (10240, 102400))
    print(f"what-if, MI300X attention kernel at 400 TFLOP/s: {what_if} (global / per GPU)")


def plot(rows: dict[str, list[dict]], path: str) -> None:
    """Speedup curves per interconnect, with the paper's reported points and ranges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper = {"8x MI300X": {"points": [(10240, 2.4), (102400, 1.1)]},
             "8x H100": {"band": (1.05, 1.08), "points": [], "peak": 2.3},
             "2x8 H100": {"band": (1.2, 1.43), "points": []}}
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.6), sharey=True)
    for ax, (name, data) in zip(axes, rows.items(), strict=True):
        seqs = [d["seq"] for d in data]
        for key, label in (("fwd_vs_ring", "fwd vs ring"), ("fwd_vs_zigzag", "fwd vs zigzag"),
                           ("fwdbwd_vs_zigzag", "fwd+bwd vs zigzag")):
            ax.plot(seqs, [d[key] for d in data], marker="o", label=f"model: {label}")
        ax.plot(seqs, [d["fwd_vs_zigzag_per_gpu"] for d in data], linestyle="--", color="tab:orange",
                label="model: fwd vs zigzag, x read as tokens per GPU")
        ref = paper[name]
        if ref["points"]:
            ax.scatter(*zip(*ref["points"], strict=True), color="black", marker="*", s=120, zorder=5,
                       label="paper (fwd)")
        if "band" in ref:
            ax.axhspan(*ref["band"], color="grey", alpha=0.3, label="paper average (fwd)")
        if "peak" in ref:
            ax.axhline(ref["peak"], color="black", linestyle=":", label="paper maximum (fwd)")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("total sequence length (tokens)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("predicted speedup of Hamilton")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--png", default="docs/costmodel_speedup.png")
    args = parser.parse_args()
    base = Problem(seq_len=SEQ_LENS[0], heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim)
    # the paper's machines: kernel rates as measured on the H200, transfer contention left out (it was
    # measured for NCCL on H200s; nothing is known of it for RCCL on MI300X or the paper's runs)
    rates = ComputeRates(contention_gbps=math.inf)
    rows = print_table(base, rates)
    compare_with_paper(base, rates)
    plot(rows, args.png)


if __name__ == "__main__":
    main()
