"""Run the engine for all ranks of a CP group as threads of this process (``ThreadGroup``), on one
device: the one-GPU emulation of the distributed matrix, and a cheap CPU check of the same."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from tasp_plugin.comm import ThreadGroup
from tasp_plugin.engine import EngineConfig, run_backward, run_forward
from tasp_plugin.kernels import get_kernel
from tasp_plugin.planning import Topology, resolve
from tasp_plugin.sharding import shard_sequence

from .reference import reference_attention


def emulated_errors(n: int, algorithm: str, causal: bool, kv_heads: int, dtype: torch.dtype, seq: int,
                    device: str = "cpu", backend: str = "auto", heads: int = 4, head_dim: int = 16,
                    topology: str | None = None) -> dict:
    """Largest error relative to the reference's magnitude of out, lse, dq, dk, dv over all ranks
    (``topology`` such as ``"2x4"`` lays the threads out on emulated nodes)."""
    torch.manual_seed(4321)
    b, scale = 2, head_dim ** -0.5
    q, k, v = (torch.randn(b, seq, hh, head_dim, dtype=torch.float64, requires_grad=True)
               for hh in (heads, kv_heads, kv_heads))
    dout = torch.randn(b, seq, heads, head_dim, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, scale)
    (ref_out * dout).sum().backward()
    groups = ThreadGroup.create(n)
    topology = Topology.parse(topology) if topology else Topology.uniform(1, n)
    kernel = get_kernel(backend, torch.device(device), dtype, head_dim)

    def bhsd(x, rank):
        return shard_sequence(x.detach(), rank, n, 1).transpose(1, 2).to(device, dtype).contiguous()

    schedule = resolve(algorithm, topology).schedule

    def rank_errors(rank):
        cfg = EngineConfig.create(schedule=schedule, comm=groups[rank], kernel=kernel, head_dim=head_dim, causal=causal,
                                  softmax_scale=scale)
        lq, lk, lv = (bhsd(x, rank) for x in (q, k, v))
        out, lse = run_forward(cfg, lq, lk, lv)
        out = out.to(dtype)
        grads = run_backward(cfg, bhsd(dout, rank), lq, lk, lv, out, lse)
        refs = [bhsd(ref_out, rank), shard_sequence(ref_lse, rank, n, 2)] + [bhsd(x.grad, rank) for x in (q, k, v)]
        return {name: ((a.double().cpu() - r.double().cpu()).abs().max() / r.double().abs().max()).item()
                for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), refs, strict=True)}

    with ThreadPoolExecutor(n) as pool:
        per_rank = list(pool.map(rank_errors, range(n)))
    return {name: max(e[name] for e in per_rank) for name in per_rank[0]}
