"""The one executor: any `RingSchedule`, forward and backward, as a `torch.autograd.Function`.

Shapes inside are ``[batch, heads, seq, head_dim]`` (local shard). Chunk ``j`` of the local K/V travels
on cycle ``j``; dQ accumulates locally; dK/dV accumulators (fp32) travel with their chunks and one last
hop after the final step brings each home.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..comm import RingExchange
from ..kernels import BlockKernel, merge_into
from ..schedules import RingSchedule
from .blocks import Block, plan_step
from .timing import StepHook

__all__ = ["RingAttentionFunction", "EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    """Everything the executor needs besides the tensors."""

    schedule: RingSchedule
    group: dist.ProcessGroup | None
    rank: int
    causal: bool
    layout: str
    scale: float
    kernel: BlockKernel
    hook: StepHook | None = None

    def mark(self, point: str, step: int) -> None:
        """Forward a step mark to the timing hook, if any."""
        if self.hook is not None:
            self.hook.mark(point, step)


class _Chunks:
    """Sub-chunk geometry of a local shard of ``seq`` rows: halves cut into ``c`` (possibly unequal) parts."""

    def __init__(self, seq: int, c: int) -> None:
        self.half = seq // 2
        bounds = [round(i * self.half / c) for i in range(c + 1)]
        self.parts = [(bounds[i], bounds[i + 1]) for i in range(c)]

    def pack(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Chunk j = rows (front part j, back part j) of ``x`` ``[..., seq, d]`` along dim -2."""
        h = self.half
        return [torch.cat([x[..., a:b, :], x[..., h + a:h + b, :]], dim=-2) for a, b in self.parts]

    def unpack(self, chunks: list[torch.Tensor], seq: int) -> torch.Tensor:
        """Inverse of :meth:`pack`."""
        out = chunks[0].new_empty(chunks[0].shape[:-2] + (seq, chunks[0].shape[-1]))
        h = self.half
        for (a, b), ch in zip(self.parts, chunks):
            out[..., a:b, :] = ch[..., : b - a, :]
            out[..., h + a:h + b, :] = ch[..., b - a:, :]
        return out

    def rows(self, part: str, seq: int) -> slice:
        return {"all": slice(0, seq), "front": slice(0, self.half), "back": slice(self.half, seq)}[part]

    def piece(self, chunk: torch.Tensor, j: int, part: str) -> torch.Tensor:
        n = self.parts[j][1] - self.parts[j][0]
        return {"whole": chunk, "front": chunk[..., :n, :], "back": chunk[..., n:, :]}[part]


def _gather(chunks: _Chunks, held: list[torch.Tensor], block: Block) -> torch.Tensor | None:
    """Keys/values of a block (``[2, B, H, len, D]``), or None when every piece is empty (tiny shards)."""
    pieces = [p for p in (chunks.piece(held[j], j, part) for j, part in block.pieces) if p.shape[-2]]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-2)


def _scatter_add(chunks: _Chunks, acc: list[torch.Tensor], block: Block, grad: torch.Tensor) -> None:
    offset = 0
    for j, part in block.pieces:
        target = chunks.piece(acc[j], j, part)
        n = target.shape[-2]
        target.add_(grad[..., offset:offset + n, :])
        offset += n


def _rotate(cfg: EngineConfig, held: list[torch.Tensor]):
    """Yield ``(step, blocks, held_chunks)`` for every step while the next step's chunks are in flight:
    posts the exchange before the caller computes and completes it after (overlap of comm and compute)."""
    exchange = RingExchange(cfg.schedule, cfg.group, cfg.rank)
    n = cfg.schedule.world_size
    for step in range(n):
        cfg.mark("start", step)
        handles, incoming = [], None
        if step + 1 < n:
            incoming = [torch.empty_like(h) for h in held]
            handles = exchange.start(held, incoming)
        cfg.mark("posted", step)
        yield step, plan_step(cfg.schedule, cfg.rank, step, cfg.causal, cfg.layout), held
        cfg.mark("computed", step)
        if incoming is not None:
            exchange.wait(handles)
            held = incoming
            cfg.mark("received", step)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _run_forward(cfg: EngineConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    seq = q.shape[-2]
    chunks = _Chunks(seq, cfg.schedule.num_cycles)
    out = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=_acc_dtype(q), device=q.device)
    for _, blocks, held in _rotate(cfg, chunks.pack(torch.stack([k, v]))):
        for block in blocks:
            kv = _gather(chunks, held, block)
            if kv is None:
                continue
            rows = chunks.rows(block.q_part, seq)
            b_out, b_lse = cfg.kernel.forward(q[..., rows, :], kv[0], kv[1], block.causal, cfg.scale)
            merge_into(out[..., rows, :], lse[..., rows], b_out, b_lse)
    return out, lse


def _run_backward(cfg: EngineConfig, dout, q, k, v, out, lse):
    seq = q.shape[-2]
    chunks = _Chunks(seq, cfg.schedule.num_cycles)
    dq = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
    packed = chunks.pack(torch.stack([k, v]))
    acc = [torch.zeros(h.shape, dtype=_acc_dtype(q), device=h.device) for h in packed]
    acc_exchange = RingExchange(cfg.schedule, cfg.group, cfg.rank)
    for _, blocks, held in _rotate(cfg, packed):
        for block in blocks:
            kv = _gather(chunks, held, block)
            if kv is None:
                continue
            rows = chunks.rows(block.q_part, seq)
            g_q, g_k, g_v = cfg.kernel.backward(dout[..., rows, :], q[..., rows, :], kv[0], kv[1],
                                                out[..., rows, :], lse[..., rows], block.causal, cfg.scale)
            dq[..., rows, :] += g_q
            _scatter_add(chunks, acc, block, torch.stack([g_k, g_v]).to(acc[0].dtype))
        if cfg.schedule.world_size > 1:
            # the accumulators follow their chunks; after the last step this hop brings them home
            arriving = [torch.empty_like(a) for a in acc]
            acc_exchange.wait(acc_exchange.start(acc, arriving))
            acc = arriving
    dkv = chunks.unpack(acc, seq)
    return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)


class RingAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, cfg) -> (out, lse)``; gradients flow to q, k, v (LSE is not differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, cfg: EngineConfig):
        out, lse = _run_forward(cfg, q, k, v)
        out = out.to(q.dtype)
        ctx.cfg = cfg
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _run_backward(ctx.cfg, dout.contiguous(), q, k, v, out, lse)
        return dq, dk, dv, None
