"""The Ulysses stage: an all-to-all that swaps sequence shards for head shards and back, differentiable.

``seq_to_heads`` takes this rank's ``[batch, heads, seq, dim]`` zigzag shard and returns its all-to-all
group's sequence for ``heads / u`` of the heads, ordered as ``planning.HybridLayout.gathered_pieces`` says
(the zigzag shard of the ring group); ``heads_to_seq`` is its exact inverse. Each one's backward is the
other, so gradients travel back the way the activations came.
"""

from __future__ import annotations

from typing import Any

import torch

from ..comm import Communicator
from ..planning import HybridLayout

__all__ = ["heads_to_seq", "seq_to_heads"]


def _exchange(comm: Communicator, sends: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
    """``sends[j]`` to all-to-all rank ``j``; returns what each rank ``j`` sent here (all of ``shape``)."""
    me = comm.rank
    recvs = [torch.empty(shape, dtype=sends[0].dtype, device=sends[0].device) for _ in sends]
    recvs[me] = sends[me]
    others = [j for j in range(comm.size) if j != me]
    comm.wait(comm.start([(j, sends[j]) for j in others], [(j, recvs[j]) for j in others]))
    return recvs


def _to_heads(x: torch.Tensor, comm: Communicator, layout: HybridLayout) -> torch.Tensor:
    b, h, s, d = x.shape
    u, half = layout.ulysses, s // 2
    sends = [x[:, j * h // u:(j + 1) * h // u].contiguous() for j in range(u)]
    got = _exchange(comm, sends, (b, h // u, s, d))
    pieces = [got[j][:, :, half * part:half * (part + 1)] for j, part in layout.gathered_pieces()]
    return torch.cat(pieces, dim=2)


def _to_seq(y: torch.Tensor, comm: Communicator, layout: HybridLayout) -> torch.Tensor:
    b, hu, su, d = y.shape
    u = layout.ulysses
    half = su // (2 * u)
    pieces = dict(zip(layout.gathered_pieces(), y.split(half, dim=2), strict=True))
    sends = [torch.cat([pieces[(j, 0)], pieces[(j, 1)]], dim=2).contiguous() for j in range(u)]
    got = _exchange(comm, sends, (b, hu, 2 * half, d))
    return torch.cat(got, dim=1)


class _AllToAll(torch.autograd.Function):
    """One direction of the all-to-all; its gradient is the other direction."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, comm: Communicator, layout: HybridLayout,
                to_heads: bool) -> torch.Tensor:
        ctx.comm, ctx.layout, ctx.to_heads = comm, layout, to_heads
        return (_to_heads if to_heads else _to_seq)(x, comm, layout)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        back = _to_seq if ctx.to_heads else _to_heads
        return back(grad.contiguous(), ctx.comm, ctx.layout), None, None, None


def seq_to_heads(x: torch.Tensor, comm: Communicator, layout: HybridLayout) -> torch.Tensor:
    """``[b, h, s, d]`` sequence shard of all heads -> ``[b, h / u, u * s, d]`` group sequence of this rank's
    heads (``comm``: the all-to-all group, ``u`` ranks; ``s`` even)."""
    return _AllToAll.apply(x, comm, layout, True)


def heads_to_seq(y: torch.Tensor, comm: Communicator, layout: HybridLayout) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`."""
    return _AllToAll.apply(y, comm, layout, False)
