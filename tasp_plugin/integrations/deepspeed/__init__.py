"""DeepSpeed integration: a ``"context_parallel"`` config section, ``initialize`` (``deepspeed.initialize``
with CP/DP groups and an ``mpu``) and ``TASPAttention`` for any model. DeepSpeed is imported only when
``initialize`` runs, so the rest works without it."""

from __future__ import annotations

from ..attention import CPSettings, TASPAttention, install_context_parallel, installed_context_parallel
from .config import SECTION, ContextParallelConfig, parse_config
from .groups import ContextParallelMPU, ParallelGroups, build_groups
from .runtime import initialize, zero_cp_loss_scale

__all__ = [
    "SECTION",
    "CPSettings",
    "ContextParallelConfig",
    "ContextParallelMPU",
    "ParallelGroups",
    "TASPAttention",
    "build_groups",
    "initialize",
    "install_context_parallel",
    "installed_context_parallel",
    "parse_config",
    "zero_cp_loss_scale",
]
