"""``tasp bench``: the reference's ``prof_perform`` on this machine. Under torchrun it uses the launched
processes (NCCL on GPUs); without a launcher it starts ``--nproc`` local processes (gloo on CPU)."""

from __future__ import annotations

import argparse
import json
import os

from ..training.args import check_seq_length, default_seq_length
from ..training.launch import DEVICES, launched, run_local

__all__ = ["add_bench_parser", "default_nproc"]

CPU_PROCESSES = 5  # K_5 has a Hamiltonian decomposition (4 cycles); 4 and 6 fall back to the zigzag ring
SEQLEN_BASE = 8192


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time Hamilton against the ring baseline (the reference's prof_perform)")
    p.add_argument("--seqlen", type=int, default=None,
                   help=f"global sequence length, a multiple of 2 x world size (default: {SEQLEN_BASE} rounded up "
                        "to one)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--two-nodes", action="store_true", help="multi-node (m-K_m-m)^u schedule (needs >= 2 nodes)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmups", type=int, default=3)
    p.add_argument("--accuracy", action="store_true", help="also compare outputs with full attention")
    p.add_argument("--profile-dir", default=None, help="write a PyTorch-profiler Chrome trace per rank here")
    p.add_argument("--json", default=None, help="write rank 0's result dict to this file")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes to start when not under a launcher (default: one per GPU, or "
                        f"{CPU_PROCESSES} CPU processes without CUDA: K_{CPU_PROCESSES} runs flat Hamilton, while "
                        "4 and 6 processes fall back to zigzag)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: one GPU per process when CUDA is available (NCCL), else the CPU (gloo)")
    p.set_defaults(func=_bench)


def default_nproc(device: str) -> int:
    """``--nproc`` when not given: every visible GPU (``device`` auto or cuda, CUDA available), else
    ``CPU_PROCESSES``."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return CPU_PROCESSES


def _bench(args: argparse.Namespace) -> int:
    """Check every setting here, before any process starts (errors: one line, exit code 2)."""
    from ..training.launch import gpus_for_local_ranks

    if launched():
        world, per_node = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    else:
        world = per_node = args.nproc if args.nproc is not None else default_nproc(args.device)
    if args.iters < 1 or args.warmups < 0 or world < 1:
        raise ValueError("--iters and --nproc must be positive and --warmups >= 0")
    if args.seqlen is None:
        args.seqlen = default_seq_length(SEQLEN_BASE, world)
    check_seq_length(args.seqlen, world, "--seqlen", "world size")
    if args.kv_heads is not None and (args.kv_heads < 1 or args.heads % args.kv_heads):
        raise ValueError(f"--kv-heads {args.kv_heads} must divide --heads {args.heads}")
    gpus_for_local_ranks(args.device, per_node)
    if launched():
        _worker(args)
    else:
        run_local(_worker, world, args)
    return 0


def _worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ..bench import prof_perform
    from ..training.launch import init_process_group, local_device

    device = local_device(args.device)  # before any collective: NCCL binds the current GPU
    init_process_group(device)
    try:
        result = prof_perform(args.batch, args.seqlen, args.heads, args.head_dim, args.causal, args.two_nodes,
                              args.iters, args.warmups, device.index or 0, log_all=True, accuracy_test=args.accuracy,
                              torch_profile=args.profile_dir is not None, trace_dir=args.profile_dir,
                              kv_heads=args.kv_heads)
        if dist.get_rank() == 0:
            _report(result, args.json)
    finally:
        dist.destroy_process_group()


def _report(result: dict, path: str | None) -> None:
    from ..bench.harness import mean_timings

    print(f"{'schedule':<28} {'total ms':>10} {'comm ms':>10} {'comp ms':>10}")
    for entry in result.values():
        mean = mean_timings(entry["data"])
        print(f"{entry['name']:<28} {mean['total_time']:>10.3f} {mean['comm_total_time']:>10.3f} "
              f"{mean['comp_total_time']:>10.3f}" + (f"   cos {entry['accuracy']['cosine_similarity']:.6f}"
                                                     if "accuracy" in entry else ""))
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
