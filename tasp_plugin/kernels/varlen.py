"""Block attention over packed documents: one call covers every document of a block (the queries of
document ``d`` are rows ``cu_q[d]:cu_q[d+1]``, its keys rows ``cu_k[d]:cu_k[d+1]``; no attention across
documents). A document with no keys in the block gives out 0 and LSE ``-inf``, like any row that sees no
key, so the merge ignores it.

On CUDA (Ampere or newer) with fp16/bf16, head_dim a multiple of 8 up to 256 and a fast backend (auto,
cudnn, torch_flash, flash_attn) it is PyTorch's flash varlen op (one kernel launch for all documents, GQA
native); elsewhere, or with backend math / torch_efficient, it runs the block kernel once per document
(the CPU path: correct, and a step still makes one engine-level call per block).
"""

from __future__ import annotations

import torch

from .base import BlockKernel

__all__ = ["varlen_backward", "varlen_forward"]

_aten = torch.ops.aten
Cu = tuple[int, ...]


# block kernels standing for "the fast CUDA kernel" (the user did not ask for math, efficient or the CPU one)
_FAST = ("auto", "cudnn", "torch_flash", "flash_attn")


def _flash_fits(kernel: BlockKernel, q: torch.Tensor) -> bool:
    """Whether PyTorch's flash varlen op takes this call: a fast backend, CUDA Ampere or newer, fp16/bf16,
    head dim a multiple of 8 up to 256, one packed row."""
    return (q.is_cuda and kernel.name in _FAST and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0 and q.shape[0] == 1
            and torch.cuda.get_device_capability(q.device)[0] >= 8)


def _thd(x: torch.Tensor) -> torch.Tensor:
    """``[1, H, L, D]`` as ``[L, H, D]`` with a contiguous head dim."""
    t = x[0].transpose(0, 1)
    return t if t.stride(-1) == 1 else t.contiguous()


def _cu_tensor(cu: Cu, device: torch.device) -> torch.Tensor:
    return torch.tensor(cu, dtype=torch.int32, device=device)


def _max(cu: Cu) -> int:
    return max(b - a for a, b in zip(cu[:-1], cu[1:], strict=True))


def _empty_rows(cu_q: Cu, cu_k: Cu) -> list[tuple[int, int]]:
    """Query row ranges of the documents with no keys."""
    return [(cu_q[d], cu_q[d + 1]) for d in range(len(cu_q) - 1) if cu_k[d + 1] == cu_k[d]]


def varlen_forward(kernel: BlockKernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: Cu, cu_k: Cu,
                   causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of ``[B, H, L, D]`` blocks over packed documents (see the module docstring)."""
    if _flash_fits(kernel, q):
        out, lse, *_ = _aten._flash_attention_forward(
            _thd(q), _thd(k), _thd(v), _cu_tensor(cu_q, q.device), _cu_tensor(cu_k, q.device), _max(cu_q),
            max(_max(cu_k), 1), 0.0, causal, False, scale=scale)
        lse = lse.float().unsqueeze(0)  # [H, L] -> [1, H, L]
        for a, b in _empty_rows(cu_q, cu_k):  # the kernel reports +inf there
            lse[..., a:b] = float("-inf")
            out[a:b] = 0
        return out.transpose(0, 1).unsqueeze(0), lse
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32 if q.dtype != torch.float64 else q.dtype,
                     device=q.device)
    for d in range(len(cu_q) - 1):
        (qa, qb), (ka, kb) = (cu_q[d], cu_q[d + 1]), (cu_k[d], cu_k[d + 1])
        if kb > ka:
            o, s = kernel.forward(q[..., qa:qb, :], k[..., ka:kb, :], v[..., ka:kb, :], causal, scale)
            out[..., qa:qb, :] = o
            lse[..., qa:qb] = s
    return out, lse


def varlen_backward(kernel: BlockKernel, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    out: torch.Tensor, lse: torch.Tensor, cu_q: Cu, cu_k: Cu, causal: bool,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``), over packed
    documents."""
    if _flash_fits(kernel, q):
        seed = torch.zeros(2, dtype=torch.uint64, device=q.device)
        unused = torch.zeros((), dtype=torch.uint64, device=q.device)
        dq, dk, dv = _aten._flash_attention_backward(
            _thd(dout.to(q.dtype)).contiguous(), _thd(q).contiguous(), _thd(k), _thd(v),
            _thd(out.to(q.dtype)).contiguous(), lse[0].float().contiguous(), _cu_tensor(cu_q, q.device),
            _cu_tensor(cu_k, q.device), _max(cu_q), max(_max(cu_k), 1), 0.0, causal, seed, unused, scale=scale)
        return dq.transpose(0, 1).unsqueeze(0), dk.transpose(0, 1).unsqueeze(0), dv.transpose(0, 1).unsqueeze(0)
    dq = torch.zeros_like(q)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    for d in range(len(cu_q) - 1):
        (qa, qb), (ka, kb) = (cu_q[d], cu_q[d + 1]), (cu_k[d], cu_k[d + 1])
        if kb > ka:
            g_q, g_k, g_v = kernel.backward(dout[..., qa:qb, :], q[..., qa:qb, :], k[..., ka:kb, :],
                                            v[..., ka:kb, :], out[..., qa:qb, :], lse[..., qa:qb], causal, scale)
            dq[..., qa:qb, :] = g_q
            dk[..., ka:kb, :] = g_k
            dv[..., ka:kb, :] = g_v
    return dq, dk, dv
