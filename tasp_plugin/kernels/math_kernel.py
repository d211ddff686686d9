"""Plain PyTorch reference attention: any dtype (float64 included), any device; slow but exact.

It is also the package's definition of non-finite semantics (see docs/API.md, "NaN and Inf"): each query
row is ``scaled_dot_product_attention``'s math backend over the keys that row can see. A key hidden by the
causal mask does not exist for that row: neither a NaN/inf score nor a NaN/inf value at a hidden position
reaches it (torch's math backend adds the mask as a ``-inf`` bias, and ``NaN + -inf`` and ``0 * NaN`` would
leak it). A row whose visible scores are all ``-inf`` is empty: LSE ``-inf``, weights 0. ``CpuFlashKernel``
falls back to this kernel for any block with a non-finite input.
"""

from __future__ import annotations

import torch

from .base import check_block_shapes, expand_kv_heads, reduce_kv_heads

__all__ = ["MathKernel"]

# keys with non-finite entries handled per pass by _visible_matmul's correction ([.., M, chunk, N] products)
_CHUNK = 16


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _hidden(q: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """``[L, L]`` True where the causal mask hides key ``j`` from query ``i`` (``j > i``), or None."""
    if not causal:
        return None
    n = q.shape[2]
    return torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)


def _scores(q: torch.Tensor, k: torch.Tensor, hidden: torch.Tensor | None, scale: float) -> torch.Tensor:
    s = torch.matmul(_acc(q), _acc(k).transpose(-1, -2)) * scale
    # masked_fill, not a -inf bias: a NaN or +inf score at a hidden position must vanish, not stay NaN
    return s if hidden is None else s.masked_fill(hidden, float("-inf"))


def _probs(s: torch.Tensor, lse: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """``exp(s - lse)`` as SDPA's math softmax gives it: 0 (not NaN) on empty rows (``lse = -inf``, its safe
    softmax), NaN on the whole of a row with a ``+inf`` score (``inf - inf`` reaches the row's sum), and 0
    on hidden positions (rows whose LSE is NaN would otherwise carry NaN there, into dV of hidden keys)."""
    p = torch.exp(s - lse.unsqueeze(-1))
    if not bool(torch.isfinite(lse).all()):  # rare; NaN rows are NaN already
        p = p.masked_fill(torch.isneginf(lse).unsqueeze(-1), 0.0)
        p = p.masked_fill(torch.isposinf(lse).unsqueeze(-1), float("nan"))
    return p if hidden is None else p.masked_fill(hidden, 0.0)


def _visible_matmul(a: torch.Tensor, b: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """``a @ b`` where ``a`` is 0 on ``hidden`` ``[M, K]`` positions and those products count as absent.

    A plain matmul turns ``0 * NaN`` or ``0 * inf`` at a hidden position into NaN. Only where ``b`` has
    non-finite entries (rare) are their rows of ``b`` zeroed in the matmul and their contribution added back
    over visible positions only; otherwise this is one matmul plus one finiteness check of ``b``."""
    if hidden is None:
        return torch.matmul(a, b)
    bad = ~torch.isfinite(b)
    if not bool(bad.any()):
        return torch.matmul(a, b)
    rows = bad.reshape(-1, *b.shape[-2:]).any(dim=0).any(dim=-1).nonzero().flatten()
    out = torch.matmul(a, b.masked_fill(bad, 0.0))
    for start in range(0, rows.numel(), _CHUNK):
        idx = rows[start:start + _CHUNK]
        b_bad = b.index_select(-2, idx)
        b_bad = b_bad.masked_fill(~bad.index_select(-2, idx), 0.0)
        terms = a.index_select(-1, idx).unsqueeze(-1) * b_bad.unsqueeze(-3)  # [.., M, chunk, N]
        terms = terms.masked_fill(hidden.index_select(-1, idx).unsqueeze(-1), 0.0)
        out = out + terms.sum(dim=-2)
    return out


class MathKernel:
    """Explicit softmax(QK^T)V with fp32 (or fp64) accumulation, exact on non-finite inputs."""

    name = "math"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        k, v = expand_kv_heads(k, group), expand_kv_heads(v, group)
        hidden = _hidden(q, causal)
        s = _scores(q, k, hidden, scale)
        lse = torch.logsumexp(s, dim=-1)
        p = _probs(s, lse, hidden)
        out = _visible_matmul(p, v.to(p.dtype), hidden)
        return out.to(q.dtype), lse.float() if lse.dtype != torch.float64 else lse

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group = check_block_shapes(q, k, v, causal)
        ke, ve = expand_kv_heads(k, group), expand_kv_heads(v, group)
        hidden = _hidden(q, causal)
        hidden_t = None if hidden is None else hidden.transpose(0, 1)
        s = _scores(q, ke, hidden, scale)
        acc = s.dtype
        p = _probs(s, lse.to(acc), hidden)
        do = dout.to(acc)
        dv = _visible_matmul(p.transpose(-1, -2), do, hidden_t)
        dp = torch.matmul(do, ve.to(acc).transpose(-1, -2))
        delta = (do * out.to(acc)).sum(dim=-1, keepdim=True)
        ds = p * (dp - delta) * scale
        if hidden is not None:
            ds = ds.masked_fill(hidden, 0.0)  # p is 0 there, dp may be inf/NaN (a hidden non-finite value)
        dq = _visible_matmul(ds, ke.to(acc), hidden)
        dk = _visible_matmul(ds.transpose(-1, -2), q.to(acc), hidden_t)
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)
