"""The interconnect of a CP group: a preset by name (``TASP_INTERCONNECT`` or an argument) or guessed from
the GPU's name, scaled to the group's topology."""

from __future__ import annotations

import os
from dataclasses import replace

from .interconnect import FullMesh, Interconnect, MultiNode, Switch
from .presets import H100_NVSWITCH, H200_NVSWITCH, MI300X_MESH

__all__ = ["INTERCONNECT_ENV", "MACHINES", "interconnect_for"]

INTERCONNECT_ENV = "TASP_INTERCONNECT"
MACHINES: dict[str, FullMesh | Switch] = {"mi300x": MI300X_MESH, "h100": H100_NVSWITCH, "h200": H200_NVSWITCH}


def _machine(name: str | None, device_name: str) -> FullMesh | Switch:
    if name is None:
        name = os.environ.get(INTERCONNECT_ENV) or None
    if name is None:
        lowered = device_name.lower()
        name = next((key for key in MACHINES if key in lowered), "h100")
    if name not in MACHINES:
        raise ValueError(f"unknown interconnect {name!r}; choose one of {sorted(MACHINES)} "
                         f"(argument or ${INTERCONNECT_ENV})")
    return MACHINES[name]


def interconnect_for(nodes: int, gpus_per_node: int, name: str | None = None, device_name: str = "") -> Interconnect:
    """``nodes`` x ``gpus_per_node`` GPUs of machine ``name`` (default: ``$TASP_INTERCONNECT``, else the one
    named in ``device_name``, else H100): one node is the mesh/switch itself, several add one 400 Gb/s NIC
    per GPU."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be >= 1, got {nodes} and {gpus_per_node}")
    preset = _machine(name, device_name)
    gpu = preset.name.split(" ", 1)[-1]
    inside = replace(preset, gpus=gpus_per_node, name=f"{gpus_per_node}x {gpu}")
    if nodes == 1:
        return inside
    return MultiNode(nodes=nodes, intra=inside, nic_gbps=50.0, nic_efficiency=0.96, nic_latency_us=15.0,
                     name=f"{nodes}x{gpus_per_node} {gpu}")
