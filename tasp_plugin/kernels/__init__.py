"""Layer 3: block attention kernels behind one interface, and the out/LSE merge."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import BlockKernel, expand_kv_heads
from .cpu_flash import CpuFlashKernel
from .cuda_sdpa import CudnnKernel, TorchEfficientKernel, TorchFlashKernel
from .math_kernel import MathKernel
from .merge import merge_into, update_out_and_lse

__all__ = ["BlockKernel", "expand_kv_heads", "CpuFlashKernel", "CudnnKernel", "MathKernel", "TorchEfficientKernel",
           "TorchFlashKernel", "auto_cuda_backend", "get_kernel", "merge_into", "update_out_and_lse", "BACKENDS"]

BACKENDS = ("auto", "cpu", "cudnn", "torch_flash", "torch_efficient", "math")
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


def get_kernel(backend: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> BlockKernel:
    """The kernel for ``backend`` (``"auto"`` picks the fastest available for device, dtype and head dim)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "math":
        return MathKernel()
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got device {device}")
        return CpuFlashKernel()
    if backend in _CUDA:
        if device.type != "cuda":
            raise ValueError(f"backend {backend!r} needs CUDA tensors, got device {device}")
        return _CUDA[backend]()
    if device.type == "cpu":
        return CpuFlashKernel()
    if device.type == "cuda":
        return _CUDA[auto_cuda_backend(dtype, head_dim)]()
    return MathKernel()
