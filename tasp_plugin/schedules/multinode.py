"""The (m-K_m-m)^u schedule: m cycles through u nodes of m GPUs, each node crossed by a Hamiltonian path.

Global rank ``node * m + local``. Cycle ``j`` enters node 0 at local ``j``, walks the node's path that
starts there, hops over the NIC to the next node at the *same* local index the path ended on (the same
rail), and so on. With the zig-zag path family a path from local ``s`` ends at ``s + m/2``, so after
``u`` nodes the cycle is back on its starting rail exactly when ``u`` is even: every hop is rail-aligned
for even ``u``; for odd ``u`` the closing hop (last node -> node 0) goes from local ``j + m/2`` to local
``j``, i.e. crosses between two rails, and every other hop stays on its rail. (No path family can avoid
that for m = 2, whose paths all swap the two GPUs.)
"""

from __future__ import annotations

from functools import cache

from .decomposition import hamiltonian_path_decomposition
from .validation import ScheduleError, validate_cycles

__all__ = ["multinode_cycles", "multinode_links", "is_rail_aligned"]


def multinode_links(nodes: int, gpus_per_node: int) -> set[tuple[int, int]]:
    """Arcs a multi-node schedule may use: any pair inside a node, and node t -> node t+1 (mod u)."""
    m = gpus_per_node
    links = {(t * m + a, t * m + b) for t in range(nodes) for a in range(m) for b in range(m) if a != b}
    links |= {(t * m + a, ((t + 1) % nodes) * m + b) for t in range(nodes) for a in range(m) for b in range(m)}
    return links


def is_rail_aligned(nodes: int, gpus_per_node: int) -> bool:
    """Whether every inter-node hop of :func:`multinode_cycles` stays on its rail (local i -> local i)."""
    paths = hamiltonian_path_decomposition(gpus_per_node)
    return all(_walk(paths, j, nodes)[1] == j for j in range(gpus_per_node))


def _walk(paths: list[list[int]], start: int, nodes: int) -> tuple[list[int], int]:
    """Follow the path family through ``nodes`` nodes from local ``start``; return cycle and final local."""
    m = len(paths)
    by_start = {p[0]: p for p in paths}
    cycle: list[int] = []
    local = start
    for t in range(nodes):
        path = by_start[local]
        cycle.extend(t * m + x for x in path)
        local = path[-1]
    return cycle, local


@cache
def _multinode(nodes: int, gpus_per_node: int) -> tuple[tuple[int, ...], ...]:
    paths = hamiltonian_path_decomposition(gpus_per_node)
    cycles = [_walk(paths, j, nodes)[0] for j in range(gpus_per_node)]
    n = nodes * gpus_per_node
    validate_cycles(cycles, n, allowed_arcs=multinode_links(nodes, gpus_per_node))
    nic_out = [0] * n
    for cyc in cycles:
        for pos, a in enumerate(cyc):
            if a // gpus_per_node != cyc[(pos + 1) % n] // gpus_per_node:
                nic_out[a] += 1
    if any(k != 1 for k in nic_out):
        raise ScheduleError(f"every GPU must send exactly one chunk over its NIC per step, got {nic_out}")
    return tuple(tuple(c) for c in cycles)


def multinode_cycles(nodes: int, gpus_per_node: int) -> list[list[int]]:
    """The ``gpus_per_node`` cycles of the (m-K_m-m)^u schedule over ``nodes * gpus_per_node`` ranks.

    Each step every GPU sends m-1 chunks to GPUs of its own node and exactly one to the next node.
    """
    if not isinstance(nodes, int) or nodes < 2:
        raise ValueError(f"a multi-node schedule needs nodes >= 2, got {nodes!r}")
    if not isinstance(gpus_per_node, int) or gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node!r}")
    return [list(c) for c in _multinode(nodes, gpus_per_node)]
