"""Bytes a rank sends to each peer per step of a schedule, split by node (for ``tasp plan`` and the
cost model)."""

from __future__ import annotations

from dataclasses import dataclass

from ..schedules import RingSchedule

__all__ = ["DTYPE_BYTES", "LinkTraffic", "link_traffic", "step_sends"]

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}


def step_sends(schedule: RingSchedule, rank: int, nbytes: float) -> dict[int, float]:
    """Bytes ``rank`` sends to each peer in one step when it moves ``nbytes`` split evenly over the cycles."""
    chunk = nbytes / schedule.num_cycles
    sends: dict[int, float] = {}
    for _, dst, _ in schedule.peers(rank):
        if dst != rank:
            sends[dst] = sends.get(dst, 0.0) + chunk
    return sends


@dataclass(frozen=True)
class LinkTraffic:
    """Bytes one rank sends per step: per peer inside its node and per peer across nodes (NIC)."""

    intra_peers: dict[int, int]
    inter_peers: dict[int, int]

    @property
    def total(self) -> int:
        """All bytes of the step."""
        return sum(self.intra_peers.values()) + sum(self.inter_peers.values())


def link_traffic(schedule: RingSchedule, rank: int, kv_bytes_per_rank: int, gpus_per_node: int) -> LinkTraffic:
    """Bytes ``rank`` sends to each peer per step (its local K/V split evenly over the cycles), split into
    peers on its own node and peers reached over the NIC for nodes of ``gpus_per_node`` ranks."""
    def node_of(r: int) -> int:
        return schedule.node_of(r) if schedule.node_ids else r // gpus_per_node

    intra: dict[int, int] = {}
    inter: dict[int, int] = {}
    for dst, nbytes in step_sends(schedule, rank, kv_bytes_per_rank).items():
        (intra if node_of(dst) == node_of(rank) else inter)[dst] = round(nbytes)
    return LinkTraffic(intra, inter)
