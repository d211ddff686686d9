"""Ready-made topologies for the machines the TASP paper measured, with the sources of their numbers.

- **8x AMD MI300X** (full mesh): each GPU has 7 Infinity Fabric (xGMI) links, one to every other GPU, at
  128 GB/s bidirectional = 64 GB/s per direction (AMD Instinct MI300X platform data sheet). RCCL's topology
  code models a gfx94x xGMI link at 48 GB/s per direction "after protocol and error correction overheads"
  (AMD maintainer in ROCm/rccl issue #1210), hence ``link_efficiency = 48 / 64``.
- **8x NVIDIA H100 / H200 SXM** (NVSwitch): NVLink 4, 900 GB/s bidirectional = 450 GB/s per direction per GPU
  (H100 and H200 data sheets; same NVLink on both). With protocol overhead NCCL reaches about 370 GB/s over
  all peers (NCCL maintainer in NVIDIA/nccl-tests issue #212), hence ``aggregate_efficiency = 370 / 450``.
  One send/recv pair between two H100s plateaus near 180 GB/s even for large messages (NVIDIA/nccl-tests
  issue #268; nvbandwidth's SM copy gets 260 GB/s there), because NCCL gives a single peer only a few
  channels ("send/recv operations are currently optimized for alltoall", NVIDIA/nccl issue #1272), hence
  ``peer_efficiency = 180 / 450``.
- **NIC**: one 400 Gb/s ConnectX-7 (InfiniBand NDR) per GPU = 50 GB/s per direction; NCCL reaches 48-49 GB/s
  per NIC (NVIDIA/nccl-tests issue #267), hence ``nic_efficiency = 0.96``.
- Latencies (10 us per step inside a node, 15 us over the NIC) are assumptions of the right order for one
  NCCL/RCCL point-to-point round, not measurements; they matter only at very short sequences.
"""

from __future__ import annotations

from .interconnect import FullMesh, MultiNode, Switch

__all__ = ["H100_NVSWITCH", "H200_NVSWITCH", "MI300X_MESH", "h100_nodes"]

MI300X_MESH = FullMesh(gpus=8, link_gbps=64.0, link_efficiency=48.0 / 64.0, latency_us=10.0, name="8x MI300X")
H100_NVSWITCH = Switch(gpus=8, injection_gbps=450.0, peer_efficiency=180.0 / 450.0,
                       aggregate_efficiency=370.0 / 450.0, latency_us=10.0, name="8x H100")
H200_NVSWITCH = Switch(gpus=8, injection_gbps=450.0, peer_efficiency=180.0 / 450.0,
                       aggregate_efficiency=370.0 / 450.0, latency_us=10.0, name="8x H200")


def h100_nodes(nodes: int) -> MultiNode:
    """``nodes`` x 8 H100 nodes (NVSwitch inside), one 400 Gb/s InfiniBand NIC per GPU on its own rail."""
    return MultiNode(nodes=nodes, intra=H100_NVSWITCH, nic_gbps=50.0, nic_efficiency=0.96, nic_latency_us=15.0,
                     name=f"{nodes}x8 H100")
