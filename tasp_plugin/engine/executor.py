"""The one executor: any `RingSchedule`, forward and backward, as a `torch.autograd.Function`.

Shapes inside are ``[batch, heads, seq, head_dim]`` (local shard). Chunk ``j`` of the local K/V travels
on cycle ``j``; dQ accumulates locally; dK/dV accumulators (fp32) travel with their chunks and one last
hop after the final step brings each home.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..comm import EmulatedGroup, RingExchange
from ..kernels import BlockKernel, merge_into
from ..schedules import RingSchedule
from ..topology import CPGroups
from .blocks import LAYOUTS, StepPlan, plan_step, sub_chunk_lengths
from .timing import StepHook

__all__ = ["RingAttentionFunction", "EngineConfig", "run_backward", "run_forward"]


@dataclass(frozen=True)
class EngineConfig:
    """Everything the executor needs besides the tensors."""

    schedule: RingSchedule
    group: dist.ProcessGroup | EmulatedGroup | None
    rank: int
    causal: bool
    layout: str
    scale: float
    kernel: BlockKernel
    hook: StepHook | None = None
    links: CPGroups | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS}")

    def plan(self, step: int, lengths: list[int]) -> StepPlan:
        """This rank's buffer layout and kernel calls at ``step``."""
        return plan_step(self.schedule, self.rank, step, self.causal, self.layout, lengths)

    def mark(self, point: str, step: int) -> None:
        """Forward a step mark to the timing hook, if any."""
        if self.hook is not None:
            self.hook.mark(point, step)


def _rows_to_bhsd(buf: torch.Tensor, keys: tuple[int, int], which: int) -> torch.Tensor:
    """``[B, H, len, D]`` view of rows ``keys`` of K (``which=0``) or V (1) in a ``[S, 2, B, H, D]`` buffer."""
    return buf[keys[0]:keys[1], which].permute(1, 2, 0, 3)


def _pieces(buf: torch.Tensor, plan: StepPlan) -> list[list[torch.Tensor]]:
    """Per cycle, the buffer rows of its chunk (front piece, back piece): contiguous, sent as they are."""
    return [[buf[a:b] for a, b in slot] for slot in plan.slots]


def _rotate(cfg: EngineConfig, buf: torch.Tensor, lengths: list[int]):
    """Yield ``(step, plan, buffer)`` for every step while the next step's chunks are in flight: posts the
    exchange before the caller computes and completes it after (overlap of comm and compute). Incoming
    pieces land where the next step's plan wants them, so its blocks are contiguous rows."""
    exchange = RingExchange(cfg.schedule, cfg.group, cfg.rank, links=cfg.links)
    n = cfg.schedule.world_size
    plan = cfg.plan(0, lengths)
    for step in range(n):
        cfg.mark("start", step)
        handles, incoming = [], None
        if step + 1 < n:
            following = cfg.plan(step + 1, lengths)
            incoming = torch.empty_like(buf)
            handles = exchange.start(_pieces(buf, plan), _pieces(incoming, following))
        cfg.mark("posted", step)
        yield step, plan, buf
        cfg.mark("computed", step)
        if incoming is not None:
            exchange.wait(handles)
            buf, plan = incoming, following
            cfg.mark("received", step)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _kv_rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K and V ``[B, H, S, D]`` as one row-major ``[S, 2, B, H, D]`` buffer (any row range is contiguous)."""
    return torch.stack([k, v]).permute(3, 0, 1, 2, 4).contiguous()


def _q_rows(part: str, seq: int) -> slice:
    return {"all": slice(0, seq), "front": slice(0, seq // 2), "back": slice(seq // 2, seq)}[part]


def run_forward(cfg: EngineConfig, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of one rank without autograd: ``(out, lse)`` in the accumulation dtype (fp32 or fp64)."""
    seq = q.shape[-2]
    lengths = sub_chunk_lengths(seq // 2, cfg.schedule.num_cycles)
    out = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=_acc_dtype(q), device=q.device)
    for _, plan, buf in _rotate(cfg, _kv_rows(k, v), lengths):
        for block in plan.blocks:
            rows = _q_rows(block.q_part, seq)
            b_out, b_lse = cfg.kernel.forward(q[..., rows, :], _rows_to_bhsd(buf, block.keys, 0),
                                              _rows_to_bhsd(buf, block.keys, 1), block.causal, cfg.scale)
            merge_into(out[..., rows, :], lse[..., rows], b_out, b_lse)
    return out, lse


def run_backward(cfg: EngineConfig, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of one rank without autograd: ``(dq, dk, dv)`` for the merged ``out`` and ``lse``.

    The dK/dV accumulators follow their chunks one hop per step; each hop overlaps the next step's kernel
    calls (their gradients are added once the accumulators have arrived), and a last hop brings them home.
    """
    seq = q.shape[-2]
    n = cfg.schedule.world_size
    lengths = sub_chunk_lengths(seq // 2, cfg.schedule.num_cycles)
    dq = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
    kv = _kv_rows(k, v)
    acc = torch.zeros(kv.shape, dtype=_acc_dtype(q), device=q.device)
    acc_exchange = RingExchange(cfg.schedule, cfg.group, cfg.rank, links=cfg.links)
    in_flight: list = []
    for step, plan, buf in _rotate(cfg, kv, lengths):
        grads = []
        for block in plan.blocks:
            rows = _q_rows(block.q_part, seq)
            g_q, g_k, g_v = cfg.kernel.backward(dout[..., rows, :], q[..., rows, :],
                                                _rows_to_bhsd(buf, block.keys, 0), _rows_to_bhsd(buf, block.keys, 1),
                                                out[..., rows, :], lse[..., rows], block.causal, cfg.scale)
            dq[..., rows, :] += g_q
            grads.append((block.keys, g_k, g_v))
        acc_exchange.wait(in_flight)
        for keys, g_k, g_v in grads:
            _rows_to_bhsd(acc, keys, 0).add_(g_k)
            _rows_to_bhsd(acc, keys, 1).add_(g_v)
        if n > 1:
            arriving = torch.empty_like(acc)
            in_flight = acc_exchange.start(_pieces(acc, plan), _pieces(arriving, cfg.plan(step + 1, lengths)))
            acc = arriving
    acc_exchange.wait(in_flight)
    return dq.to(q.dtype), _rows_to_bhsd(acc, (0, seq), 0).to(k.dtype), _rows_to_bhsd(acc, (0, seq), 1).to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, cfg) -> (out, lse)``; gradients flow to q, k, v (LSE is not differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, cfg: EngineConfig):
        out, lse = run_forward(cfg, q, k, v)
        out = out.to(q.dtype)
        ctx.cfg = cfg
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = run_backward(ctx.cfg, dout.contiguous(), q, k, v, out, lse)
        return dq, dk, dv, None
