"""Run a function on N gloo CPU processes and collect what each rank returns (judged per rank, not by the
exit code alone)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasp_plugin.training.launch import free_port


def rank_main(rank: int, world: int, port: int, outdir: str, backend: str, fn, args) -> None:
    """One rank: join the group, run ``fn(rank, world, *args)`` and save what it returns to ``outdir``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world: int, *args, backend: str = "gloo") -> list:
    """``fn(rank, world, *args)`` on ``world`` processes (gloo on CPU, or NCCL with one GPU per rank);
    returns the per-rank results in rank order."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(rank_main, args=(world, free_port(), outdir, backend, fn, args), nprocs=world, join=True)
        results = []
        for r in range(world):
            path = os.path.join(outdir, f"rank{r}.pt")
            assert os.path.exists(path), f"rank {r} reported no result"
            results.append(torch.load(path, weights_only=False))
        return results
