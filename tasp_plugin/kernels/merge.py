"""Numerically stable merge of partial attention results ``(out, lse)`` over disjoint key sets."""

from __future__ import annotations

import os

import torch

from .fused_merge import fused_merge_available, fused_merge_into

__all__ = ["merge_into", "update_out_and_lse"]


def merge_into(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """In place: ``out, lse`` <- softmax-weighted combination with a new block (rows ``[B, H, L]``).

    ``out`` is an fp32/fp64 accumulator. The block weight is ``sigmoid(block_lse - lse)`` and the new LSE
    ``max + log1p(exp(-|diff|))``: no overflow, and a row whose LSE is -inf (no key seen yet) gets weight
    exactly 0 on its empty side and never a NaN. On CUDA with fp32 accumulators one fused Triton kernel
    does it (``TASP_FUSED_MERGE=0`` turns that off).
    """
    if fused_merge_available(out) and os.environ.get("TASP_FUSED_MERGE", "1") != "0":
        fused_merge_into(out, lse, block_out, block_lse)
        return
    block_lse = block_lse.to(lse.dtype)
    both_empty = torch.isneginf(lse) & torch.isneginf(block_lse)
    diff = torch.where(both_empty, torch.zeros_like(lse), block_lse - lse)
    out.add_(torch.sigmoid(diff).unsqueeze(-1) * (block_out.to(out.dtype) - out))
    lse.copy_(torch.maximum(lse, block_lse) + torch.log1p(torch.exp(-diff.abs())))


def update_out_and_lse(out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor,
                       block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed-API merge: returns the merged ``(out, lse)``; ``out=None`` starts from the block."""
    if out is None or lse is None:
        return block_out.float(), block_lse.float().clone()
    out, lse = out.float().clone(), lse.float().clone()
    merge_into(out, lse, block_out, block_lse)
    return out, lse
