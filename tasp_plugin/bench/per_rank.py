"""Per-rank compute efficiency: one rank's full step sequence of ring, zigzag or Hamilton attention run
alone on one device (``LoopbackGroup``, transfers assumed overlapped), against the ideal = one
monolithic kernel call over the whole sequence divided by the number of ranks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..comm import LoopbackGroup
from ..engine import EngineConfig, run_backward, run_forward
from ..kernels import BlockKernel, get_kernel, varlen_backward, varlen_forward
from ..planning import Algorithm, PackedLayout, Sharding, Topology, parse_choice, resolve

__all__ = ["KernelClock", "PerRankResult", "attention_flops", "monolithic_seconds", "per_rank_seconds"]

_T = TypeVar("_T")


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool,
                    backward: bool) -> float:
    """Matmul FLOPs of attention (forward 4·B·H·Lq·Lk·D, halved when causal; backward 2.5x forward)."""
    fwd = 4.0 * batch * heads * q_len * k_len * head_dim * (0.5 if causal else 1.0)
    return fwd * (3.5 if backward else 1.0)


class KernelClock:
    """A ``BlockKernel`` wrapper that records CUDA events around every kernel call, so the time outside
    kernels (merges, copies, launches) can be told apart."""

    def __init__(self, inner: BlockKernel) -> None:
        self.inner, self.name = inner, inner.name
        self.spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def _timed(self, fn: Callable[..., _T], *args: Any) -> _T:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn(*args)
        end.record()
        self.spans.append((start, end))
        return result

    def forward(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``inner.forward`` (same arguments), timed."""
        return self._timed(self.inner.forward, *args)

    def backward(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``inner.backward`` (same arguments), timed."""
        return self._timed(self.inner.backward, *args)

    def seconds(self) -> float:
        """Seconds spent inside the recorded kernel calls."""
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.spans) / 1e3


def _time(fn: Callable[[], object], reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def monolithic_seconds(total: int, heads: int, kv_heads: int, head_dim: int, causal: bool, backward: bool,
                       backend: str = "auto", dtype: torch.dtype = torch.bfloat16, reps: int = 3,
                       documents: int = 1) -> float:
    """One kernel call (forward, or forward + backward) over ``total`` tokens on the current GPU;
    ``documents > 1``: as that many equal packed documents, one varlen call (what the packed path runs)."""
    kernel = get_kernel(backend, torch.device("cuda"), dtype, head_dim)
    q = torch.randn(1, heads, total, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, kv_heads, total, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    scale = head_dim ** -0.5
    cu = tuple(i * total // documents for i in range(documents + 1))

    def call() -> None:
        if documents > 1:
            out, lse = varlen_forward(kernel, q, k, v, cu, cu, causal, scale)
            if backward:
                varlen_backward(kernel, torch.ones_like(out), q, k, v, out, lse, cu, cu, causal, scale)
            return
        out, lse = kernel.forward(q, k, v, causal, scale)
        if backward:
            kernel.backward(torch.ones_like(out), q, k, v, out, lse, causal, scale)

    return _time(call, reps)


@dataclass(frozen=True)
class PerRankResult:
    """Seconds of one rank's full step sequence, and the part inside kernel calls."""

    seconds: float
    kernel_seconds: float


def per_rank_seconds(algorithm: Algorithm | str, n: int, local: int, heads: int, kv_heads: int, head_dim: int,
                     causal: bool, backward: bool, backend: str = "auto", dtype: torch.dtype = torch.bfloat16,
                     reps: int = 2, sharding: Sharding | str = Sharding.ZIGZAG, documents: int = 1) -> PerRankResult:
    """One rank's forward (or forward + backward) through the engine with ``local`` tokens per rank, on
    one node. On contiguous sharding (the paper's ring baseline) the busiest rank, n - 1, is timed; zigzag
    sharding is balanced, so rank 0 stands for all. ``documents > 1``: the tokens are that many packed
    documents of equal length (varlen calls; their kernel time is not separated from the rest)."""
    split = parse_choice(Sharding, sharding, "sharding")
    rank = n - 1 if split is Sharding.CONTIGUOUS else 0
    if documents > 1 and (local // 2) % documents:
        raise ValueError(f"{documents} documents must split each half of {local} local tokens evenly")
    packed = PackedLayout(((local // 2) // documents,) * documents) if documents > 1 else None
    schedule = resolve(algorithm, Topology.uniform(1, n)).schedule
    kernel = get_kernel(backend, torch.device("cuda"), dtype, head_dim)
    q = torch.randn(1, heads, local, head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(1, kv_heads, local, head_dim, device="cuda", dtype=dtype) for _ in range(2))
    dout = torch.randn_like(q)

    def call(kern: BlockKernel) -> None:
        cfg = EngineConfig.create(schedule=schedule, comm=LoopbackGroup(n, rank, deliver=False), kernel=kern,
                                  head_dim=head_dim, causal=causal, sharding=split, packed=packed)
        out, lse = run_forward(cfg, q, k, v)
        if backward:
            run_backward(cfg, dout, q, k, v, out.to(dtype), lse)

    seconds = _time(lambda: call(kernel), reps)
    clock = KernelClock(kernel)
    call(clock)  # one more pass with events around each kernel call, for the share outside kernels
    return PerRankResult(seconds, clock.seconds())
