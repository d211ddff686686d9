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


def block_kernel_errors(kernel, dtype: torch.dtype, kv_heads: int, causal: bool, lq: int, lk: int,
                        rows_view: bool) -> dict[str, float]:
    """A CUDA block kernel's forward and backward against float64 attention: the relative max error of out,
    lse, dq, dk, dv (batch 2, 8 query heads x 128, scale 0.1). ``rows_view``: K/V are views into the
    engine's row-major [S, 2, B, H, D] buffer, and Q, grad_out and out are row slices of longer tensors,
    as the engine passes them for a "back" block."""
    torch.manual_seed(0)
    q = torch.randn(2, lq, 8, 128, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, lk, kv_heads, 128, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, lq, 8, 128, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, 0.1)
    (ref_out * dout).sum().backward()
    bhsd = [x.detach().transpose(1, 2).to("cuda", dtype).contiguous() for x in (q, k, v)]
    if rows_view:
        buf = torch.stack(bhsd[1:]).permute(3, 0, 1, 2, 4).contiguous()
        bhsd[1:] = [buf[:, 0].permute(1, 2, 0, 3), buf[:, 1].permute(1, 2, 0, 3)]
    g = dout.transpose(1, 2).to("cuda", dtype)
    if rows_view:
        bhsd[0], g = (torch.cat([torch.zeros_like(x), x], dim=2)[:, :, lq:] for x in (bhsd[0], g))
    out, lse = kernel.forward(*bhsd, causal, 0.1)
    if rows_view:
        out = torch.cat([torch.zeros_like(out), out], dim=2)[:, :, lq:]
    dq, dk, dv = kernel.backward(g, *bhsd, out, lse, causal, 0.1)
    errors = {}
    for name, got, want in [("out", out, ref_out.transpose(1, 2)), ("lse", lse, ref_lse),
                            ("dq", dq, q.grad.transpose(1, 2)), ("dk", dk, k.grad.transpose(1, 2)),
                            ("dv", dv, v.grad.transpose(1, 2))]:
        assert got.shape == want.shape, name
        errors[name] = ((got.double().cpu() - want).abs().max() / want.abs().max()).item()
    return errors


def packed_reference(q, k, v, cu, causal, scale):
    """Attention of each document alone ([T, H, D] inputs), concatenated: out [T, H, D], lse [H, T]."""
    outs, lses = [], []
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        o, s = reference_attention(q[None, a:b], k[None, a:b], v[None, a:b], causal, scale)
        outs.append(o[0])
        lses.append(s[0])
    return torch.cat(outs), torch.cat(lses, dim=-1)
