"""``tasp bench``: the reference's ``prof_perform`` on this machine. Under torchrun it uses the launched
processes (NCCL on GPUs); without a launcher it starts ``--nproc`` local processes (gloo on CPU)."""

from __future__ import annotations

import argparse
import json
import os

from ..training.launch import launched, run_local

__all__ = ["add_bench_parser"]


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="time Hamilton against the ring baseline (the reference's prof_perform)")
    p.add_argument("--seqlen", type=int, default=8192, help="global sequence length")
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
    p.add_argument("--nproc", type=int, default=4, help="processes to start when not under a launcher")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.seqlen < 1 or args.iters < 1 or args.warmups < 0 or args.nproc < 1:
        raise ValueError("--seqlen, --iters and --nproc must be positive and --warmups >= 0")
    if launched():
        _worker(args)
    else:
        run_local(_worker, args.nproc, args)
    return 0


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from ..bench import prof_perform

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if gpus:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if gpus else "gloo")
    try:
        result = prof_perform(args.batch, args.seqlen, args.heads, args.head_dim, args.causal, args.two_nodes,
                              args.iters, args.warmups, local_rank, log_all=True, accuracy_test=args.accuracy,
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
