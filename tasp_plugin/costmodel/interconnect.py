"""Interconnect descriptions: how long one rank's per-step sends take on a full mesh, a switch, or several nodes.

Every schedule step a rank sends some bytes to each of a few peers, all at once; ``comm_seconds`` turns that
``{peer: bytes}`` map of one ``rank`` into seconds. A step's transfer is as slow as its slowest rank, which
the caller takes.
Bandwidths are GB/s (1e9 bytes/s) in one direction; latencies are microseconds per step (the messages of one
step are posted together, so their latencies overlap).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FullMesh", "Interconnect", "MultiNode", "Switch"]


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


def _check_fraction(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not 0 < value <= 1:
            raise ValueError(f"{owner}: {name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class FullMesh:
    """``gpus`` GPUs with one dedicated link per pair; a message to one peer uses only that pair's link."""

    gpus: int
    link_gbps: float
    link_efficiency: float = 1.0
    latency_us: float = 10.0
    name: str = "full mesh"

    def __post_init__(self) -> None:
        _check_positive("FullMesh", gpus=self.gpus, link_gbps=self.link_gbps, latency_us=self.latency_us)
        _check_fraction("FullMesh", link_efficiency=self.link_efficiency)

    @property
    def world_size(self) -> int:
        """Number of GPUs this interconnect describes."""
        return self.gpus

    def comm_seconds(self, rank: int, sends: Mapping[int, float]) -> float:
        """Peers of ``rank`` are reached over separate links at once, so the largest per-peer message decides."""
        if not sends:
            return 0.0
        return self.latency_us * 1e-6 + max(sends.values()) / (self.link_gbps * self.link_efficiency * 1e9)


@dataclass(frozen=True)
class Switch:
    """``gpus`` GPUs behind a switch: all of a GPU's messages share its injection bandwidth.

    One peer stream reaches at most ``peer_efficiency`` of the injection bandwidth (a single NCCL send/recv
    uses only a few channels), all streams together at most ``aggregate_efficiency`` of it.
    """

    gpus: int
    injection_gbps: float
    peer_efficiency: float = 1.0
    aggregate_efficiency: float = 1.0
    latency_us: float = 10.0
    name: str = "switch"

    def __post_init__(self) -> None:
        _check_positive("Switch", gpus=self.gpus, injection_gbps=self.injection_gbps, latency_us=self.latency_us)
        _check_fraction("Switch", peer_efficiency=self.peer_efficiency, aggregate_efficiency=self.aggregate_efficiency)

    @property
    def world_size(self) -> int:
        """Number of GPUs this interconnect describes."""
        return self.gpus

    def comm_seconds(self, rank: int, sends: Mapping[int, float]) -> float:
        """``rank``'s sends: the slower of the shared injection and the per-peer-stream limit, plus a latency."""
        if not sends:
            return 0.0
        rate = self.injection_gbps * 1e9
        return self.latency_us * 1e-6 + max(sum(sends.values()) / (rate * self.aggregate_efficiency),
                                            max(sends.values()) / (rate * self.peer_efficiency))


@dataclass(frozen=True)
class MultiNode:
    """``nodes`` copies of the ``intra`` interconnect; each GPU reaches other nodes only through its own NIC.

    Global rank ``node * intra.gpus + local``. All of a GPU's inter-node bytes share its NIC (rail); intra- and
    inter-node transfers of one step run concurrently, so the slower of the two decides.
    """

    nodes: int
    intra: FullMesh | Switch
    nic_gbps: float
    nic_efficiency: float = 1.0
    nic_latency_us: float = 15.0
    name: str = "multi-node"

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, int) or self.nodes < 2:
            raise ValueError(f"MultiNode: nodes must be an int >= 2, got {self.nodes!r}")
        if not isinstance(self.intra, (FullMesh, Switch)):
            raise TypeError(f"MultiNode: intra must be a FullMesh or Switch, got {type(self.intra).__name__}")
        _check_positive("MultiNode", nic_gbps=self.nic_gbps, nic_latency_us=self.nic_latency_us)
        _check_fraction("MultiNode", nic_efficiency=self.nic_efficiency)

    @property
    def gpus_per_node(self) -> int:
        """GPUs in each node."""
        return self.intra.gpus

    @property
    def world_size(self) -> int:
        """Number of GPUs over all nodes."""
        return self.nodes * self.intra.gpus

    def comm_seconds(self, rank: int, sends: Mapping[int, float]) -> float:
        """Time for ``rank``'s sends: same-node peers over the intra interconnect, the rest over its NIC."""
        m = self.gpus_per_node
        intra = {dst: b for dst, b in sends.items() if dst // m == rank // m}
        nic_bytes = sum(b for dst, b in sends.items() if dst // m != rank // m)
        nic = self.nic_latency_us * 1e-6 + nic_bytes / (self.nic_gbps * self.nic_efficiency * 1e9) if nic_bytes else 0.0
        return max(self.intra.comm_seconds(rank % m, {dst % m: b for dst, b in intra.items()}), nic)


Interconnect = FullMesh | Switch | MultiNode
