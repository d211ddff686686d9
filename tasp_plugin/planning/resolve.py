"""The one place an algorithm name becomes a schedule: ``resolve(algorithm, topology)`` and the reason."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..schedules import NoHamiltonianDecomposition, NoPathDecomposition, RingSchedule, is_rail_aligned
from .topology import Topology
from .vocabulary import Algorithm, parse_choice

__all__ = ["Resolution", "resolve"]


@dataclass(frozen=True)
class Resolution:
    """What runs for a requested algorithm: the ``schedule``, the concrete ``algorithm`` it is (never
    ``hamilton`` or ``auto``), the ``requested`` one, a one-line ``reason``, and whether a Hamilton
    request ``fell_back`` to a ring because the group has no Hamiltonian decomposition."""

    schedule: RingSchedule
    algorithm: Algorithm
    requested: Algorithm
    reason: str
    fell_back: bool = False

    def describe(self) -> str:
        """One line for logs, e.g. ``hamilton_multinode: 2 nodes x 4 GPUs, 4 cycles`` or ``zigzag (K_4 ...)``."""
        s = self.schedule
        if self.algorithm is Algorithm.HAMILTON_MULTINODE:
            return f"{self.algorithm}: {s.nodes} nodes x {s.gpus_per_node} GPUs, {s.num_cycles} cycles"
        if self.algorithm is Algorithm.HAMILTON_FLAT:
            return f"{self.algorithm}: K_{s.world_size}, {s.num_cycles} cycles"
        return f"{self.algorithm} ({self.reason})" if self.fell_back else f"{self.algorithm}: {s.world_size} ranks"


def resolve(algorithm: Algorithm | str, topology: Topology) -> Resolution:
    """The schedule ``algorithm`` runs on a CP group of this ``topology``, and why.

    ``hamilton`` (and ``auto`` where no cost model decides) rule: several nodes with an equal number m of
    GPUs, where m has a path decomposition (m != 3, 5) -> multi-node (m-K_m-m)^u (one NIC hop per GPU and
    step, rail-aligned); otherwise the flat K_n decomposition (one all-to-all per step); n = 4 or 6, where
    none exists -> zigzag ring. ``hamilton_flat`` / ``hamilton_multinode`` force one kind and raise where
    it does not exist. Cached: attention asks on every layer, and building a schedule costs ms at n = 64.
    """
    return _resolve(parse_choice(Algorithm, algorithm, "algorithm"), topology)


@functools.lru_cache(maxsize=128)
def _resolve(requested: Algorithm, topology: Topology) -> Resolution:
    n = topology.world_size
    if requested in (Algorithm.RING, Algorithm.ZIGZAG):
        return Resolution(RingSchedule.ring(n), requested, requested, "requested: one ring over the CP group")
    if n == 1:
        return Resolution(RingSchedule.ring(1), Algorithm.ZIGZAG, requested,
                          "a single rank: plain attention, nothing to exchange")
    if requested is Algorithm.HAMILTON_FLAT:
        return _flat(n, requested, "requested: ")
    if requested is Algorithm.HAMILTON_MULTINODE:
        if topology.num_nodes < 2 or topology.gpus_per_node is None:
            raise ValueError(f"algorithm 'hamilton_multinode' needs a CP group on >= 2 nodes of equal size, got "
                             f"{topology}; pass topology= (e.g. '2x4') or set $TASP_TOPOLOGY")
        return _multinode(topology, requested)
    reason = ""
    if topology.num_nodes > 1:
        if topology.gpus_per_node is None:
            reason = f"nodes of unequal size ({topology}): no multi-node schedule; "
        else:
            try:
                return _multinode(topology, requested)
            except NoPathDecomposition as exc:
                reason = f"no multi-node schedule ({exc}); "
    try:
        return _flat(n, requested, reason)
    except NoHamiltonianDecomposition:
        return Resolution(RingSchedule.ring(n), Algorithm.ZIGZAG, requested,
                          f"{reason}K_{n} has no Hamiltonian decomposition (proven for n = 4 and 6): "
                          "zigzag ring instead", fell_back=True)


def _flat(n: int, requested: Algorithm, reason: str) -> Resolution:
    sched = RingSchedule.hamilton(n)
    return Resolution(sched, Algorithm.HAMILTON_FLAT, requested,
                      f"{reason}flat Hamilton over K_{n}: {sched.num_cycles} cycles, each step one all-to-all "
                      "that uses every link once")


def _multinode(topology: Topology, requested: Algorithm) -> Resolution:
    nodes, m = topology.num_nodes, topology.gpus_per_node
    assert m is not None
    sched = RingSchedule.multinode(nodes, m)
    if topology.order() != list(range(topology.world_size)):
        sched = sched.relabeled(topology.order())
    rails = "every inter-node hop stays on its rail" if is_rail_aligned(nodes, m) else (
        "odd node count: each cycle's closing hop crosses rails (local i+m/2 -> i), all others stay on their rail")
    return Resolution(sched, Algorithm.HAMILTON_MULTINODE, requested,
                      f"{nodes} nodes x {m} GPUs: multi-node Hamilton, m-1 chunks over NVLink and one over the NIC "
                      f"per GPU and step; {rails}")
