"""The process-group builder: CP groups in Megatron-core's or DeepSpeed's rank order, and inside each
CP group one intra-node group per node and one inter-node group per rail (same local index on every
node). Every rank creates every group in the same order, as ``new_group`` requires."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.distributed as dist

from ..planning import Topology
from .detect import world_topology
from .gather import gather_objects

__all__ = ["CPGroups", "ORDERS", "build_cp_groups", "build_subgroups", "cp_rank_lists", "subgroup_rank_lists"]

ORDERS = ("megatron", "deepspeed")


def cp_rank_lists(world_size: int, cp_size: int, *, tp_size: int = 1, pp_size: int = 1,
                  order: str = "megatron") -> list[list[int]]:
    """Global ranks of every CP group. ``megatron``: ranks ordered tensor, context, (expert,) data,
    pipeline, so a CP group strides by ``tp_size``; ``deepspeed``: consecutive blocks of ``cp_size``."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
    for name, value in (("cp_size", cp_size), ("tp_size", tp_size), ("pp_size", pp_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if world_size % (cp_size * tp_size * pp_size):
        raise ValueError(f"world size {world_size} is not divisible by cp_size * tp_size * pp_size = "
                         f"{cp_size * tp_size * pp_size}")
    if order == "deepspeed":
        if tp_size != 1 or pp_size != 1:
            raise ValueError("order='deepspeed' lays out consecutive CP groups; tp_size and pp_size must be 1")
        return [list(range(g, g + cp_size)) for g in range(0, world_size, cp_size)]
    dp_size = world_size // (cp_size * tp_size * pp_size)
    return [[t + tp_size * (c + cp_size * (d + dp_size * p)) for c in range(cp_size)]
            for p in range(pp_size) for d in range(dp_size) for t in range(tp_size)]


def subgroup_rank_lists(cp_ranks: Sequence[int], node_of: Callable[[int], int]
                        ) -> tuple[Topology, list[list[int]], list[list[int]]]:
    """For one CP group (global ranks): its topology in group ranks, the intra-node groups and the rails
    (global ranks). No rails on one node; nodes of unequal size have rails only for the common indices."""
    topo = Topology.from_node_ids([node_of(g) for g in cp_ranks])
    intra = [[cp_ranks[r] for r in node] for node in topo.nodes]
    if topo.num_nodes == 1:
        return topo, intra, []
    width = min(len(node) for node in topo.nodes)
    return topo, intra, [[cp_ranks[node[i]] for node in topo.nodes] for i in range(width)]


@dataclass(frozen=True)
class CPGroups:
    """This rank's CP group with its topology, and its intra-node and rail groups (None where absent)."""

    cp: dist.ProcessGroup
    cp_ranks: tuple[int, ...]
    topology: Topology
    intra: dist.ProcessGroup | None
    inter: dist.ProcessGroup | None
    intra_ranks: tuple[int, ...] = ()
    inter_ranks: tuple[int, ...] = ()

    def route(self, peer: int) -> dist.ProcessGroup:
        """The communicator for traffic to CP-group rank ``peer``: intra-node, the rail, or the CP group."""
        g = self.cp_ranks[peer]
        if self.intra is not None and g in self.intra_ranks:
            return self.intra
        if self.inter is not None and g in self.inter_ranks:
            return self.inter
        return self.cp


def _create(lists: list[list[int]], me: int,
            backend: str | None) -> tuple[dist.ProcessGroup | None, tuple[int, ...]]:
    """Create every group (same order on every rank); return this rank's (group, ranks) or (None, ())."""
    mine: tuple[dist.ProcessGroup | None, tuple[int, ...]] = (None, ())
    for ranks in lists:
        group = dist.new_group(ranks, backend=backend)
        if me in ranks:
            mine = (group, tuple(ranks))
    return mine


def _build(cp_lists: list[list[int]], cp_group: dist.ProcessGroup | None, node_of: Callable[[int], int],
           backend: str | None) -> CPGroups:
    me = dist.get_rank()
    created_cp, cp_ranks = _create(cp_lists, me, backend) if cp_group is None else (cp_group, ())
    assert created_cp is not None, "cp_rank_lists puts every rank in one CP group"
    cp_ranks = cp_ranks or next(tuple(r) for r in cp_lists if me in r)
    plans = [subgroup_rank_lists(r, node_of) for r in cp_lists]
    intra, intra_ranks = _create([g for _, i, _ in plans for g in i if len(g) > 1], me, backend)
    inter, inter_ranks = _create([g for _, _, rails in plans for g in rails], me, backend)
    topo = plans[cp_lists.index(list(cp_ranks))][0]
    return CPGroups(created_cp, cp_ranks, topo, intra, inter, intra_ranks, inter_ranks)


def build_cp_groups(cp_size: int, *, tp_size: int = 1, pp_size: int = 1, order: str = "megatron",
                    topology: Topology | str | None = None, backend: str | None = None) -> CPGroups:
    """Create all CP groups and their sub-groups (collective over the default group; every rank must
    call it). ``topology`` describes the whole job (default: ``$TASP_TOPOLOGY`` or the launcher)."""
    lists = cp_rank_lists(dist.get_world_size(), cp_size, tp_size=tp_size, pp_size=pp_size, order=order)
    world = world_topology(topology)
    return _build(lists, None, world.node_of, backend)


def build_subgroups(cp_group: dist.ProcessGroup, *, topology: Topology | str | None = None,
                    backend: str | None = None) -> CPGroups:
    """Sub-groups for an existing CP group (e.g. Megatron's): learns every rank's CP group with one
    all-gather over the default group, then creates the sub-groups in the same order everywhere."""
    mine = [dist.get_global_rank(cp_group, r) for r in range(dist.get_world_size(cp_group))]
    everyone = gather_objects(mine)
    lists = sorted({tuple(r) for r in everyone})
    world = world_topology(topology)
    return _build([list(r) for r in lists], cp_group, world.node_of, backend)
