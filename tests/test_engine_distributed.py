"""The engine against single-process attention on the full sequence: out, LSE, dq, dk, dv for every
algorithm, causal and not, MHA and GQA, float64 (tight) and bf16 (realistic), world sizes 1 to 8."""

import itertools
import warnings

import pytest
import torch
import torch.distributed as dist

from tasp_plugin.api import context_parallel_attention
from tasp_plugin.comm import as_communicator
from tasp_plugin.engine import EngineConfig, RingAttentionFunction
from tasp_plugin.kernels import MathKernel
from tasp_plugin.planning import Topology, resolve
from tasp_plugin.schedules import RingSchedule
from tasp_plugin.sharding import shard_sequence

from .distributed import run_distributed
from .reference import reference_attention

TOL = {torch.float64: 1e-10, torch.float32: 2e-3, torch.bfloat16: 3e-2}


def _case(rank, n, algorithm, causal, kv_heads, dtype, seq, device="cpu"):
    torch.manual_seed(1234)
    b, h, d = 2, 4, 16
    q, k, v = (torch.randn(b, seq, hh, d, dtype=torch.float64, requires_grad=True) for hh in (h, kv_heads, kv_heads))
    dout = torch.randn(b, seq, h, d, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, d ** -0.5)
    (ref_out * dout).sum().backward()

    def local(x, dim=1):
        return shard_sequence(x.detach(), rank, n, dim)

    lq, lk, lv = (local(x).to(device, dtype).requires_grad_(True) for x in (q, k, v))
    out, lse = context_parallel_attention(lq, lk, lv, algorithm=algorithm, causal=causal, return_lse=True)
    (out.double() * local(dout).to(device)).sum().backward()
    pairs = {"out": (out, local(ref_out)), "lse": (lse, local(ref_lse, 2)), "dq": (lq.grad, local(q.grad)),
             "dk": (lk.grad, local(k.grad)), "dv": (lv.grad, local(v.grad))}
    # error relative to the reference's magnitude, so one tolerance serves every quantity
    return {name: ((a.double().cpu() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
            for name, (a, r) in pairs.items()}


def _contiguous_case(rank, n, algorithm, causal):
    """Contiguous shards (rank r holds block r) through the engine directly: the seed ring API's layout."""
    torch.manual_seed(99)
    b, h, d, seq = 1, 2, 8, 4 * n
    q, k, v = (torch.randn(b, seq, h, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref_out, ref_lse = reference_attention(q, k, v, causal, 0.5)
    ref_out.sum().backward()
    sched = RingSchedule.ring(n) if algorithm == "ring" else resolve("hamilton", Topology.uniform(1, n)).schedule
    cfg = EngineConfig.create(schedule=sched, comm=as_communicator(None), kernel=MathKernel(), head_dim=d,
                              causal=causal, sharding="contiguous", softmax_scale=0.5)
    lq, lk, lv = (x.detach().chunk(n, dim=1)[rank].transpose(1, 2).contiguous().requires_grad_(True)
                  for x in (q, k, v))
    out, lse = RingAttentionFunction.apply(lq, lk, lv, cfg)
    out.sum().backward()
    refs = [ref_out.chunk(n, 1)[rank].transpose(1, 2), ref_lse.chunk(n, 2)[rank]] + [
        x.grad.chunk(n, 1)[rank].transpose(1, 2) for x in (q, k, v)]
    return {name: (a.double() - r).abs().max().item()
            for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, lq.grad, lk.grad, lv.grad), refs,
                                  strict=True)}


def _matrix(rank, n, device="cpu", dtypes=(torch.float64, torch.bfloat16)):
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for algorithm, causal, kv_heads, dtype in itertools.product(
                ("ring", "zigzag", "hamilton", "auto"), (True, False), (4, 2), dtypes):
            # 3 rows per half: with n - 1 > 3 cycles some sub-chunks are empty, all are uneven
            seq = 2 * n * (3 if dtype == torch.float64 else 8)
            results[(algorithm, causal, kv_heads, str(dtype))] = _case(rank, n, algorithm, causal, kv_heads, dtype,
                                                                       seq, device)
        for algorithm, causal in itertools.product(("ring", "hamilton"), (True, False) if device == "cpu" else ()):
            results[("contiguous-" + algorithm, causal, 2, "torch.float64")] = _contiguous_case(rank, n, algorithm,
                                                                                                causal)
    results["warnings"] = [str(w.message) for w in caught if "falling back" in str(w.message)]
    dist.barrier()
    return results


def _check(n, per_rank):
    for rank, res in enumerate(per_rank):
        warned = res.pop("warnings")
        assert len(warned) == (1 if n in (4, 6) else 0), warned
        for (algorithm, causal, kv, dtype), errs in res.items():
            tol = TOL[getattr(torch, dtype.split(".")[1])]
            bad = {k: e for k, e in errs.items() if not e <= tol}
            assert not bad, f"n={n} rank={rank} {algorithm} causal={causal} kv_heads={kv} {dtype}: {bad}"


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8])
def test_engine_matches_full_attention(n):
    _check(n, run_distributed(_matrix, n))


@pytest.mark.gpu(2)
@pytest.mark.distributed
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_engine_on_gpus_with_nccl(n):
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs")
    _check(n, run_distributed(_matrix, n, "cuda", (torch.float32, torch.bfloat16), backend="nccl"))
