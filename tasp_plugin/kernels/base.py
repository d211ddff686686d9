"""The block-attention interface every backend implements.

Tensors are ``[batch, heads, seq, head_dim]``; K/V may have fewer heads than Q (GQA/MQA) as long as they
divide the Q heads. ``lse`` is float32 ``[batch, heads, seq]`` (natural log). ``causal`` is only used on
diagonal blocks, where Q and K/V have the same length (top-left aligned, which then equals bottom-right).
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["BlockKernel", "expand_kv_heads", "reduce_kv_heads", "check_block_shapes"]


class BlockKernel(Protocol):
    """``forward`` returns this block's softmax output and LSE; ``backward`` gets the *merged* global out
    and LSE of the rows involved and returns this block's share of the gradients.

    Non-finite inputs (docs/API.md, "NaN and Inf"; ``MathKernel`` is the definition): a row's LSE is NaN
    when one of its visible scores is NaN, ``+inf`` (out NaN) for a ``+inf`` score, ``-inf`` (out 0, not
    NaN) when all its visible scores are ``-inf``, never a finite stand-in such as 0; keys hidden by
    ``causal`` reach no row. The merge relies on this to propagate NaN and inf across blocks."""

    name: str

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def check_block_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> int:
    """Validate one block call; return the GQA group size (Q heads per K/V head)."""
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"Q heads ({q.shape[1]}) must be a multiple of K/V heads ({k.shape[1]})")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError("causal blocks must be square (diagonal blocks only)")
    return q.shape[1] // k.shape[1]


def expand_kv_heads(x: torch.Tensor, group: int) -> torch.Tensor:
    """Repeat each K/V head ``group`` times so it lines up with the Q heads that share it."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def reduce_kv_heads(dx: torch.Tensor, group: int) -> torch.Tensor:
    """Sum gradients of expanded K/V heads back onto the shared heads (inverse of expand_kv_heads)."""
    if group == 1:
        return dx
    b, h, s, d = dx.shape
    return dx.view(b, h // group, group, s, d).sum(dim=2)
