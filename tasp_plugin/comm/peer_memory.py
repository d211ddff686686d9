"""Copy-engine transfers inside one node. A rank's rotating buffers live in symmetric memory (every rank of
the group can map every other rank's), and a rank *pulls* the chunks it receives out of its sources'
buffers with peer copies on a side stream. CUDA runs such copies on copy engines, not on SMs, so unlike
NCCL's send/recv they do not slow down the attention kernels running beside them.

Each rotation (the K/V of one attention call, or the backward's dK/dV accumulators) owns two buffers that
alternate by step parity: step ``s`` computes on buffer ``s % 2`` while the chunks of step ``s + 1`` are
pulled from the sources' buffer ``s % 2`` into this rank's buffer ``(s + 1) % 2``. One barrier per step, on
the side stream, orders it: when a rank passes the barrier of step ``s``, every rank has finished its pulls
of step ``s - 1`` (so the sources' buffers hold step ``s``'s chunks, and nobody still reads the buffer about
to be overwritten). A barrier when a rotation starts protects the previous call's buffers the same way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable, Sequence
from typing import ClassVar

import torch
import torch.distributed as dist

__all__ = ["PeerMemory", "symmetric_memory_available"]

_ALIGN = 256  # bytes: every buffer starts on an aligned address


def symmetric_memory_available() -> bool:
    """Whether this torch build has CUDA symmetric memory (``torch.distributed._symmetric_memory``)."""
    if not torch.cuda.is_available():
        return False
    return importlib.util.find_spec("torch.distributed._symmetric_memory") is not None


class _Slots:
    """One tag's symmetric allocation: two buffers of ``capacity`` bytes each, and its rendezvous handle."""

    def __init__(self, capacity: int, device: torch.device, group: dist.ProcessGroup) -> None:
        from torch.distributed import _symmetric_memory as symm_mem

        self.capacity = capacity
        self.tensor = symm_mem.empty(2 * capacity, dtype=torch.uint8, device=device)
        self.handle = symm_mem.rendezvous(self.tensor, group)

    def view(self, owner: int, parity: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Buffer ``parity`` of rank ``owner`` (this rank's own or a peer's, mapped here) as ``shape``."""
        item = torch.empty((), dtype=dtype).element_size()
        offset = parity * self.capacity // item
        return self.handle.get_buffer(owner, list(shape), dtype, offset)


class PeerMemory:
    """The symmetric buffers, side stream and barrier of one process group on one GPU (all of its ranks on
    this node). Collective where it allocates: every rank asks for the same tags and sizes in the same order,
    which the engine guarantees (the ranks agreed on the call's shapes before it starts)."""

    _existing: ClassVar[dict[tuple[Hashable, torch.device], PeerMemory]] = {}

    @classmethod
    def of(cls, key: Hashable, group: dist.ProcessGroup | None, device: torch.device) -> PeerMemory:
        """The one ``PeerMemory`` of the group identified by ``key`` on ``device`` (made on first use)."""
        if (key, device) not in cls._existing:
            cls._existing[(key, device)] = cls(group, device)
        return cls._existing[(key, device)]

    @classmethod
    def allocated_bytes(cls) -> int:
        """Bytes of symmetric memory held by every ``PeerMemory`` of this process (allocated outside the
        caching allocator's statistics, so ``torch.cuda.max_memory_allocated`` does not count them)."""
        return sum(2 * slots.capacity for memory in cls._existing.values() for slots in memory._slots.values())

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        pg = group if group is not None else dist.group.WORLD
        assert pg is not None
        self.group = pg
        self.rank = dist.get_rank(group)
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self._slots: dict[str, _Slots] = {}

    def buffers(self, tag: str, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's two buffers of ``tag`` as ``shape``/``dtype`` (grown, collectively, when too small)."""
        need = -(-torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() // _ALIGN) * _ALIGN
        slots = self._slots.get(tag)
        if slots is None or slots.capacity < need:
            # the old buffers may still be read by a peer's copies: finish ours, then the rendezvous (which every
            # rank reaches only after finishing its own) makes it safe to let them go
            self.stream.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
            slots = self._slots[tag] = _Slots(need, self.device, self.group)
        return slots.view(self.rank, 0, shape, dtype), slots.view(self.rank, 1, shape, dtype)

    def remote(self, tag: str, owner: int, parity: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Rank ``owner``'s buffer ``parity`` of ``tag``, mapped into this process (a copy from it is a pull)."""
        return self._slots[tag].view(owner, parity, shape, dtype)

    def barrier(self, tag: str) -> None:
        """Enqueue a group-wide barrier on the side stream (call it inside ``torch.cuda.stream(self.stream)``)."""
        self._slots[tag].handle.barrier(channel=0)
