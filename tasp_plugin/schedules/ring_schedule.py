"""`RingSchedule`: the value the attention engine consumes, i.e. cycles plus the routing tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .decomposition import hamiltonian_decomposition
from .multinode import multinode_cycles
from .validation import validate_cycles

__all__ = ["RingSchedule"]


@dataclass(frozen=True)
class RingSchedule:
    """``c`` directed cycles over ``world_size`` ranks; chunk ``j`` of every rank travels on cycle ``j``.

    After ``world_size - 1`` hops every rank has held chunk ``j`` of every other rank, for every ``j``.
    ``kind`` is ``"ring"``, ``"hamilton_flat"``, ``"hamilton_multinode"`` (the ``Algorithm`` words of the
    schedules they are) or ``"custom"``; ``nodes`` and
    ``gpus_per_node`` describe the nodes a multi-node schedule was built for, ``node_ids`` (if set) the
    node of each rank where ranks of a node are not numbered consecutively.
    """

    world_size: int
    cycles: tuple[tuple[int, ...], ...]
    kind: str = "custom"
    nodes: int = 1
    gpus_per_node: int = 0
    node_ids: tuple[int, ...] = ()
    _pos: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cycles = tuple(tuple(c) for c in self.cycles)
        validate_cycles(cycles, self.world_size)
        object.__setattr__(self, "cycles", cycles)
        if not self.gpus_per_node:
            object.__setattr__(self, "gpus_per_node", self.world_size)
        pos = []
        for cyc in cycles:
            row = [0] * self.world_size
            for p, r in enumerate(cyc):
                row[r] = p
            pos.append(tuple(row))
        object.__setattr__(self, "_pos", tuple(pos))

    # constructors -----------------------------------------------------------------------------
    @classmethod
    def from_cycles(cls, cycles: Sequence[Sequence[int]], kind: str = "custom") -> RingSchedule:
        """Wrap any validated set of arc-disjoint Hamiltonian cycles."""
        if not cycles:
            raise ValueError("a schedule needs at least one cycle")
        return cls(len(cycles[0]), tuple(tuple(c) for c in cycles), kind)

    @classmethod
    def ring(cls, n: int) -> RingSchedule:
        """One cycle ``0 -> 1 -> ... -> n-1 -> 0`` (ring attention; zigzag ring on zigzag shards)."""
        if n < 1:
            raise ValueError(f"world size must be >= 1, got {n}")
        return cls(n, (tuple(range(n)),), "ring")

    @classmethod
    def hamilton(cls, n: int) -> RingSchedule:
        """The n-1 cycles of a Hamiltonian decomposition of K*_n (every step is one all-to-all)."""
        return cls(n, tuple(tuple(c) for c in hamiltonian_decomposition(n)), "hamilton_flat")

    @classmethod
    def multinode(cls, nodes: int, gpus_per_node: int) -> RingSchedule:
        """The (m-K_m-m)^u cycles: m-1 chunks over NVLink and one over the NIC per GPU and step."""
        cycles = multinode_cycles(nodes, gpus_per_node)
        return cls(nodes * gpus_per_node, tuple(tuple(c) for c in cycles), "hamilton_multinode", nodes,
                   gpus_per_node)

    # routing ------------------------------------------------------------------------------------
    @property
    def num_cycles(self) -> int:
        """Number of cycles ``c`` = number of chunks each rank cuts its K/V into."""
        return len(self.cycles)

    @property
    def num_steps(self) -> int:
        """Compute steps per attention call: the own chunk plus ``world_size - 1`` received ones."""
        return self.world_size

    def successor(self, rank: int, cycle: int) -> int:
        """The rank that ``rank`` sends to on ``cycle``."""
        cyc = self.cycles[cycle]
        return cyc[(self._pos[cycle][rank] + 1) % self.world_size]

    def predecessor(self, rank: int, cycle: int) -> int:
        """The rank that ``rank`` receives from on ``cycle``."""
        cyc = self.cycles[cycle]
        return cyc[(self._pos[cycle][rank] - 1) % self.world_size]

    def source(self, rank: int, cycle: int, step: int) -> int:
        """Original owner of the chunk that ``rank`` holds on ``cycle`` at ``step`` (step 0: its own)."""
        cyc = self.cycles[cycle]
        return cyc[(self._pos[cycle][rank] - step) % self.world_size]

    def peers(self, rank: int) -> list[tuple[int, int, int]]:
        """``(cycle, send_to, recv_from)`` for each cycle: one step's exchange of ``rank``."""
        return [(c, self.successor(rank, c), self.predecessor(rank, c)) for c in range(self.num_cycles)]

    def node_of(self, rank: int) -> int:
        """Node index of ``rank`` among the nodes the schedule was built for."""
        return self.node_ids[rank] if self.node_ids else rank // self.gpus_per_node

    def relabeled(self, ranks: Sequence[int]) -> RingSchedule:
        """The same schedule with rank ``i`` renamed ``ranks[i]`` (a permutation): for a multi-node group
        whose node members are not consecutive group ranks."""
        if sorted(ranks) != list(range(self.world_size)):
            raise ValueError(f"ranks must be a permutation of 0..{self.world_size - 1}, got {list(ranks)}")
        node_ids = [0] * self.world_size
        for i, r in enumerate(ranks):
            node_ids[r] = self.node_of(i)
        cycles = tuple(tuple(ranks[v] for v in cyc) for cyc in self.cycles)
        return RingSchedule(self.world_size, cycles, self.kind, self.nodes, self.gpus_per_node, tuple(node_ids))
