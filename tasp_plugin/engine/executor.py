"""The one executor: any `RingSchedule`, forward and backward, as a `torch.autograd.Function`.

Shapes inside are ``[batch, heads, seq, head_dim]`` (local shard). Chunk ``j`` of the local K/V travels
on cycle ``j``; dQ accumulates locally; dK/dV accumulators (fp32) travel with their chunks and one last
hop after the final step brings each home.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..comm import TRANSPORTS, Communicator, Handle, PeerMemory, RingExchange
from ..kernels import BlockKernel, merge_into, varlen_backward, varlen_forward
from ..planning import (
    PackedLayout,
    Sharding,
    StepPlan,
    VarlenBlock,
    parse_choice,
    step_plans,
    sub_chunk_lengths,
    varlen_blocks,
)
from ..schedules import RingSchedule
from .rotation import P2PRotation, PeerRotation, Rotation
from .timing import StepHook

__all__ = ["EngineConfig", "RingAttentionFunction", "kv_rows", "run_backward", "run_forward"]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything the executor needs besides the tensors; build it with :meth:`create`."""

    schedule: RingSchedule
    comm: Communicator
    causal: bool
    sharding: Sharding
    scale: float
    kernel: BlockKernel
    hook: StepHook | None = None
    transport: str = "auto"
    peer: PeerMemory | None = None
    packed: PackedLayout | None = None

    @classmethod
    def create(cls, *, schedule: RingSchedule, comm: Communicator, kernel: BlockKernel, head_dim: int,
               causal: bool = True, sharding: Sharding | str = Sharding.ZIGZAG, softmax_scale: float | None = None,
               hook: StepHook | None = None, transport: str = "auto", peer: PeerMemory | None = None,
               packed: PackedLayout | None = None) -> EngineConfig:
        """The one way to build a config; ``softmax_scale`` defaults to ``head_dim ** -0.5``. ``peer`` (the
        group's symmetric memory) makes the buffers move by copy-engine pulls; else ``transport`` picks
        how ``RingExchange`` sends them (``comm.TRANSPORTS``). ``packed``: the local rows are packed
        documents, grouped ``[front pieces | back pieces]`` (``planning.packed``); zigzag sharding only."""
        if schedule.world_size != comm.size:
            raise ValueError(f"the schedule is for {schedule.world_size} ranks but the group has {comm.size}")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        if transport == "peer_copy" and peer is None and schedule.world_size > 1:
            raise ValueError("transport 'peer_copy' needs the group's PeerMemory (peer=)")
        if peer is not None and transport not in ("auto", "peer_copy"):
            raise ValueError(f"transport {transport!r} sends with RingExchange; peer= is for 'peer_copy' or 'auto'")
        split = parse_choice(Sharding, sharding, "sharding")
        if packed is not None and split is not Sharding.ZIGZAG:
            raise ValueError("packed documents are sharded per document in zigzag order: sharding must be 'zigzag'")
        scale = head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)
        return cls(schedule=schedule, comm=comm, causal=causal, sharding=split, scale=scale, kernel=kernel, hook=hook,
                   transport=transport, peer=peer, packed=packed)

    @property
    def rank(self) -> int:
        """This rank in the CP group."""
        return self.comm.rank

    def plans(self, seq: int, rank: int | None = None) -> tuple[StepPlan, ...]:
        """A rank's (default: this one's) buffer arrangement and kernel calls for steps ``0 .. n`` (cached)."""
        lengths = tuple(sub_chunk_lengths(seq // 2, self.schedule.num_cycles))
        return step_plans(self.schedule, self.rank if rank is None else rank, self.causal, self.sharding, lengths)

    def calls(self, seq: int, step: int, plan: StepPlan) -> list[Call]:
        """Step ``step``'s kernel calls: ``(query rows, buffer key rows, causal, documents)``, documents being
        ``(cu_q, cu_k)`` of a varlen call over packed documents, or None."""
        if self.packed is None:
            return [Call(_q_rows(b.q_part, seq), b.keys, b.causal, None) for b in plan.blocks]
        if 2 * self.packed.half != seq:
            raise ValueError(f"the packed documents have {2 * self.packed.half} local rows, the tensors {seq}")
        lengths = tuple(sub_chunk_lengths(seq // 2, self.schedule.num_cycles))
        blocks: tuple[VarlenBlock, ...] = varlen_blocks(self.schedule, self.rank, self.causal, lengths,
                                                        self.packed)[step]
        half = seq // 2
        return [Call(slice(0, half) if b.q_half == "front" else slice(half, seq), b.keys, b.causal,
                     (self.packed.cu, b.cu_k)) for b in blocks]

    def rotation(self, tag: str, seq: int, initial: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype,
                 device: torch.device) -> Rotation:
        """How the buffer ``tag`` (``shape``, ``dtype``) moves between steps, starting from ``initial``
        (None: zeros)."""
        plans = self.plans(seq)
        if self.peer is not None:
            return PeerRotation(self.schedule, self.peer, tag, plans, lambda r: self.plans(seq, r),
                                (shape, dtype, device), initial)
        first = initial if initial is not None else torch.zeros(shape, dtype=dtype, device=device)
        return P2PRotation(RingExchange(self.schedule, self.comm, self.transport), plans, first)

    def mark(self, phase: str, point: str, step: int) -> None:
        """Forward a step mark to the timing hook, if any."""
        if self.hook is not None:
            self.hook.mark(phase, point, step)


class Call(NamedTuple):
    """One kernel call of a step: local query ``rows``, buffer ``keys``, ``causal``, and for packed
    documents their cumulative query and key counts (``docs``; None: one dense call)."""

    rows: slice
    keys: tuple[int, int]
    causal: bool
    docs: tuple[tuple[int, ...], tuple[int, ...]] | None


def _block_forward(cfg: EngineConfig, call: Call, q: torch.Tensor,
                   buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qb, kb, vb = q[..., call.rows, :], _rows_to_bhsd(buf, call.keys, 0), _rows_to_bhsd(buf, call.keys, 1)
    if call.docs is None:
        return cfg.kernel.forward(qb, kb, vb, call.causal, cfg.scale)
    return varlen_forward(cfg.kernel, qb, kb, vb, *call.docs, call.causal, cfg.scale)


def _block_backward(cfg: EngineConfig, call: Call, dout: torch.Tensor, q: torch.Tensor, buf: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r = call.rows
    args = (dout[..., r, :], q[..., r, :], _rows_to_bhsd(buf, call.keys, 0), _rows_to_bhsd(buf, call.keys, 1),
            out[..., r, :], lse[..., r])
    if call.docs is None:
        return cfg.kernel.backward(*args, call.causal, cfg.scale)
    return varlen_backward(cfg.kernel, *args, *call.docs, call.causal, cfg.scale)


def _rows_to_bhsd(buf: torch.Tensor, keys: tuple[int, int], which: int) -> torch.Tensor:
    """``[B, H, len, D]`` view of rows ``keys`` of K (``which=0``) or V (1) in a ``[S, 2, B, H, D]`` buffer."""
    return buf[keys[0]:keys[1], which].permute(1, 2, 0, 3)


def _rotate(cfg: EngineConfig, kv: torch.Tensor, plans: tuple[StepPlan, ...],
            phase: str) -> Generator[tuple[int, StepPlan, torch.Tensor], None, None]:
    """Yield ``(step, plan, buffer)`` for every step while the next step's chunks are in flight: posts the
    exchange before the caller computes and completes it after (overlap of comm and compute). Incoming
    pieces land where the next step's plan wants them, so its blocks are contiguous rows.

    If the caller fails during a step (close the generator, e.g. with ``contextlib.closing``), the transfers
    already posted are completed first, so the group stays usable for the next call."""
    n = cfg.schedule.world_size
    rotation = cfg.rotation("kv", kv.shape[0], kv, kv.shape, kv.dtype, kv.device) if n > 1 else None
    buf = kv
    for step in range(n):
        cfg.mark(phase, "start", step)
        handles: list[Handle] = []
        incoming = None
        if rotation is not None and step + 1 < n:
            incoming, handles = rotation.start(step, buf)
        cfg.mark(phase, "posted", step)
        try:
            yield step, plans[step], buf
        except BaseException:
            _drain(handles)
            raise
        cfg.mark(phase, "computed", step)
        if incoming is not None:
            Communicator.wait(handles)
            buf = incoming
            cfg.mark(phase, "received", step)


def _drain(handles: list[Handle]) -> None:
    """Complete posted transfers while an error propagates (the peers posted their halves); a failure here
    must not hide the error being raised."""
    with contextlib.suppress(Exception):
        Communicator.wait(handles)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def kv_rows(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K and V ``[B, H, S, D]`` (any strides, e.g. a permuted view of the caller's layout) as one row-major
    ``[S, 2, B, H, D]`` buffer (any row range is contiguous): the one copy K/V take."""
    b, h, s, d = k.shape
    rows = torch.empty((s, 2, b, h, d), dtype=k.dtype, device=k.device)
    rows[:, 0].copy_(k.permute(2, 0, 1, 3))
    rows[:, 1].copy_(v.permute(2, 0, 1, 3))
    return rows


def _q_rows(part: str, seq: int) -> slice:
    return {"all": slice(0, seq), "front": slice(0, seq // 2), "back": slice(seq // 2, seq)}[part]


def run_forward(cfg: EngineConfig, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of one rank without autograd: ``(out, lse)`` in the accumulation dtype (fp32 or fp64)."""
    return _forward(cfg, q, kv_rows(k, v))


def _forward(cfg: EngineConfig, q: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seq = q.shape[-2]
    out = lse = None
    with contextlib.closing(_rotate(cfg, kv, cfg.plans(seq), "forward")) as steps:
        for step, plan, buf in steps:
            for call in cfg.calls(seq, step, plan):
                b_out, b_lse = _block_forward(cfg, call, q, buf)
                if out is None or lse is None:
                    if call.rows == slice(0, seq):
                        # the first call covers every row: it starts the accumulators (what merging it into
                        # empty ones would give, without the zero fill and the merge pass)
                        out = torch.empty(q.shape, dtype=_acc_dtype(q), device=q.device).copy_(b_out)
                        lse = torch.empty(q.shape[:-1], dtype=_acc_dtype(q), device=q.device).copy_(b_lse)
                        continue
                    out = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
                    lse = torch.full(q.shape[:-1], float("-inf"), dtype=_acc_dtype(q), device=q.device)
                merge_into(out[..., call.rows, :], lse[..., call.rows], b_out, b_lse)
    assert out is not None and lse is not None
    return out, lse


def run_backward(cfg: EngineConfig, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of one rank without autograd: ``(dq, dk, dv)`` for the merged ``out`` and ``lse``.

    The dK/dV accumulators follow their chunks one hop per step; each hop overlaps the next step's kernel
    calls (their gradients are added once the accumulators have arrived), and a last hop brings them home.
    """
    return _backward(cfg, dout, q, kv_rows(k, v), out, lse, k.dtype)


def _backward(cfg: EngineConfig, dout: torch.Tensor, q: torch.Tensor, kv: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, kv_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``; dK/dV accumulate in the accumulation dtype in the ``[S, 2, B, H, D]`` row order of
    ``kv`` and are converted to ``kv_dtype`` (always a copy: the accumulator may be a reused buffer)."""
    seq = q.shape[-2]
    n = cfg.schedule.world_size
    plans = cfg.plans(seq)
    dq: torch.Tensor | None = None
    accumulators = cfg.rotation("acc", seq, None, kv.shape, _acc_dtype(q), kv.device) if n > 1 else None
    acc = accumulators.first if accumulators is not None else kv.new_zeros(kv.shape, dtype=_acc_dtype(q))
    in_flight: list[Handle] = []
    try:
        with contextlib.closing(_rotate(cfg, kv, plans, "backward")) as steps:
            for step, plan, buf in steps:
                grads = []
                for call in cfg.calls(seq, step, plan):
                    g_q, g_k, g_v = _block_backward(cfg, call, dout, q, buf, out, lse)
                    if dq is None and call.rows == slice(0, seq):  # the first call covers every row
                        dq = torch.empty(q.shape, dtype=_acc_dtype(q), device=q.device).copy_(g_q)
                    else:
                        if dq is None:
                            dq = torch.zeros(q.shape, dtype=_acc_dtype(q), device=q.device)
                        dq[..., call.rows, :] += g_q
                    grads.append((call.keys, g_k, g_v))
                Communicator.wait(in_flight)
                in_flight = []
                for keys, g_k, g_v in grads:
                    _rows_to_bhsd(acc, keys, 0).add_(g_k)
                    _rows_to_bhsd(acc, keys, 1).add_(g_v)
                if accumulators is not None:
                    acc, in_flight = accumulators.start(step, acc)
    except BaseException:
        _drain(in_flight)
        raise
    Communicator.wait(in_flight)
    dk, dv = (_rows_to_bhsd(acc, (0, seq), i).to(kv_dtype, copy=True) for i in (0, 1))
    assert dq is not None
    return dq.to(q.dtype), dk, dv


class RingAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, cfg) -> (out, lse)``; gradients flow to q, k, v (LSE is not differentiable).
    q is ``[B, H, S, D]``; k/v may be any-strided ``[B, H, S, D]`` views (they are copied once, into the
    row buffer that travels and is saved for the backward)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cfg: EngineConfig) -> tuple[torch.Tensor, torch.Tensor]:
        kv = kv_rows(k, v)
        out, lse = _forward(cfg, q, kv)
        out = out.to(q.dtype)
        ctx.cfg = cfg
        ctx.kv_dtype = k.dtype
        ctx.save_for_backward(q, kv, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor, _dlse: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the backward's kernels and transfers are not traced
            raise RuntimeError("context-parallel attention is differentiable once: double backward "
                               "(create_graph=True) is not supported")
        q, kv, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(ctx.cfg, dout.contiguous(), q, kv, out, lse, ctx.kv_dtype)
        return dq, dk, dv, None
