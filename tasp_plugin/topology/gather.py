"""Gathering small Python objects over a process group on the right device: NCCL groups need the tensor on
the rank's own GPU, which is the group's bound device (``init_process_group(device_id=...)``) when there is
one, even where the caller has not called ``torch.cuda.set_device`` yet."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["gather_objects"]


def _bound_device(group: dist.ProcessGroup | None) -> torch.device | None:
    pg = group if group is not None else dist.group.WORLD
    device = getattr(pg, "bound_device_id", None)
    if device is None and group is not None:
        device = getattr(dist.group.WORLD, "bound_device_id", None)
    return device if isinstance(device, torch.device) and device.type == "cuda" else None


def gather_objects(obj: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in group-rank order; collective over ``group``."""
    out: list[Any] = [None] * dist.get_world_size(group)
    device = _bound_device(group)
    with torch.cuda.device(device) if device is not None else contextlib.nullcontext():
        dist.all_gather_object(out, obj, group=group)
    return out
