"""The ``"context_parallel"`` section of a DeepSpeed config: parsed and validated here, then removed so that
DeepSpeed only ever sees its own keys."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ...kernels import BACKENDS
from ...planning import Algorithm, Topology

__all__ = ["SECTION", "ContextParallelConfig", "parse_config"]

SECTION = "context_parallel"


@dataclass(frozen=True)
class ContextParallelConfig:
    """What the ``"context_parallel"`` section asks for: CP group size, algorithm, kernel backend,
    (optionally) the job's topology, and the all-to-all (Ulysses) size of a head x sequence hybrid."""

    size: int = 1
    algorithm: str = "hamilton"
    backend: str = "auto"
    topology: str | None = None
    ulysses_size: int = 1


_KEYS = {"size": "CP group size (ranks per group; must divide the world size)",
         "algorithm": f"one of {list(Algorithm.values())}",
         "backend": f"one of {BACKENDS}",
         "topology": "the job's topology such as \"2x4\" (default: $TASP_TOPOLOGY or the launcher)",
         "ulysses_size": "ranks per all-to-all group of a head x sequence hybrid (DeepSpeed-Ulysses inside, "
                         "the algorithm across); must divide size and the attention heads; default 1"}


def _check_section(section: Any) -> ContextParallelConfig:
    """Validate the section's keys and values; errors name the key and the accepted values."""
    if not isinstance(section, dict):
        raise TypeError(f'"{SECTION}" must be an object such as {{"size": 8, "algorithm": "hamilton"}}, '
                         f"got {type(section).__name__}")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        allowed = "; ".join(f'"{k}": {v}' for k, v in _KEYS.items())
        raise ValueError(f'unknown key(s) {unknown} in "{SECTION}"; allowed keys: {allowed}')
    cfg = ContextParallelConfig(**section)
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or cfg.size < 1:
        raise ValueError(f'"{SECTION}.size" must be a positive integer, got {cfg.size!r}')
    if isinstance(cfg.ulysses_size, bool) or not isinstance(cfg.ulysses_size, int) or cfg.ulysses_size < 1 \
            or cfg.size % cfg.ulysses_size:
        raise ValueError(f'"{SECTION}.ulysses_size" must be a positive integer that divides "{SECTION}.size" = '
                         f"{cfg.size}, got {cfg.ulysses_size!r}")
    if cfg.algorithm not in Algorithm.values():
        raise ValueError(f'"{SECTION}.algorithm" must be one of {list(Algorithm.values())}, got {cfg.algorithm!r}')
    if cfg.backend not in BACKENDS:
        raise ValueError(f'"{SECTION}.backend" must be one of {BACKENDS}, got {cfg.backend!r}')
    if cfg.topology is not None:
        if not isinstance(cfg.topology, str):
            raise TypeError(f'"{SECTION}.topology" must be a string such as "2x4", got {cfg.topology!r}')
        Topology.parse(cfg.topology)
    return cfg


def _check_compatible(cfg: ContextParallelConfig, ds_config: dict, world_size: int | None) -> None:
    """Reject settings that contradict the CP section: wrong world size, DeepSpeed's own SP mesh, or the
    ZeRO-3 gradient path whose scaling over CP ranks differs from the one we compensate for."""
    if world_size is not None and world_size % cfg.size:
        raise ValueError(f'"{SECTION}.size" = {cfg.size} does not divide the world size {world_size}; '
                         f"use a divisor of {world_size} or launch a multiple of {cfg.size} processes")
    if cfg.size == 1:
        return
    for key in ("sequence_parallel_size", "data_parallel_size"):
        if key in ds_config:
            raise ValueError(f'remove "{key}" from the DeepSpeed config: "{SECTION}.size" sets the '
                             "sequence/data-parallel split (DeepSpeed's own mesh does not reduce gradients "
                             "over sequence-parallel ranks)")
    zero = ds_config.get("zero_optimization", {})
    if isinstance(zero, dict) and zero.get("stage", 0) == 3 and zero.get("reduce_scatter", True) is False:
        raise ValueError('"zero_optimization.reduce_scatter": false is not supported with context parallelism '
                         "under ZeRO-3 (that path scales gradients differently); remove it or set it to true")


def parse_config(ds_config: dict, world_size: int | None = None) -> tuple[ContextParallelConfig, dict]:
    """Split a DeepSpeed config dict into our validated section and a copy without it for DeepSpeed.

    ``world_size`` (when known) is checked to be a multiple of the CP size.
    """
    if not isinstance(ds_config, dict):
        raise TypeError(f"ds_config must be a dict, got {type(ds_config).__name__}")
    rest = copy.deepcopy({k: v for k, v in ds_config.items() if k != SECTION})
    cfg = _check_section(ds_config.get(SECTION, {}))
    _check_compatible(cfg, rest, world_size)
    return cfg, rest
