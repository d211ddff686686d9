"""Layer 3: block attention kernels behind one interface, and the out/LSE merge."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import BlockKernel, expand_kv_heads
from .cpu_flash import CpuFlashKernel
from .cuda_sdpa import CudnnKernel, TorchEfficientKernel, TorchFlashKernel
from .flash4 import FlashAttn4Kernel, flash_attn4_available
from .math_kernel import MathKernel
from .measured import MeasuredKernel
from .merge import merge_into, update_out_and_lse
from .varlen import varlen_backward, varlen_forward

__all__ = ["BACKENDS", "BlockKernel", "CpuFlashKernel", "CudnnKernel", "FlashAttn4Kernel", "MathKernel",
           "MeasuredKernel", "TorchEfficientKernel", "TorchFlashKernel", "auto_cuda_backend", "expand_kv_heads",
           "get_kernel", "merge_into", "update_out_and_lse", "varlen_backward", "varlen_forward"]

BACKENDS = ("auto", "cpu", "cudnn", "flash_attn", "torch_flash", "torch_efficient", "math")
_CUDA: dict[str, Callable[[], BlockKernel]] = {"cudnn": CudnnKernel, "torch_flash": TorchFlashKernel,
                                               "torch_efficient": TorchEfficientKernel}


def auto_cuda_backend(dtype: torch.dtype, head_dim: int | None) -> str:
    """Fastest CUDA backend that takes this dtype and head dim. Measured on one H100 (bf16 forward):
    cuDNN ~630 TFLOP/s, PyTorch flash ~360, efficient ~185; cuDNN takes head dims up to 128 and flash up
    to 256 (multiples of 8); fp32 only runs on efficient."""
    if dtype not in (torch.float16, torch.bfloat16):
        return "torch_efficient"
    if head_dim is None or (head_dim <= 128 and head_dim % 8 == 0):
        return "cudnn"
    if head_dim <= 256 and head_dim % 8 == 0:
        return "torch_flash"
    return "torch_efficient"


def _flash4_fits(dtype: torch.dtype, head_dim: int | None) -> bool:
    """FA4 on Hopper: fp16/bf16, head dims 8..256 in multiples of 8."""
    return dtype in (torch.float16, torch.bfloat16) and (head_dim is None or (8 <= head_dim <= 256
                                                                                and head_dim % 8 == 0))


def get_kernel(backend: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> BlockKernel:
    """The kernel for ``backend``. ``"auto"``: the CPU kernel on CPU; on CUDA where FlashAttention-4 is
    installed and fits, the faster of FA4 and cuDNN per block shape, measured at first use
    (``MeasuredKernel``); else the fastest built-in op for dtype and head dim."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "math":
        return MathKernel()
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got device {device}")
        return CpuFlashKernel()
    if backend in _CUDA or backend == "flash_attn":
        if device.type != "cuda":
            raise ValueError(f"backend {backend!r} needs CUDA tensors, got device {device}")
    if backend == "flash_attn":
        if not _flash4_fits(dtype, head_dim):
            raise ValueError(f"backend 'flash_attn' takes float16/bfloat16 with head_dim 8..256 (multiple of 8), "
                             f"got {dtype} and head_dim {head_dim}")
        return FlashAttn4Kernel()
    if backend in _CUDA:
        return _CUDA[backend]()
    if device.type == "cpu":
        return CpuFlashKernel()
    if device.type == "cuda":
        builtin = _CUDA[auto_cuda_backend(dtype, head_dim)]()
        if builtin.name == "cudnn" and _flash4_fits(dtype, head_dim) and flash_attn4_available():
            return MeasuredKernel([builtin, FlashAttn4Kernel()])
        return builtin
    return MathKernel()
