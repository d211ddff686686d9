"""PyTorch's CPU flash-attention op (``aten._scaled_dot_product_flash_attention_for_cpu`` and backward)."""

from __future__ import annotations

import torch

from .base import check_block_shapes, expand_kv_heads, reduce_kv_heads

__all__ = ["CpuFlashKernel"]

_aten = torch.ops.aten


class CpuFlashKernel:
    """Fused CPU kernel; returns LSE and accepts the merged LSE in backward. K/V heads are expanded for
    GQA, so the kernel always sees equal head counts."""

    name = "cpu"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
            q, expand_kv_heads(k, group), expand_kv_heads(v, group), 0.0, causal, scale=scale)
        return out, lse if lse.dtype == torch.float64 else lse.float()

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        lse = lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32).contiguous()
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.to(q.dtype).contiguous(), q.contiguous(), expand_kv_heads(k, group).contiguous(),
            expand_kv_heads(v, group).contiguous(), out.to(q.dtype).contiguous(), lse, 0.0, causal, scale=scale)
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)
