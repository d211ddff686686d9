"""Head x sequence (Ulysses x ring) split of a CP group, as pure data.

A CP group of ``n = ulysses * ring`` ranks is cut into all-to-all groups of ``ulysses`` consecutive ranks
(NVLink peers inside a node) and ring groups of ``ring`` ranks, one from each all-to-all group (one GPU per
rail across nodes). The all-to-all swaps this rank's sequence shard of all heads for its all-to-all group's
sequence of ``1 / ulysses`` of the heads; the ring schedule then runs over the ring group.

Why the sequence stays zigzag: with zigzag sharding over all ``n`` ranks (rank ``i`` holds chunks ``i`` and
``2n - 1 - i`` of ``2n``), the all-to-all group of ring position ``p`` holds chunks ``p*u .. p*u + u - 1`` and
their mirror images. Gathered as ``[front pieces of ranks 0..u-1 | back pieces of ranks u-1..0]`` these are
chunks ``p`` and ``2r - 1 - p`` of ``2r``: exactly the zigzag shard of ring position ``p`` over ``r`` ranks,
so the ring engine and its causal masks need nothing new. Packed documents are sharded per document the
same way (Megatron-core's convention), so the same gathering per document keeps them right too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .topology import Topology

__all__ = ["HybridLayout"]


@dataclass(frozen=True)
class HybridLayout:
    """``ulysses`` x ``ring`` ranks; rank ``i`` is all-to-all rank ``i % ulysses`` at ring position
    ``i // ulysses``."""

    ulysses: int
    ring: int

    @classmethod
    def of(cls, world_size: int, ulysses: int) -> HybridLayout:
        """The split of ``world_size`` ranks with all-to-all groups of ``ulysses``; ``ValueError`` unless it
        divides the group."""
        if isinstance(ulysses, bool) or not isinstance(ulysses, int) or ulysses < 1:
            raise ValueError(f"ulysses_size must be a positive integer, got {ulysses!r}")
        if world_size % ulysses:
            raise ValueError(f"ulysses_size {ulysses} does not divide the CP group of {world_size} ranks")
        return cls(ulysses, world_size // ulysses)

    @property
    def world_size(self) -> int:
        return self.ulysses * self.ring

    def a2a_members(self, rank: int) -> tuple[int, ...]:
        """CP ranks of ``rank``'s all-to-all group (consecutive), in all-to-all rank order."""
        start = rank - rank % self.ulysses
        return tuple(range(start, start + self.ulysses))

    def ring_members(self, rank: int) -> tuple[int, ...]:
        """CP ranks of ``rank``'s ring group (one per all-to-all group), in ring position order."""
        return tuple(range(rank % self.ulysses, self.world_size, self.ulysses))

    def ring_topologies(self, whole: Topology) -> tuple[Topology, ...]:
        """Which members of each ring group (all-to-all rank ``j``'s, in ``j`` order) share a node, from the
        CP group's topology ``whole``."""
        return tuple(Topology.from_node_ids([whole.node_of(m) for m in self.ring_members(j)])
                     for j in range(self.ulysses))

    def a2a_node_span(self, whole: Topology) -> int:
        """The most nodes any all-to-all group spans (1: every all-to-all stays on one node's links)."""
        return max(len({whole.node_of(m) for m in self.a2a_members(p * self.ulysses)}) for p in range(self.ring))

    def gathered_pieces(self) -> tuple[tuple[int, int], ...]:
        """After the all-to-all, the local sequence as ``(all-to-all rank, half)`` pieces in order: the front
        halves (half 0) of ranks ``0..u-1``, then the back halves (half 1) of ranks ``u-1..0``."""
        front = tuple((j, 0) for j in range(self.ulysses))
        back = tuple((j, 1) for j in reversed(range(self.ulysses)))
        return front + back

    def gather_order(self, local_lengths: Sequence[int]) -> list[int]:
        """Rows of the ring group's zigzag shard, as indices into the all-to-all's received rows (rank
        ``0``'s local rows, then rank ``1``'s, ...). ``local_lengths`` are one rank's rows per document (one
        entry, the local sequence, when nothing is packed; each even: a front and a back piece): every
        document is gathered as :meth:`gathered_pieces` says, documents in order."""
        total = sum(local_lengths)
        order: list[int] = []
        start = 0
        for length in local_lengths:
            if length % 2:
                raise ValueError(f"a document's local rows must be even (front and back pieces), got {length}")
            half = length // 2
            for j, part in self.gathered_pieces():
                first = j * total + start + part * half
                order.extend(range(first, first + half))
            start += length
        return order

    def kv_repeats(self, heads: int, kv_heads: int) -> int:
        """How often each K/V head is repeated before the all-to-all so every rank gets whole K/V heads for
        its ``heads / ulysses`` query heads: 1 when ``ulysses`` divides ``kv_heads``, else
        ``ulysses / kv_heads`` (GQA with fewer K/V heads than the all-to-all size). ``ValueError`` otherwise."""
        u = self.ulysses
        if heads % u:
            raise ValueError(f"ulysses_size {u} must divide the {heads} query heads")
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"the {kv_heads} K/V heads must divide the {heads} query heads")
        if kv_heads % u == 0:
            return 1
        if u % kv_heads:
            raise ValueError(f"ulysses_size {u} and the {kv_heads} K/V heads: one must divide the other")
        return u // kv_heads
