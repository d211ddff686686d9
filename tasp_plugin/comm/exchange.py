"""Batched point-to-point exchange of one step: on every cycle, send to the successor and receive from
the predecessor. Asynchronous (returns a handle) so the caller overlaps it with compute; works on NCCL
and gloo. Peers are translated to global ranks with ``dist.get_global_rank``."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..schedules import RingSchedule

__all__ = ["RingExchange"]


class RingExchange:
    """Sends ``buffers[j]`` along cycle ``j`` of ``schedule`` for the calling rank of ``group``."""

    def __init__(self, schedule: RingSchedule, group: dist.ProcessGroup | None, rank: int) -> None:
        self.schedule = schedule
        self.group = group
        self.rank = rank
        self._peers = [(self._global(dst), self._global(src)) for _, dst, src in schedule.peers(rank)]

    def _global(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def start(self, send: list[torch.Tensor], recv: list[torch.Tensor]) -> list:
        """Post all sends and receives of one step; ``wait`` the returned handle before reading ``recv``."""
        ops = []
        for (dst, src), s, r in zip(self._peers, send, recv):
            ops.append(dist.P2POp(dist.isend, s.contiguous(), dst, self.group))
            ops.append(dist.P2POp(dist.irecv, r, src, self.group))
        return dist.batch_isend_irecv(ops) if ops else []

    @staticmethod
    def wait(handles: list) -> None:
        """Block until the step's transfers are done."""
        for h in handles:
            h.wait()
