"""The reference's benchmark harness, ``prof_perform``, over our engine: per-iteration total,
communication and computation time of Hamilton attention and of the ring / zigzag ring baseline on the
running process group (launch with torchrun, or ``tasp bench``)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from ..comm import ProcessGroupCommunicator
from ..engine import EngineConfig, StepTimer, run_forward
from ..kernels import expand_kv_heads, get_kernel
from ..planning import Algorithm, Sharding, Topology, resolve
from ..schedules import RingSchedule
from ..sharding import shard_sequence
from ..topology import detect_topology

__all__ = ["mean_timings", "prof_perform"]


def _schedules(two_nodes: bool, group: dist.ProcessGroup | None) -> dict[str, tuple[str, RingSchedule]]:
    n = dist.get_world_size(group)
    if two_nodes:
        topo = detect_topology(group)
        res = resolve(Algorithm.HAMILTON_MULTINODE, topo)
        name = f"({topo.gpus_per_node}-K{topo.gpus_per_node}-{topo.gpus_per_node})^{topo.num_nodes}-hamilton"
    else:
        res = resolve(Algorithm.HAMILTON, Topology.uniform(1, n))
        name = f"K{n}-hamilton" if res.algorithm is Algorithm.HAMILTON_FLAT else f"K{n}-zigzag-fallback"
    ring = resolve(Algorithm.RING, Topology.uniform(1, n)).schedule
    return {"hamilton": (name, res.schedule), "ring": ("ring", ring)}


def prof_perform(bs: int, seqlen: int, nheads: int, d: int, causal: bool, two_nodes: bool, test_nums: int,
                 warm_ups: int, local_rank: int, log_all: bool = False, *, accuracy_test: bool = False,
                 torch_profile: bool = False, trace_dir: str | None = None, kv_heads: int | None = None,
                 dtype: torch.dtype = torch.bfloat16, group: dist.ProcessGroup | None = None) -> dict:
    """Time ``test_nums`` forward calls (after ``warm_ups``) of Hamilton and of the ring baseline (zigzag
    shards when causal) for a global ``seqlen``; ``d`` is honoured as given. Returns
    ``{"hamilton": {...}, "ring": {...}}`` with per-iteration ``total_time``, ``comm_total_time`` and
    ``comp_total_time`` in ms. ``accuracy_test`` adds the cosine similarity and max error of each output
    against single-device attention over the full sequence; ``torch_profile`` writes a Chrome trace per
    rank and configuration to ``trace_dir`` (default: the current directory)."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    if seqlen % (2 * n):
        raise ValueError(f"seqlen {seqlen} must be divisible by 2 * world_size = {2 * n}")
    # the group's backend decides: NCCL moves CUDA tensors, gloo (even on a GPU machine) CPU tensors
    on_gpu = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if device.type == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float32
    kv_heads = kv_heads or nheads
    gen = torch.Generator().manual_seed(2024)  # the same global tensors on every rank
    full = [torch.randn(bs, nheads if i == 0 else kv_heads, seqlen, d, generator=gen) for i in range(3)]
    local = [shard_sequence(x, rank, n, 2).to(device, dtype) for x in full]
    kernel = get_kernel("auto", device, dtype, d)
    results = {}
    for key, (name, schedule) in _schedules(two_nodes, group).items():
        comm = ProcessGroupCommunicator(group)
        data: list[dict[str, float]] = []
        out: torch.Tensor | None = None
        profiler = _profiler(torch_profile, device)
        with profiler:
            for it in range(warm_ups + test_nums):
                timer = StepTimer(device)
                cfg = EngineConfig.create(schedule=schedule, comm=comm, kernel=kernel, head_dim=d, causal=causal,
                                          sharding=Sharding.ZIGZAG, hook=timer)
                out, _ = run_forward(cfg, *local)
                if it >= warm_ups:
                    data.append(timer.summary())
        if torch_profile:
            path = os.path.join(trace_dir or ".", f"trace_{name}_{seqlen}_{'causal' if causal else 'full'}_{rank}.json")
            profiler.export_chrome_trace(path)
        results[key] = {"name": name, "batch_size": bs, "seqlen": seqlen, "nheads": nheads, "d": d, "causal": causal,
                        "two_nodes": two_nodes, "test_nums": test_nums, "warm_ups": warm_ups, "data": data}
        if accuracy_test:
            if out is None:
                raise ValueError("accuracy_test needs at least one iteration (warm_ups + test_nums >= 1)")
            results[key]["accuracy"] = _accuracy(out, full, rank, n, causal, d, device)
        if log_all and rank == 0:
            mean = mean_timings(data)
            print(f"[{name}] bs={bs} seqlen={seqlen} heads={nheads} d={d} causal={causal}: "
                  + ", ".join(f"{k} {v:.3f} ms" for k, v in mean.items()), flush=True)
    return results


def mean_timings(data: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of ``prof_perform``'s per-iteration timing dicts."""
    return {k: sum(x[k] for x in data) / len(data) for k in data[0]}


def _profiler(on: bool, device: torch.device):
    if not on:
        return contextlib.nullcontext()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def _accuracy(out: torch.Tensor, full: list[torch.Tensor], rank: int, n: int, causal: bool, d: int,
              device: torch.device) -> dict:
    q, k, v = (x.to(device, torch.float32) for x in full)
    k, v = (expand_kv_heads(x, q.shape[1] // x.shape[1]) for x in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=d ** -0.5)
    mine = shard_sequence(ref, rank, n, 2)
    got = out.float()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), mine.flatten(), dim=0).item()
    return {"cosine_similarity": cos, "max_abs_error": (got - mine).abs().max().item()}
