"""Layer 3: block attention kernels behind one interface, and the out/LSE merge."""

from __future__ import annotations

import torch

from .base import BlockKernel
from .cpu_flash import CpuFlashKernel
from .math_kernel import MathKernel
from .merge import merge_into, update_out_and_lse

__all__ = ["BlockKernel", "CpuFlashKernel", "MathKernel", "get_kernel", "merge_into", "update_out_and_lse",
           "BACKENDS"]

BACKENDS = ("auto", "cpu", "math")


def get_kernel(backend: str, device: torch.device, dtype: torch.dtype) -> BlockKernel:
    """The kernel for ``backend`` (``"auto"`` picks the fastest available for device and dtype)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "math":
        return MathKernel()
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got device {device}")
        return CpuFlashKernel()
    return CpuFlashKernel() if device.type == "cpu" else MathKernel()
