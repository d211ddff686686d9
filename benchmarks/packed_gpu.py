"""Packed documents against one long sequence, per rank, on one GPU (issue 16): one rank's full step
sequence of ``n`` ranks (transfers assumed to overlap, as in docs/BENCHMARKS.md) with ``--local`` tokens per
GPU, as one document and as ``--documents`` equal packed documents. Efficiency = ideal / measured, the
ideal being one call over the whole (packed) sequence on one GPU divided by ``n``: cuDNN for one document,
the flash varlen op for packed ones (the kernel the packed path runs).

    python benchmarks/packed_gpu.py --out results/packed [--local 32768] [--n 8] [--documents 8]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from tasp_plugin.bench import attention_flops, monolithic_seconds, per_rank_seconds

HEADS, HEAD_DIM = 32, 128


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/packed")
    p.add_argument("--local", type=int, default=32768)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--documents", type=int, default=8)
    args = p.parse_args()
    rows = []
    total = args.n * args.local
    for kv in (HEADS, 8):
        for algorithm in ("zigzag", "hamilton"):
            for phase, backward in (("fwd", False), ("fwd+bwd", True)):
                row = {"algorithm": algorithm, "kv_heads": kv, "phase": phase, "n": args.n, "local": args.local,
                       "documents": args.documents}
                for docs in (1, args.documents):
                    got = per_rank_seconds(algorithm, args.n, args.local, HEADS, kv, HEAD_DIM, True, backward,
                                           documents=docs).seconds
                    ideal = monolithic_seconds(total, HEADS, kv, HEAD_DIM, True, backward, documents=docs) / args.n
                    flops = attention_flops(1, HEADS, total // docs, total // docs, HEAD_DIM, True, backward) * docs
                    row[f"docs{docs}"] = {"ms": 1e3 * got, "ideal_ms": 1e3 * ideal, "efficiency": ideal / got,
                                          "tflops_per_gpu": flops / args.n / got / 1e12}
                row["packed_over_unpacked"] = row[f"docs{args.documents}"]["efficiency"] / row["docs1"]["efficiency"]
                rows.append(row)
                print(f"{algorithm:9} kv={kv:<3} {phase:8} one document {row['docs1']['efficiency']:6.1%}   "
                      f"{args.documents} documents {row[f'docs{args.documents}']['efficiency']:6.1%}   "
                      f"ratio {row['packed_over_unpacked']:.3f}", flush=True)
                os.makedirs(args.out, exist_ok=True)  # written after every row: a cut-short run keeps its rows
                with open(os.path.join(args.out, "packed.json"), "w", encoding="utf-8") as fh:
                    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, fh,
                              indent=1)


if __name__ == "__main__":
    main()
