"""FlashAttention-4 (PyPI ``flash-attn-4``, import ``flash_attn.cute``) as a block kernel.

FA4 works in ``[batch, seq, heads, head_dim]`` and takes GQA natively (fewer K/V heads, no copies). The
engine's tensors are ``[batch, heads, seq, head_dim]`` views, so this wrapper only transposes views: K/V
rows of the engine's buffer stay views (FA4 needs a unit-stride head dim, which they have). Backward
q/out/grad_out are made contiguous, as for cuDNN. Causal masks are only used on square (diagonal) blocks,
where FA4's bottom-right alignment equals the engine's top-left one. FA4 compiles each new kernel
configuration at first use (about 2 s) and caches it for the process.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .base import check_block_shapes

__all__ = ["FLASH_INSTALL_HINT", "FlashAttn4Kernel", "flash_attn4_available"]

FLASH_INSTALL_HINT = ('backend "flash_attn" needs FlashAttention-4 (flash-attn-4, import flash_attn.cute): '
                      'pip install "tasp_plugin[flash]"; FlashAttention 2 and 3 (flash_attn_func) are not supported')


def _interface() -> Any:
    try:
        from flash_attn.cute import interface
    except ImportError as exc:
        raise ImportError(FLASH_INSTALL_HINT) from exc
    return interface


@functools.cache
def flash_attn4_available() -> bool:
    """Whether ``flash_attn.cute`` imports (FA4 is installed) and a CUDA device of compute capability 9.0+
    (Hopper or newer) is present."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    try:
        _interface()
    except ImportError:
        return False
    return True


def _bshd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


class FlashAttn4Kernel:
    """FlashAttention-4's forward (with LSE) and backward, fp16/bf16 on Hopper and newer GPUs."""

    name = "flash_attn"

    def __init__(self) -> None:
        self._fa = _interface()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Block output and fp32 LSE (see ``BlockKernel``)."""
        check_block_shapes(q, k, v, causal)
        out, lse, *_ = self._fa._flash_attn_fwd(_bshd(q), _bshd(k), _bshd(v), softmax_scale=scale, causal=causal,
                                                return_lse=True)
        return _bshd(out), lse

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This block's dq, dk, dv for the merged ``out`` and ``lse`` (see ``BlockKernel``)."""
        check_block_shapes(q, k, v, causal)
        dense = [_bshd(t.to(q.dtype)).contiguous() for t in (q, out, dout)]
        dq, dk, dv, *_ = self._fa._flash_attn_bwd(dense[0], _bshd(k), _bshd(v), dense[1], dense[2],
                                                  lse.float().contiguous(), softmax_scale=scale, causal=causal)
        return _bshd(dq), _bshd(dk), _bshd(dv)
