"""The routing helpers the reference system documents, same names and meaning, as views of the schedule
layer. Cycles ("looping") are vertex lists; data flows from each entry to the next.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..schedules import RingSchedule, hamiltonian_decomposition, hamiltonian_path_decomposition, multinode_cycles

__all__ = [
    "gen_hamilton_circle",
    "gen_hamilton_path_local",
    "gen_hamilton_circle_two_nodes",
    "calculate_out_mapping_circle",
    "calculate_in_mapping_circle",
    "calculate_intra_node_out_mapping_two_nodes",
    "calculate_intra_node_in_mapping_two_nodes",
    "calculate_inter_node_mapping",
    "calculate_source_rank_per_iter",
]


def gen_hamilton_circle(n: int) -> list[list[int]]:
    """n-1 arc-disjoint Hamiltonian cycles of K*_n (any n >= 2 except 4 and 6)."""
    return hamiltonian_decomposition(n)


def gen_hamilton_path_local(n: int) -> list[list[int]]:
    """n Hamiltonian paths of one node's K*_n; path i starts at local rank i."""
    return hamiltonian_path_decomposition(n)


def gen_hamilton_circle_two_nodes(n: int, gpus_per_node: int = 8) -> list[list[int]]:
    """The (m-K_m-m)^u cycles over n = u * m ranks (any node count u >= 2; the reference: m = 8, u = 2)."""
    if n % gpus_per_node:
        raise ValueError(f"n = {n} is not a multiple of gpus_per_node = {gpus_per_node}")
    return multinode_cycles(n // gpus_per_node, gpus_per_node)


def _arc_table(arcs: Sequence[Sequence[int]], n: int, incoming: bool, closed: bool) -> list[list[int]]:
    """``table[a][b]`` = index of the cycle/path with arc a->b (or b->a if ``incoming``), else -1."""
    table = [[-1] * n for _ in range(n)]
    for idx, seq in enumerate(arcs):
        # closed: n arcs (last -> first included); open path: n - 1 arcs, so zip stops at the shorter list
        pairs = zip(seq, list(seq[1:]) + ([seq[0]] if closed else []), strict=False)
        for a, b in pairs:
            if incoming:
                table[b][a] = idx
            else:
                table[a][b] = idx
    return table


def calculate_out_mapping_circle(looping: Sequence[Sequence[int]]) -> list[list[int]]:
    """``mapping[a][b]``: the cycle (= K/V chunk index) on which rank a sends to rank b; -1 if none."""
    schedule = RingSchedule.from_cycles(looping)
    return _arc_table(schedule.cycles, schedule.world_size, incoming=False, closed=True)


def calculate_in_mapping_circle(looping: Sequence[Sequence[int]]) -> list[list[int]]:
    """``mapping[a][b]``: the cycle on which rank a receives from rank b; -1 if none."""
    schedule = RingSchedule.from_cycles(looping)
    return _arc_table(schedule.cycles, schedule.world_size, incoming=True, closed=True)


def calculate_intra_node_out_mapping_two_nodes(path0: Sequence[Sequence[int]]) -> list[list[int]]:
    """``mapping[a][b]``: the path (chunk) on which local rank a sends to local rank b inside a node."""
    return _arc_table(path0, len(path0[0]), incoming=False, closed=False)


def calculate_intra_node_in_mapping_two_nodes(path0: Sequence[Sequence[int]]) -> list[list[int]]:
    """``mapping[a][b]``: the path (chunk) on which local rank a receives from local rank b."""
    return _arc_table(path0, len(path0[0]), incoming=True, closed=False)


def calculate_inter_node_mapping(
    looping: Sequence[Sequence[int]],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per global rank, its one NIC hop of a multi-node schedule: ``(in_mapping, out_mapping)`` with
    ``in_mapping[r] = (sender, chunk)`` and ``out_mapping[r] = (receiver, chunk)``.

    The number of cycles is the number of GPUs per node, as in the (m-K_m-m)^u schedule.
    """
    schedule = RingSchedule.from_cycles(looping)
    m, n = schedule.num_cycles, schedule.world_size
    if n % m:
        raise ValueError(f"{m} cycles over {n} ranks is not an (m-K_m-m)^u schedule")
    inbound: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    outbound: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for r in range(n):
        for c, dst, src in schedule.peers(r):
            if dst // m != r // m:
                outbound[r].append((dst, c))
            if src // m != r // m:
                inbound[r].append((src, c))
    for r in range(n):
        if len(inbound[r]) != 1 or len(outbound[r]) != 1:
            raise ValueError(f"rank {r} has {len(inbound[r])} inbound and {len(outbound[r])} outbound "
                             "inter-node hops; expected exactly one each")
    return [x[0] for x in inbound], [x[0] for x in outbound]


def calculate_source_rank_per_iter(looping: Sequence[Sequence[int]]) -> list[list[list[bool]]]:
    """``res[rank][step][chunk]``: True when the chunk ``rank`` holds at ``step`` on cycle ``chunk``
    comes from a rank <= ``rank`` (the causal rule's "earlier or own" case)."""
    schedule = RingSchedule.from_cycles(looping)
    n, c = schedule.world_size, schedule.num_cycles
    return [[[schedule.source(r, j, s) <= r for j in range(c)] for s in range(n)] for r in range(n)]
