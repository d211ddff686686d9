"""``Topology``: which ranks of a CP group share a node (a value; detection lives in ``tasp_plugin.topology``)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["Topology"]


@dataclass(frozen=True)
class Topology:
    """The nodes of a CP group: ``nodes[k]`` lists the group ranks on node ``k`` (node order: by lowest
    rank). One node means a full NVLink/NVSwitch mesh; several mean intra-node links plus one NIC per GPU."""

    nodes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        nodes = tuple(tuple(sorted(n)) for n in self.nodes)
        flat = sorted(r for n in nodes for r in n)
        if not nodes or any(not n for n in nodes) or flat != list(range(len(flat))):
            raise ValueError(f"nodes must partition the ranks 0..n-1 into non-empty nodes, got {self.nodes}")
        object.__setattr__(self, "nodes", tuple(sorted(nodes)))

    @classmethod
    def uniform(cls, nodes: int, gpus_per_node: int) -> Topology:
        """``nodes`` nodes of ``gpus_per_node`` consecutive ranks each."""
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError(f"nodes and gpus_per_node must be >= 1, got {nodes} and {gpus_per_node}")
        return cls(tuple(tuple(range(k * gpus_per_node, (k + 1) * gpus_per_node)) for k in range(nodes)))

    @classmethod
    def parse(cls, spec: str) -> Topology:
        """``"NODESxGPUS"``, e.g. ``"2x4"``: two nodes of four consecutive ranks."""
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
        if not match:
            raise ValueError(f"topology spec must look like '2x4' (nodes x GPUs per node), got {spec!r}")
        return cls.uniform(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_node_ids(cls, ids: Sequence[Hashable]) -> Topology:
        """Group ranks by a per-rank node identifier (hostname, node index, ...)."""
        by_id: dict[Hashable, list[int]] = {}
        for rank, node in enumerate(ids):
            by_id.setdefault(node, []).append(rank)
        return cls(tuple(tuple(r) for r in by_id.values()))

    @property
    def world_size(self) -> int:
        return sum(len(n) for n in self.nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def gpus_per_node(self) -> int | None:
        """GPUs per node, or None if nodes differ in size."""
        sizes = {len(n) for n in self.nodes}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def link(self) -> str:
        """``"single_node"`` (one NVLink/NVSwitch domain) or ``"multi_node"``."""
        return "single_node" if self.num_nodes == 1 else "multi_node"

    def node_of(self, rank: int) -> int:
        return next(k for k, n in enumerate(self.nodes) if rank in n)

    def local_index(self, rank: int) -> int:
        """Position of ``rank`` among its node's ranks (its rail)."""
        return self.nodes[self.node_of(rank)].index(rank)

    def order(self) -> list[int]:
        """Group ranks node by node: rank ``k * m + i`` of consecutively numbered nodes is ``order()[k * m + i]``."""
        return [r for n in self.nodes for r in n]

    def __str__(self) -> str:
        m = self.gpus_per_node
        return f"{self.num_nodes}x{m}" if m is not None else "nodes of " + "+".join(str(len(n)) for n in self.nodes)
