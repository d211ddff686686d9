"""Megatron-LM's own training loop with TASP attention on this machine's GPUs: one GPT trained with
``--cp-comm-type hamilton`` and ``zigzag`` at CP = 2 (two GPUs) and without context parallelism (CP = 1, one
GPU), same data, seed and settings (dropout off, so the curves are comparable); then the Hamilton run is
continued from its checkpoint. Per-iteration loss and time come from Megatron's own log; results go to JSON,
a markdown table and a loss plot, rewritten after every run.

    python benchmarks/megatron_lm_gpu.py --out results/megatron_lm [--iters 100] [--seq-length 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "megatron", "pretrain_gpt_megatron_lm.py")
# Megatron's per-iteration log line (printed by the last rank)
LOG_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?elapsed time per iteration \(ms\): ([\d.]+) \|"
                      r"(?: throughput per GPU \(TFLOP/s/GPU\): ([\d.]+) \|)?.*?lm loss: ([-+\d.Ee]+) \|")
# name: (GPUs, cp_comm_type); "a2a" is the head x sequence hybrid (Ulysses over both GPUs)
RUNS = {"hamilton": (2, "hamilton"), "zigzag": (2, "zigzag"), "a2a": (2, "a2a"), "cp1": (1, "p2p")}


def model_flags(seq_length: int, iters: int, global_batch: int, decay_iters: int, shape: tuple[int, int, int]
                ) -> list[str]:
    """Megatron-LM flags shared by every run (the documented command line, dropout off) for a model of
    ``shape`` = (layers, hidden size, heads); the learning rate decays over ``decay_iters``, which a continued
    run keeps (Megatron refuses a changed schedule)."""
    layers, hidden, heads = shape
    return ("--attention-dropout 0 --hidden-dropout 0 --spec tasp_plugin.integrations.megatron "
            "tasp_gpt_layer_spec --transformer-impl local --no-persist-layer-norm --no-gradient-accumulation-fusion "
            "--mock-data --no-create-attention-mask-in-dataloader --tokenizer-type NullTokenizer --vocab-size 4096 "
            f"--num-layers {layers} --hidden-size {hidden} --num-attention-heads {heads} "
            "--micro-batch-size 1 --bf16 --lr 3e-4 --min-lr 3e-5 "
            "--lr-decay-style cosine --log-interval 1 --log-throughput --eval-iters 0 --eval-interval 1000 "
            "--seed 1234 "
            f"--seq-length {seq_length} --max-position-embeddings {seq_length} --train-iters {iters} "
            f"--global-batch-size {global_batch} --lr-decay-iters {decay_iters}").split()


def command(name: str, seq_length: int, iters: int, global_batch: int, decay_iters: int | None = None,
            shape: tuple[int, int, int] = (4, 1024, 16)) -> tuple[int, list[str]]:
    """(GPUs, the example's arguments) of one run."""
    gpus, cp_comm_type = RUNS[name]
    flags = model_flags(seq_length, iters, global_batch, decay_iters or iters, shape)
    return gpus, [*flags, "--context-parallel-size", str(gpus),
                  "--cp-comm-type", cp_comm_type]


def parse_log(text: str) -> list[dict[str, float]]:
    """One record per logged iteration: iteration, ms (Megatron's elapsed time per iteration), loss, and
    Megatron's TFLOP/s per GPU where it logs them (``--log-throughput``)."""
    records = []
    for m in LOG_LINE.finditer(text):
        record = {"iteration": int(m.group(1)), "ms": float(m.group(2)), "loss": float(m.group(4))}
        if m.group(3) is not None:
            record["tflops_per_gpu"] = float(m.group(3))
        records.append(record)
    return records


def summarize(records: list[dict[str, float]], tokens_per_iteration: int, warmup: int) -> dict[str, float]:
    """Final loss and steady tokens/s (median iteration time after ``warmup`` iterations)."""
    steady = [r["ms"] for r in records if r["iteration"] > warmup] or [r["ms"] for r in records]
    ms = statistics.median(steady)
    return {"iterations": len(records), "first_loss": records[0]["loss"], "final_loss": records[-1]["loss"],
            "median_ms": ms, "tokens_per_s": tokens_per_iteration / ms * 1e3}


def launch(gpus: int, words: list[str], log_path: str, timeout: float) -> str:
    """Run the example under torchrun; returns its output (also written to ``log_path``)."""
    env = {**os.environ, "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus), EXAMPLE, *words]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    with open(log_path, "w", encoding="utf-8") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def write(out: str, results: dict) -> None:
    """JSON, markdown table and loss plot of the runs so far."""
    with open(os.path.join(out, "megatron_lm.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    runs = results["runs"]
    base = {r["iteration"]: r["loss"] for r in runs.get("cp1", {}).get("records", [])}
    lines = ["| run | GPUs | iterations | loss first -> final | max abs loss diff to CP 1 | median ms/iter | "
             "tokens/s |", "|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        diffs = [abs(r["loss"] - base[r["iteration"]]) for r in run["records"] if r["iteration"] in base]
        diff = f"{max(diffs):.4f}" if diffs and name != "cp1" else "-"
        s = run["summary"]
        lines.append(f"| {name} | {run['gpus']} | {s['iterations']} | {s['first_loss']:.4f} -> {s['final_loss']:.4f} "
                     f"| {diff} | {s['median_ms']:.1f} | {s['tokens_per_s']:,.0f} |")
    with open(os.path.join(out, "megatron_lm.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        ax.plot([r["iteration"] for r in run["records"]], [r["loss"] for r in run["records"]], label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("lm loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "megatron_lm_loss.png"), dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/megatron_lm")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--resume-iters", type=int, default=20, help="iterations added when continuing the checkpoint")
    p.add_argument("--seq-length", type=int, default=16384)
    p.add_argument("--global-batch-size", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=[4, 1024, 16], metavar=("LAYERS", "HIDDEN", "HEADS"))
    p.add_argument("--warmup", type=int, default=10, help="iterations left out of the tokens/s median")
    p.add_argument("--timeout", type=float, default=240, help="seconds per run")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="skip continuing the checkpoint")
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default: all)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tokens = args.seq_length * args.global_batch_size
    shape = tuple(args.shape)
    results: dict = {"seq_length": args.seq_length, "global_batch_size": args.global_batch_size,
                     "layers_hidden_heads": shape, "runs": {}}
    checkpoint = os.path.join(args.out, "ckpt_hamilton")
    for name in args.runs:
        gpus, words = command(name, args.seq_length, args.iters, args.global_batch_size, shape=shape)
        if name == "hamilton" and args.resume:
            words += ["--save", checkpoint, "--save-interval", str(args.iters)]
        records = parse_log(launch(gpus, words, os.path.join(args.out, f"{name}.log"), args.timeout))
        results["runs"][name] = {"gpus": gpus, "args": words, "records": records,
                                 "summary": summarize(records, tokens, args.warmup)}
        write(args.out, results)
        print(f"{name:9} {results['runs'][name]['summary']}", flush=True)
    if not args.resume or "hamilton" not in args.runs:
        return
    gpus, words = command("hamilton", args.seq_length, args.iters + args.resume_iters, args.global_batch_size,
                          decay_iters=args.iters, shape=shape)
    words += ["--load", checkpoint, "--save", checkpoint, "--save-interval", str(args.iters + args.resume_iters),
              "--use-checkpoint-opt-param-scheduler"]  # a longer run keeps the checkpoint's schedule
    text = launch(gpus, words, os.path.join(args.out, "hamilton_resume.log"), args.timeout)
    records = parse_log(text)
    results["resume"] = {"records": records, "first_iteration": records[0]["iteration"] if records else None}
    write(args.out, results)
    print(f"resume    continued at iteration {results['resume']['first_iteration']}, "
          f"{len(records)} iterations, final loss {records[-1]['loss'] if records else None}", flush=True)


if __name__ == "__main__":
    main()
