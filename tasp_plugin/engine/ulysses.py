"""The Ulysses stage: an all-to-all that swaps sequence shards for head shards and back, differentiable.

``seq_to_heads`` takes this rank's ``[batch, heads, seq, dim]`` rows and returns its all-to-all group's rows
for ``heads / u`` of the heads, put in ``order`` (``planning.HybridLayout.gather_order``: the ring group's
zigzag shard, per document when packed); ``heads_to_seq`` is its exact inverse. Each one's backward is the
other, so gradients travel back the way the activations came.
"""

from __future__ import annotations

from typing import Any

import torch

from ..comm import Communicator

__all__ = ["heads_to_seq", "seq_to_heads"]


def _exchange(comm: Communicator, sends: list[torch.Tensor]) -> list[torch.Tensor]:
    """``sends[j]`` to all-to-all rank ``j``; returns what each rank ``j`` sent here (all of one shape)."""
    me = comm.rank
    recvs = [sends[me] if j == me else torch.empty_like(sends[me]) for j in range(comm.size)]
    others = [j for j in range(comm.size) if j != me]
    comm.wait(comm.start([(j, sends[j]) for j in others], [(j, recvs[j]) for j in others]))
    return recvs


def _to_heads(x: torch.Tensor, comm: Communicator, order: torch.Tensor) -> torch.Tensor:
    h, u = x.shape[1], comm.size
    got = _exchange(comm, [x[:, j * h // u:(j + 1) * h // u].contiguous() for j in range(u)])
    return torch.cat(got, dim=2).index_select(2, order)


def _to_seq(y: torch.Tensor, comm: Communicator, inverse: torch.Tensor) -> torch.Tensor:
    u = comm.size
    rows = y.index_select(2, inverse)
    return torch.cat(_exchange(comm, [chunk.contiguous() for chunk in rows.chunk(u, dim=2)]), dim=1)


class _AllToAll(torch.autograd.Function):
    """One direction of the all-to-all; its gradient is the other direction."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, comm: Communicator, order: torch.Tensor, inverse: torch.Tensor,
                to_heads: bool) -> torch.Tensor:
        ctx.comm, ctx.order, ctx.inverse, ctx.to_heads = comm, order, inverse, to_heads
        return _to_heads(x, comm, order) if to_heads else _to_seq(x, comm, inverse)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        grad = grad.contiguous()
        back = _to_seq(grad, ctx.comm, ctx.inverse) if ctx.to_heads else _to_heads(grad, ctx.comm, ctx.order)
        return back, None, None, None, None


def seq_to_heads(x: torch.Tensor, comm: Communicator, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``[b, h, s, d]`` rows of all heads -> ``[b, h / u, u * s, d]``: the all-to-all group's rows of this rank's
    heads in ``order`` (``comm``: the all-to-all group of ``u`` ranks; ``inverse`` undoes ``order``)."""
    return _AllToAll.apply(x, comm, order, inverse, True)


def heads_to_seq(y: torch.Tensor, comm: Communicator, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`."""
    return _AllToAll.apply(y, comm, order, inverse, False)
