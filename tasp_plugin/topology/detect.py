"""Which ranks share a node: from an explicit override, the ``TASP_TOPOLOGY`` environment variable (the
topology of the whole job, e.g. ``2x4``, so that CPU processes on one machine can act as several nodes), or
the launcher (hostnames gathered over the group; ``LOCAL_WORLD_SIZE`` where all hosts share one name)."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist

from ..planning import Topology

__all__ = ["TOPOLOGY_ENV", "detect_topology", "resolve_topology", "world_topology"]

TOPOLOGY_ENV = "TASP_TOPOLOGY"
_detected: dict[tuple, Topology] = {}


def _parse(spec: Topology | str, what: str, world_size: int) -> Topology:
    topo = Topology.parse(spec) if isinstance(spec, str) else spec
    if not isinstance(topo, Topology):
        raise TypeError(f"{what} must be a Topology or a string like '2x4', got {type(spec).__name__}")
    if topo.world_size != world_size:
        raise ValueError(f"{what} {topo} describes {topo.world_size} ranks but there are {world_size}")
    return topo


def _gathered_node_ids(group: dist.ProcessGroup | None) -> list:
    """Per rank of ``group``: its node, from host names (or ``LOCAL_WORLD_SIZE`` if all names are equal)."""
    ids: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(ids, (socket.gethostname(), dist.get_rank()), group=group)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    if len({host for host, _ in ids}) == 1 and 0 < local < dist.get_world_size():
        return [g // local for _, g in ids]
    return [host for host, _ in ids]


def resolve_topology(override: Topology | str | None, world_size: int) -> Topology | None:
    """``override`` parsed and checked against a group of ``world_size`` ranks; None if not given."""
    return None if override is None else _parse(override, "topology", world_size)


def world_topology(override: Topology | str | None = None) -> Topology:
    """The topology of the whole job (global ranks). Collective over the default group unless ``override``
    or ``$TASP_TOPOLOGY`` gives it."""
    spec = override if override is not None else os.environ.get(TOPOLOGY_ENV) or None
    if spec is not None:
        return _parse(spec, "topology" if override is not None else f"${TOPOLOGY_ENV}", dist.get_world_size())
    key = ("world", dist.get_world_size())
    if key not in _detected:
        _detected[key] = Topology.from_node_ids(_gathered_node_ids(None))
    return _detected[key]


def detect_topology(group: dist.ProcessGroup | None = None, override: Topology | str | None = None) -> Topology:
    """The CP group's topology in group ranks: ``override`` (for this group), else the job topology of
    ``$TASP_TOPOLOGY`` restricted to the group, else host names gathered over the group (collective the
    first time, then cached per group)."""
    n = dist.get_world_size(group)
    if override is not None:
        return _parse(override, "topology", n)
    if os.environ.get(TOPOLOGY_ENV):
        world = world_topology()
        return Topology.from_node_ids([world.node_of(_global(group, r)) for r in range(n)])
    # keyed by the group's members (not its id, which a later group may reuse)
    key = tuple(dist.get_process_group_ranks(group)) if group is not None else ("world", n)
    if key not in _detected:
        _detected[key] = Topology.from_node_ids(_gathered_node_ids(group))
    return _detected[key]


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank
