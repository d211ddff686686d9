"""Plain PyTorch reference attention: any dtype (float64 included), any device; slow but exact."""

from __future__ import annotations

import torch

from .base import check_block_shapes, expand_kv_heads, reduce_kv_heads

__all__ = ["MathKernel"]


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    s = torch.matmul(q.float() if q.dtype != torch.float64 else q,
                     (k.float() if k.dtype != torch.float64 else k).transpose(-1, -2)) * scale
    if causal:
        n = q.shape[2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return s


class MathKernel:
    """Explicit softmax(QK^T)V with fp32 (or fp64) accumulation."""

    name = "math"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        k, v = expand_kv_heads(k, group), expand_kv_heads(v, group)
        s = _scores(q, k, causal, scale)
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse.unsqueeze(-1))
        out = torch.matmul(p, v.to(p.dtype))
        return out.to(q.dtype), lse.float() if lse.dtype != torch.float64 else lse

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        ke, ve = expand_kv_heads(k, group), expand_kv_heads(v, group)
        s = _scores(q, ke, causal, scale)
        acc = s.dtype
        p = torch.exp(s - lse.to(acc).unsqueeze(-1))
        do = dout.to(acc)
        dv = torch.matmul(p.transpose(-1, -2), do)
        dp = torch.matmul(do, ve.to(acc).transpose(-1, -2))
        delta = (do * out.to(acc)).sum(dim=-1, keepdim=True)
        ds = p * (dp - delta) * scale
        dq = torch.matmul(ds, ke.to(acc))
        dk = torch.matmul(ds.transpose(-1, -2), q.to(acc))
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)
