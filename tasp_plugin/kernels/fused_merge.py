"""The out/LSE merge as one Triton kernel (CUDA, fp32 accumulators): one pass over ``out`` instead of the
elementwise passes of the PyTorch form, which dominate a step's non-kernel time at short sequences. Same
formula and non-finite semantics as ``merge.merge_into``'s PyTorch path: ``diff = block_lse - lse``, 0
where the two are equal (two empty sides, or two ``+inf``); block weight ``sigmoid(diff)``, accumulator
weight ``sigmoid(-diff)``; new LSE ``max + log(1 + exp(-|diff|))``. NaN propagates (through ``diff`` and
through ``0 * NaN``), an inf in ``out`` stays inf, and rows where both sides are empty stay empty."""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: merge.merge_into keeps to PyTorch
    triton = None

__all__ = ["fused_merge_available", "fused_merge_into"]


def fused_merge_available(out: torch.Tensor) -> bool:
    """True where the fused kernel applies: Triton importable, CUDA, fp32 accumulator."""
    return triton is not None and out.is_cuda and out.dtype == torch.float32


if triton is not None:

    @triton.jit
    def _merge(out, lse, bout, blse, H, L, D,
               so_b, so_h, so_l, sl_b, sl_h, sl_l, sbo_b, sbo_h, sbo_l, sbl_b, sbl_h, sbl_l,
               BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_bh = tl.program_id(0)
        b = pid_bh // H
        h = pid_bh % H
        rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, BLOCK_D)
        row_ok = rows < L
        tile_ok = row_ok[:, None] & (cols[None, :] < D)
        old = tl.load(lse + b * sl_b + h * sl_h + rows * sl_l, mask=row_ok, other=float("-inf"))
        new = tl.load(blse + b * sbl_b + h * sbl_h + rows * sbl_l, mask=row_ok, other=float("-inf")).to(tl.float32)
        # equal LSEs (both -inf: empty; both +inf) merge with diff 0, never inf - inf; NaN stays NaN
        diff = tl.where(old == new, 0.0, new - old)
        weight = tl.sigmoid(diff)
        keep = tl.sigmoid(-diff)
        # tl.maximum may drop a NaN; the log term below is NaN then and restores it
        merged = tl.maximum(old, new) + tl.log(1.0 + tl.exp(-tl.abs(diff)))
        o_ptr = out + b * so_b + h * so_h + rows[:, None] * so_l + cols[None, :]
        acc = tl.load(o_ptr, mask=tile_ok, other=0.0)
        blk = tl.load(bout + b * sbo_b + h * sbo_h + rows[:, None] * sbo_l + cols[None, :], mask=tile_ok,
                      other=0.0).to(tl.float32)
        tl.store(o_ptr, acc * keep[:, None] + blk * weight[:, None], mask=tile_ok)
        tl.store(lse + b * sl_b + h * sl_h + rows * sl_l, merged, mask=row_ok)


def fused_merge_into(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """In place, like ``merge_into``: ``out`` fp32 ``[B, H, L, D]`` and ``lse`` ``[B, H, L]`` (any strides
    with a unit last-dim stride for the outputs), block tensors of the same shape and any float dtype."""
    bsz, heads, length, dim = out.shape
    if out.stride(-1) != 1 or block_out.stride(-1) != 1:
        raise ValueError("fused merge needs a unit stride in the head dimension")
    block_l = 32 if dim > 64 else 64
    grid = (bsz * heads, triton.cdiv(length, block_l))
    # Triton launches on the current device: make it the tensors' own (a rank may not have called
    # torch.cuda.set_device; a launch on another GPU with these pointers crashes the process)
    with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():  # CPU: Triton's interpreter
        _merge[grid](out, lse, block_out, block_lse, heads, length, dim,
                     *out.stride()[:3], *lse.stride(), *block_out.stride()[:3], *block_lse.stride(),
                     BLOCK_L=block_l, BLOCK_D=triton.next_power_of_2(dim))
