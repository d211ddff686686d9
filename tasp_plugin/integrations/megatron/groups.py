"""Topology-aware sub-groups of Megatron's CP group: built once, collectively, after
``parallel_state.initialize_model_parallel``; ``TASPCoreAttention`` then routes intra-node and rail
transfers over their own communicators."""

from __future__ import annotations

import torch.distributed as dist
from megatron.core import parallel_state

from ...topology import CPGroups, Topology, build_subgroups

__all__ = ["initialize_tasp_groups", "tasp_groups_for"]

_built: dict[int, CPGroups] = {}


def initialize_tasp_groups(topology: Topology | str | None = None) -> CPGroups | None:
    """Build the per-node and per-rail groups of this rank's Megatron CP group. Every rank must call it
    (it creates groups over the whole job); returns None where CP is 1. ``topology`` describes the whole
    job (default ``$TASP_TOPOLOGY`` or the launcher)."""
    cp = parallel_state.get_context_parallel_group(check_initialized=False)
    if cp is None:
        raise ValueError("initialize_tasp_groups needs parallel_state.initialize_model_parallel to run first")
    if parallel_state.get_context_parallel_world_size() == 1:
        return None  # the same on every rank: CP size is global
    links = build_subgroups(cp, topology=topology)
    _built[id(cp)] = links
    return links


def tasp_groups_for(cp_group: dist.ProcessGroup) -> CPGroups | None:
    """The groups ``initialize_tasp_groups`` built for ``cp_group``, if any."""
    links = _built.get(id(cp_group))
    return links if links is not None and links.cp is cp_group else None
