"""Numerically stable merge of partial attention results ``(out, lse)`` over disjoint key sets."""

from __future__ import annotations

import os

import torch

from .fused_merge import fused_merge_available, fused_merge_into

__all__ = ["merge_into", "update_out_and_lse"]


def merge_into(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """In place: ``out, lse`` <- softmax-weighted combination with a new block (rows ``[B, H, L]``).

    ``out`` is an fp32/fp64 accumulator. With ``diff = block_lse - lse`` (0 where the two LSEs are equal,
    so two empty sides, both ``-inf``, or two ``+inf`` sides give no ``inf - inf``), the block gets weight
    ``sigmoid(diff)``, the accumulator ``sigmoid(-diff)``, and the new LSE is
    ``max + log1p(exp(-|diff|))``: no overflow; a row whose LSE is ``-inf`` (no key seen yet) gets weight
    exactly 0 and never a NaN of its own; an inf in ``out`` (an inf value) stays inf instead of becoming
    ``inf - inf``. Non-finite results propagate as in attention over the union of the keys: a NaN LSE or
    a NaN in either ``out`` (a NaN value, even at zero weight, as ``0 * NaN`` in ``P @ V``) makes the row
    NaN, a ``+inf`` LSE stays ``+inf``. On CUDA with fp32 accumulators one fused Triton kernel does the
    same (``TASP_FUSED_MERGE=0`` turns that off).
    """
    if fused_merge_available(out) and os.environ.get("TASP_FUSED_MERGE", "1") != "0":
        fused_merge_into(out, lse, block_out, block_lse)
        return
    block_lse = block_lse.to(lse.dtype)
    diff = torch.where(lse == block_lse, 0.0, block_lse - lse)
    out.mul_(torch.sigmoid(-diff).unsqueeze(-1)).addcmul_(block_out, torch.sigmoid(diff).unsqueeze(-1))
    lse.copy_(torch.maximum(lse, block_lse) + torch.log1p(torch.exp(-diff.abs())))


def update_out_and_lse(out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor,
                       block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed-API merge: returns the merged ``(out, lse)``; ``out=None`` starts from the block."""
    if out is None or lse is None:
        return block_out.float(), block_lse.float().clone()
    out, lse = out.float().clone(), lse.float().clone()
    merge_into(out, lse, block_out, block_lse)
    return out, lse
