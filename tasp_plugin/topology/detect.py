"""Which ranks share a node: from an explicit override, the ``TASP_TOPOLOGY`` environment variable (the
topology of the whole job, e.g. ``2x4``, so that CPU processes on one machine can act as several nodes), or
the launcher (hostnames gathered over the group; ``LOCAL_WORLD_SIZE`` where all hosts share one name)."""

from __future__ import annotations

import os
import socket

import torch.distributed as dist

from ..planning import Topology
from .gather import gather_objects

__all__ = ["TOPOLOGY_ENV", "detect_topology", "gathered_node_ids", "resolve_topology", "world_topology"]

TOPOLOGY_ENV = "TASP_TOPOLOGY"
_detected: dict[tuple, Topology] = {}


def _parse(spec: Topology | str, what: str, world_size: int) -> Topology:
    if isinstance(spec, str):
        try:
            topo = Topology.parse(spec)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    else:
        topo = spec
    if not isinstance(topo, Topology):
        raise TypeError(f"{what} must be a Topology or a string like '2x4', got {type(spec).__name__}")
    if topo.world_size != world_size:
        raise ValueError(f"{what} {topo} describes {topo.world_size} ranks but there are {world_size}")
    return topo


def local_world_size() -> int:
    """``$LOCAL_WORLD_SIZE`` (processes per node, set by launchers), 0 if unset; a clear error if malformed."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"$LOCAL_WORLD_SIZE must be a positive integer (processes per node), got {raw!r}")
    return int(raw)


def gathered_node_ids(group: dist.ProcessGroup | None) -> list[str | int]:
    """Per rank of ``group``: its node, from host names (or ``LOCAL_WORLD_SIZE`` if all names are equal).
    Every rank reads its own environment first, then all agree or all raise."""
    try:
        local: int | str = local_world_size()
    except ValueError as exc:
        local = str(exc)
    ids = gather_objects((socket.gethostname(), dist.get_rank(), local), group)
    errors = sorted({str(x) for _, _, x in ids if isinstance(x, str)})
    if errors:
        raise ValueError("; ".join(errors))
    same_host = len({host for host, _, _ in ids}) == 1
    if same_host and len({x for _, _, x in ids}) > 1:  # it decides the nodes only when all hosts look alike
        raise ValueError(f"$LOCAL_WORLD_SIZE differs across the ranks of the group: {[x for _, _, x in ids]}")
    width = ids[0][2]
    assert isinstance(width, int)
    if same_host and 0 < width < dist.get_world_size():
        return [g // width for _, g, _ in ids]
    return [host for host, _, _ in ids]


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
        _detected[key] = Topology.from_node_ids(gathered_node_ids(None))
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
        _detected[key] = Topology.from_node_ids(gathered_node_ids(group))
    return _detected[key]


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    return dist.get_global_rank(group, rank) if group is not None else rank
