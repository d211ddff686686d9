"""Turn a results.json of benchmarks/engine_gpu.py into the markdown tables of docs/BENCHMARKS.md.

    python benchmarks/to_markdown.py docs/bench/engine_gpu_h200.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        res = json.load(fh)
    print(f"Device: {res['device']}, torch {res['torch']}.\n")
    print("| backend | KV heads | causal | forward TFLOP/s | forward+backward TFLOP/s |")
    print("|---|---|---|---|---|")
    for r in res["backends"]:
        cells = [f"{r[p]:.0f}" if isinstance(r[p], float) else r[p] for p in ("fwd", "fwd_bwd")]
        print(f"| {r['backend']} | {r['kv_heads']} | {r['causal']} | {cells[0]} | {cells[1]} |")
    print("\n| algorithm | n | tokens/GPU | KV heads | causal | fwd % of ideal | fwd+bwd % of ideal | "
          "fwd outside kernels | fwd+bwd outside kernels |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["per_rank"]:
        f, b = r["fwd"], r["fwd_bwd"]
        print(f"| {r['algorithm']} | {r['n']} | {r['tokens_per_gpu'] // 1024}K | {r['kv_heads']} | {r['causal']} | "
              f"{100 * f['efficiency']:.1f} | {100 * b['efficiency']:.1f} | {100 * f['outside_kernels']:.1f}% | "
              f"{100 * b['outside_kernels']:.1f}% |")
    if res["skipped"]:
        print(f"\nNot run (time budget of the call): {res['skipped']}")


if __name__ == "__main__":
    main(sys.argv[1])
