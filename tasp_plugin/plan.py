"""Which schedule runs for a CP group, why, and what it puts on each link (used by ``tasp plan``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .costmodel import step_sends
from .schedules import NoHamiltonianDecomposition, NoPathDecomposition, RingSchedule, is_rail_aligned
from .topology import Topology

__all__ = ["DTYPE_BYTES", "LinkTraffic", "Plan", "choose_schedule", "link_traffic", "schedule_for"]

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


@dataclass(frozen=True)
class Plan:
    """A chosen schedule and the one-line reason for the choice."""

    schedule: RingSchedule
    algorithm: str
    reason: str


def choose_schedule(world_size: int, gpus_per_node: int | None = None) -> Plan:
    """The Hamilton schedule for ``world_size`` ranks on nodes of ``gpus_per_node`` consecutive ranks."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    m = world_size if gpus_per_node is None else gpus_per_node
    if m < 1 or world_size % m:
        raise ValueError(f"world size {world_size} is not a multiple of gpus per node {m}")
    return schedule_for("hamilton", Topology.uniform(world_size // m, m))


@functools.lru_cache(maxsize=128)
def schedule_for(algorithm: str, topology: Topology) -> Plan:
    """The schedule an ``algorithm`` runs on a CP group of this ``topology``, and why.

    ``hamilton`` (and ``auto``) rule: several nodes with an equal number m of GPUs, where m has a path
    decomposition (m != 3, 5) -> multi-node (m-K_m-m)^u (one NIC hop per GPU and step, rail-aligned);
    otherwise the flat K_n decomposition (one all-to-all per step); n = 4 or 6, where none exists -> zigzag
    ring. ``hamilton_flat`` / ``hamilton_multinode`` force one kind and raise where it does not exist.
    Cached: the attention call asks for it on every layer, and building and validating a schedule costs
    milliseconds at n = 64.
    """
    n = topology.world_size
    if algorithm in ("ring", "zigzag"):
        return Plan(RingSchedule.ring(n), algorithm, "requested: one ring over the CP group")
    if n == 1:
        return Plan(RingSchedule.ring(1), "none", "a single rank: plain attention, nothing to exchange")
    if algorithm == "hamilton_flat":
        return _flat(n, "requested: ")
    if algorithm == "hamilton_multinode":
        m = topology.gpus_per_node
        if topology.num_nodes < 2 or m is None:
            raise ValueError(f"algorithm 'hamilton_multinode' needs a CP group on >= 2 nodes of equal size, got "
                             f"{topology}; pass topology= (e.g. '2x4') or set $TASP_TOPOLOGY")
        return _multinode(topology)
    reason = ""
    if topology.num_nodes > 1:
        if topology.gpus_per_node is None:
            reason = f"nodes of unequal size ({topology}): no multi-node schedule; "
        else:
            try:
                return _multinode(topology)
            except NoPathDecomposition as exc:
                reason = f"no multi-node schedule ({exc}); "
    try:
        return _flat(n, reason)
    except NoHamiltonianDecomposition:
        return Plan(RingSchedule.ring(n), "zigzag",
                    f"{reason}K_{n} has no Hamiltonian decomposition (proven for n = 4 and 6): zigzag ring instead")


def _flat(n: int, reason: str) -> Plan:
    sched = RingSchedule.hamilton(n)
    return Plan(sched, "hamilton_flat", f"{reason}flat Hamilton over K_{n}: {sched.num_cycles} cycles, each step "
                "one all-to-all that uses every link once")


def _multinode(topology: Topology) -> Plan:
    nodes, m = topology.num_nodes, topology.gpus_per_node
    sched = RingSchedule.multinode(nodes, m)
    if topology.order() != list(range(topology.world_size)):
        sched = sched.relabeled(topology.order())
    rails = "every inter-node hop stays on its rail" if is_rail_aligned(nodes, m) else (
        "odd node count: each cycle's closing hop crosses rails (local i+m/2 -> i), all others stay on their rail")
    return Plan(sched, "hamilton_multinode",
                f"{nodes} nodes x {m} GPUs: multi-node Hamilton, m-1 chunks over NVLink and one over the NIC per "
                f"GPU and step; {rails}")


@dataclass(frozen=True)
class LinkTraffic:
    """Bytes one rank sends per step: per peer inside its node and per peer across nodes (NIC)."""

    intra_peers: dict[int, int]
    inter_peers: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.intra_peers.values()) + sum(self.inter_peers.values())


def link_traffic(schedule: RingSchedule, rank: int, kv_bytes_per_rank: int, gpus_per_node: int) -> LinkTraffic:
    """Bytes ``rank`` sends to each peer per step (its local K/V split evenly over the cycles), split into
    peers on its own node and peers reached over the NIC for nodes of ``gpus_per_node`` ranks."""
    node_of = schedule.node_of if schedule.node_ids else (lambda r: r // gpus_per_node)
    intra: dict[int, int] = {}
    inter: dict[int, int] = {}
    for dst, nbytes in step_sends(schedule, rank, kv_bytes_per_rank).items():
        (intra if node_of(dst) == node_of(rank) else inter)[dst] = round(nbytes)
    return LinkTraffic(intra, inter)
