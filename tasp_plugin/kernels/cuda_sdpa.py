"""PyTorch's built-in CUDA attention ops as block kernels: cuDNN, flash and memory-efficient.

Each returns LSE and accepts the merged LSE in backward (checked on an H100 with torch 2.11). cuDNN takes
GQA natively; for flash and efficient K/V heads are expanded (they want equal head counts). Pitfalls
handled here: cuDNN's LSE is ``[B, H, L, 1]``, the efficient kernel pads LSE to a multiple of 32 rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import check_block_shapes, expand_kv_heads, reduce_kv_heads

__all__ = ["CudnnKernel", "TorchFlashKernel", "TorchEfficientKernel"]

_aten = torch.ops.aten


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """K/V (and forward Q) may have any strides with a contiguous head dim: copy only where that is missing.
    Backward Q, out and grad_out are made contiguous: cuDNN's backward silently returns wrong gradients for
    row-sliced out/grad_out (seen on an H200, torch 2.11), so those are never passed as views."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _prep(q, k, v, causal):
    group = check_block_shapes(q, k, v, causal)
    return group, _unit_last(q), _unit_last(expand_kv_heads(k, group)), _unit_last(expand_kv_heads(v, group))


class TorchFlashKernel:
    """``aten._scaled_dot_product_flash_attention`` (fp16/bf16, head_dim <= 256)."""

    name = "torch_flash"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        _, q, k, v = _prep(q, k, v, causal)
        out, lse, *_ = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return out, lse.float()

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group, q, ke, ve = _prep(q.contiguous(), k, v, causal)
        # no dropout: the RNG state is unused (the op still wants uint64 tensors); dense, so no cum_seq
        rng = torch.zeros(2, dtype=torch.uint64, device=q.device)
        unused = torch.zeros((), dtype=torch.uint64, device=q.device)
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_backward(
            dout.to(q.dtype).contiguous(), q, ke, ve, out.to(q.dtype).contiguous(), lse.float().contiguous(),
            None, None, q.shape[2], ke.shape[2], 0.0, causal, rng, unused, scale=scale)
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)


class CudnnKernel:
    """``aten._scaled_dot_product_cudnn_attention`` (fastest on H100 for bf16/fp16; GQA native)."""

    name = "cudnn"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        check_block_shapes(q, k, v, causal)
        out, lse, *_ = _aten._scaled_dot_product_cudnn_attention(
            _unit_last(q), _unit_last(k), _unit_last(v), None, True, 0.0, causal, False, scale=scale)
        return out, lse.reshape(q.shape[:3]).float()

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        check_block_shapes(q, k, v, causal)
        seed = torch.zeros((), dtype=torch.int64, device=q.device)
        # K/V keep their own (fewer) heads: cuDNN does GQA natively, forward and backward (checked on an
        # H200 against expanded heads: identical), so no per-call copy of expanded K/V
        return _aten._scaled_dot_product_cudnn_attention_backward(
            dout.to(q.dtype).contiguous(), q.contiguous(), _unit_last(k), _unit_last(v), out.to(q.dtype).contiguous(),
            lse.float().unsqueeze(-1).contiguous(), seed, seed, None, None, None, q.shape[2], k.shape[2],
            0.0, causal, scale=scale)


class TorchEfficientKernel:
    """``aten._scaled_dot_product_efficient_attention`` (any float dtype on CUDA, incl. fp32)."""

    name = "torch_efficient"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        _, q, k, v = _prep(q, k, v, causal)
        out, lse, _, _ = _aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)
        return out, lse[..., : q.shape[2]].float()

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        group, q, ke, ve = _prep(q.contiguous(), k, v, causal)
        rows = q.shape[2]
        padded = F.pad(lse.float(), (0, (-rows) % 32)).contiguous()
        seed = torch.zeros((), dtype=torch.int64, device=q.device)
        # the kernel wants out and grad_out in its own [B, S, H, D] memory order, as its forward returns
        bshd = lambda t: t.to(q.dtype).transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
        dq, dk, dv, _ = _aten._scaled_dot_product_efficient_attention_backward(
            bshd(dout), q, ke, ve, None, bshd(out), padded, seed, seed, 0.0, [True, True, True, False], causal,
            scale=scale)
        return dq, reduce_kv_heads(dk, group), reduce_kv_heads(dv, group)
