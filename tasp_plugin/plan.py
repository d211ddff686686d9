"""Which schedule runs for a CP group, why, and what it puts on each link (used by ``tasp plan``)."""

from __future__ import annotations

from dataclasses import dataclass

from .schedules import NoHamiltonianDecomposition, NoPathDecomposition, RingSchedule, is_rail_aligned

__all__ = ["DTYPE_BYTES", "LinkTraffic", "Plan", "choose_schedule", "link_traffic"]

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


@dataclass(frozen=True)
class Plan:
    """A chosen schedule and the one-line reason for the choice."""

    schedule: RingSchedule
    algorithm: str
    reason: str


def choose_schedule(world_size: int, gpus_per_node: int | None = None) -> Plan:
    """The Hamilton schedule for a CP group of ``world_size`` ranks, ``gpus_per_node`` per node.

    Rule: several nodes with an even number of GPUs each -> multi-node (m-K_m-m)^u (one NIC hop per GPU
    and step); one node (or odd GPUs per node) -> the flat K_n decomposition (one all-to-all per step);
    n = 4 or 6, where no decomposition exists -> zigzag ring.
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    m = gpus_per_node or world_size
    if m < 1 or world_size % m:
        raise ValueError(f"world size {world_size} is not a multiple of gpus per node {m}")
    nodes = world_size // m
    if world_size == 1:
        return Plan(RingSchedule.ring(1), "none", "a single rank: plain attention, nothing to exchange")
    if nodes > 1:
        try:
            sched = RingSchedule.multinode(nodes, m)
            rails = "every inter-node hop stays on its rail" if is_rail_aligned(nodes, m) else (
                "odd node count: each cycle's closing hop crosses rails (local i+m/2 -> i), all others stay on their rail")
            return Plan(sched, "hamilton_multinode",
                        f"{nodes} nodes x {m} GPUs: multi-node Hamilton, m-1 chunks over NVLink and one over the NIC "
                        f"per GPU and step; {rails}")
        except NoPathDecomposition as exc:
            multinode_reason = f"no multi-node schedule ({exc}); "
    else:
        multinode_reason = ""
    try:
        sched = RingSchedule.hamilton(world_size)
        return Plan(sched, "hamilton_flat",
                    f"{multinode_reason}flat Hamilton over K_{world_size}: {sched.num_cycles} cycles, each step one "
                    "all-to-all that uses every link once")
    except NoHamiltonianDecomposition:
        return Plan(RingSchedule.ring(world_size), "zigzag",
                    f"{multinode_reason}K_{world_size} has no Hamiltonian decomposition (proven for n = 4 and 6): "
                    "zigzag ring instead")


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
    chunk = kv_bytes_per_rank / schedule.num_cycles
    intra: dict[int, int] = {}
    inter: dict[int, int] = {}
    for _, dst, _ in schedule.peers(rank):
        if dst == rank:
            continue
        target = intra if dst // gpus_per_node == rank // gpus_per_node else inter
        target[dst] = target.get(dst, 0) + round(chunk)
    return LinkTraffic(intra, inter)
