"""PyTorch's CPU flash-attention op (``aten._scaled_dot_product_flash_attention_for_cpu`` and backward)."""

from __future__ import annotations

import torch

from .base import check_block_shapes, expand_kv_heads, reduce_kv_heads
from .math_kernel import MathKernel

__all__ = ["CpuFlashKernel"]

_aten = torch.ops.aten


def _all_finite(*tensors: torch.Tensor) -> bool:
    """True when no tensor holds a NaN or an inf: one sum per tensor (fp32, fp64 for fp64; the fastest check
    measured, no boolean temporaries). NaN and inf always reach the sum; finite inputs overflow it only
    beyond ~1e38 in total, which merely sends the block down the exact path."""
    return all(bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)))
               for t in tensors)


class CpuFlashKernel:
    """Fused CPU kernel; returns LSE and accepts the merged LSE in backward. K/V heads are expanded for
    GQA, so the kernel always sees equal head counts.

    The op is only trusted on finite inputs: a row whose scores are all NaN or all ``-inf`` comes back
    with LSE 0 (not NaN or ``-inf``), a ``+inf`` score gives LSE NaN (not ``+inf``), and a NaN/inf value or
    key under the causal mask leaks into earlier rows of the same tile. A block with any non-finite input
    (or LSE) is therefore computed by ``MathKernel``, which defines the package's semantics; the check is
    one pass over the block's inputs, small next to the kernel's ``Lq * Lk`` work."""

    name = "cpu"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        if _all_finite(q, k, v):
            out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
                q, expand_kv_heads(k, group), expand_kv_heads(v, group), 0.0, causal, scale=scale)
            if _all_finite(lse):  # a +inf score from finite inputs (overflow) is left to the exact path
                return out, lse if lse.dtype == torch.float64 else lse.float()
        return MathKernel().forward(q, k, v, causal, scale)

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        if not _all_finite(dout, q, k, v, out, lse):
            return MathKernel().backward(dout, q, k, v, out, lse, causal, scale)
        lse = lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32).contiguous()
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype).contiguous(), q.contiguous(), expand_kv_heads(k, group).contiguous(),
            expand_kv_heads(v, group).contiguous(), out.to(q.dtype).contiguous(), lse, 0.0, causal, scale=scale)
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)
