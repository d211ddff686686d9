"""The cost model beside what ``benchmarks/peers.py`` measured: for every tasp row of a peers.json, the
predicted time (``costmodel.predict`` with the measured H200 rates and the machine's interconnect preset)
and the measured one, and which algorithm ``choose_algorithm`` (what ``algorithm="auto"`` asks) picks
against the measured fastest.

    python benchmarks/model_vs_measured.py docs/bench/peers_h200x2.json [--machine h200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasp_plugin.costmodel import ComputeRates, Problem, choose_algorithm, interconnect_for, predict


def compare(data: dict, machine: str) -> list[dict]:
    """One row per measured tasp cell and algorithm: measured and predicted milliseconds, and auto's pick."""
    meta = data["meta"]
    n = meta["world_size"]
    rates = ComputeRates()
    interconnect = interconnect_for(1, n, machine)
    rows = []
    for r in data["rows"]:
        words = r["method"].split()
        if words[0] != "tasp" or "seconds" not in r or words[2] != "p2p":
            continue
        problem = Problem(seq_len=n * r["tokens_per_gpu"], heads=meta["heads"], kv_heads=r["kv_heads"],
                          head_dim=meta["head_dim"], causal=meta["causal"])
        backward = r["phase"] == "fwd+bwd"
        p = predict(interconnect, problem, "hamilton_flat" if words[1] == "hamilton" else words[1], rates)
        choice = choose_algorithm(interconnect, problem, rates, backward=backward)
        rows.append({"tokens_per_gpu": r["tokens_per_gpu"], "kv_heads": r["kv_heads"], "phase": r["phase"],
                     "algorithm": words[1], "measured_ms": 1e3 * r["seconds"],
                     "predicted_ms": 1e3 * (p.fwd_bwd_s if backward else p.fwd_s),
                     "auto_picks": choice.algorithm.value})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peers_json", type=Path)
    parser.add_argument("--machine", default="h200", help="interconnect preset (costmodel.MACHINES)")
    args = parser.parse_args()
    rows = compare(json.loads(args.peers_json.read_text()), args.machine)
    print("| tokens/GPU | KV heads | phase | algorithm | measured ms | predicted ms | predicted/measured "
          "| auto picks |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens_per_gpu'] // 1024}K | {r['kv_heads']} | {r['phase']} | {r['algorithm']} | "
              f"{r['measured_ms']:.2f} | {r['predicted_ms']:.2f} | {r['predicted_ms'] / r['measured_ms']:.2f} | "
              f"{r['auto_picks']} |")


if __name__ == "__main__":
    main()
