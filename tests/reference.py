"""Single-process attention over the full sequence: the reference every distributed result is held to."""

from __future__ import annotations

import torch


def reference_attention(q, k, v, causal: bool, scale: float):
    """``[B, S, H, D]`` inputs (K/V may have fewer heads) -> (out ``[B, S, H, D]``, lse ``[B, H, S]``),
    computed in float64 with autograd."""
    group = q.shape[2] // k.shape[2]
    qh = q.double().transpose(1, 2)
    kh = k.double().transpose(1, 2).repeat_interleave(group, 1)
    vh = v.double().transpose(1, 2).repeat_interleave(group, 1)
    s = qh @ kh.transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ vh).transpose(1, 2), torch.logsumexp(s, -1)
