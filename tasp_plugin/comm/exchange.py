"""One step's exchange of a ring schedule: on every cycle, send to the successor and receive from the
predecessor. Asynchronous (returns handles) so the caller overlaps it with compute; works on NCCL and
gloo. Peers are translated to global ranks with ``dist.get_global_rank``.

Two transports: batched point-to-point (any schedule), and one ``all_to_all_single`` for schedules
whose step is a full all-to-all (every rank sends exactly one chunk to every other rank: flat Hamilton).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..schedules import RingSchedule

__all__ = ["RingExchange", "TRANSPORTS"]

TRANSPORTS = ("auto", "p2p", "all_to_all")


def _is_all_to_all(schedule: RingSchedule, rank: int) -> bool:
    n = schedule.world_size
    dsts = sorted(dst for _, dst, _ in schedule.peers(rank))
    return n > 2 and dsts == [r for r in range(n) if r != rank]


class _AllToAllHandle:
    """Completes an all_to_all_single and scatters the flat receive buffer into the per-cycle buffers."""

    def __init__(self, work, flat: torch.Tensor, recv: list[torch.Tensor], order: list[int]) -> None:
        self.work, self.flat, self.recv, self.order = work, flat, recv, order

    def wait(self) -> None:
        self.work.wait()
        offset = 0
        for j in self.order:
            n = self.recv[j].numel()
            self.recv[j].copy_(self.flat[offset:offset + n].view_as(self.recv[j]))
            offset += n


class RingExchange:
    """Sends ``buffers[j]`` along cycle ``j`` of ``schedule`` for the calling rank of ``group``."""

    def __init__(self, schedule: RingSchedule, group: dist.ProcessGroup | None, rank: int,
                 transport: str = "auto") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        full = _is_all_to_all(schedule, rank)
        if transport == "all_to_all" and not full:
            raise ValueError(f"transport 'all_to_all' needs a schedule whose steps are all-to-alls "
                             f"(flat Hamilton), got {schedule.kind}")
        self.transport = "all_to_all" if full and transport != "p2p" else "p2p"
        self.schedule = schedule
        self.group = group
        self.rank = rank
        self._peers = [(dst, src) for _, dst, src in schedule.peers(rank)]

    def _global(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def start(self, send: list[torch.Tensor], recv: list[torch.Tensor]) -> list:
        """Post all sends and receives of one step; ``wait`` the returned handles before reading ``recv``."""
        if self.transport == "all_to_all":
            return [self._start_all_to_all(send, recv)]
        ops = []
        for (dst, src), s, r in zip(self._peers, send, recv):
            ops.append(dist.P2POp(dist.isend, s.contiguous(), self._global(dst), self.group))
            ops.append(dist.P2POp(dist.irecv, r, self._global(src), self.group))
        return dist.batch_isend_irecv(ops) if ops else []

    def _start_all_to_all(self, send: list[torch.Tensor], recv: list[torch.Tensor]) -> _AllToAllHandle:
        n = self.schedule.world_size
        by_dst = {dst: j for j, (dst, _) in enumerate(self._peers)}
        by_src = {src: j for j, (_, src) in enumerate(self._peers)}
        send_order = [by_dst[p] for p in range(n) if p != self.rank]
        recv_order = [by_src[p] for p in range(n) if p != self.rank]
        flat_send = torch.cat([send[j].reshape(-1) for j in send_order])
        flat_recv = flat_send.new_empty(sum(recv[j].numel() for j in recv_order))
        in_splits = [send[by_dst[p]].numel() if p != self.rank else 0 for p in range(n)]
        out_splits = [recv[by_src[p]].numel() if p != self.rank else 0 for p in range(n)]
        work = dist.all_to_all_single(flat_recv, flat_send, out_splits, in_splits, group=self.group, async_op=True)
        return _AllToAllHandle(work, flat_recv, recv, recv_order)

    @staticmethod
    def wait(handles: list) -> None:
        """Block until the step's transfers are done."""
        for h in handles:
            h.wait()
