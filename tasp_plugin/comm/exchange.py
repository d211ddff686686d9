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
from ..topology import CPGroups
from .emulation import EmulatedGroup

__all__ = ["RingExchange", "TRANSPORTS", "group_size_rank"]

TRANSPORTS = ("auto", "p2p", "all_to_all")


def _is_all_to_all(schedule: RingSchedule, rank: int) -> bool:
    n = schedule.world_size
    dsts = sorted(dst for _, dst, _ in schedule.peers(rank))
    return n > 2 and dsts == [r for r in range(n) if r != rank]


class _AllToAllHandle:
    """Completes an all_to_all_single and copies the flat receive buffer into the receivers' pieces."""

    def __init__(self, work, flat: torch.Tensor, pieces: list[torch.Tensor]) -> None:
        self.work, self.flat, self.pieces = work, flat, pieces

    def wait(self) -> None:
        self.work.wait()
        offset = 0
        for p in self.pieces:
            p.copy_(self.flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


Pieces = list[list[torch.Tensor]]


def group_size_rank(group) -> tuple[int, int]:
    """``(size, rank)`` of a process group (``None``: the default group) or of an emulated group."""
    if isinstance(group, EmulatedGroup):
        return group.size(), group.rank()
    return dist.get_world_size(group), dist.get_rank(group)


class RingExchange:
    """Sends the pieces of cycle ``j`` (a chunk may be several contiguous tensors, sent in order) to the
    successor on cycle ``j`` and receives the predecessor's into same-shaped pieces."""

    def __init__(self, schedule: RingSchedule, group: dist.ProcessGroup | EmulatedGroup | None, rank: int,
                 transport: str = "auto", links: CPGroups | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        full = _is_all_to_all(schedule, rank) and not isinstance(group, EmulatedGroup)
        if transport == "all_to_all" and not full:
            raise ValueError(f"transport 'all_to_all' needs a process group and a schedule whose steps are "
                             f"all-to-alls (flat Hamilton), got {schedule.kind} on {type(group).__name__}")
        self.transport = "all_to_all" if full and transport != "p2p" else "p2p"
        self.schedule = schedule
        self.group = group
        self.rank = rank
        self.links = links
        self._peers = [(dst, src) for _, dst, src in schedule.peers(rank)]

    def _global(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def start(self, send: Pieces, recv: Pieces) -> list:
        """Post all sends and receives of one step; ``wait`` the returned handles before reading ``recv``."""
        if self.transport == "all_to_all":
            return [self._start_all_to_all(send, recv)]
        if isinstance(self.group, EmulatedGroup):
            return self.group.exchange(
                [(dst, s) for (dst, _), pieces in zip(self._peers, send) for s in pieces if s.numel()],
                [(src, r) for (_, src), pieces in zip(self._peers, recv) for r in pieces if r.numel()])
        by_group: dict = {}
        for (dst, src), s_pieces, r_pieces in zip(self._peers, send, recv):
            for s in s_pieces:
                if s.numel():
                    via = self._via(dst)
                    by_group.setdefault(via, []).append(dist.P2POp(dist.isend, s.contiguous(), self._global(dst), via))
            for r in r_pieces:
                if not r.is_contiguous():
                    raise ValueError("receive pieces must be contiguous tensors")
                if r.numel():
                    via = self._via(src)
                    by_group.setdefault(via, []).append(dist.P2POp(dist.irecv, r, self._global(src), via))
        # one batch per communicator, always in the order intra-node, rail, CP group (the same on every
        # rank, so no two ranks wait on different communicators first): NCCL runs them concurrently
        order = [g for g in (*self._subgroups(), self.group) if g in by_group]
        return [h for g in order for h in dist.batch_isend_irecv(by_group[g])]

    def _subgroups(self) -> tuple:
        return (self.links.intra, self.links.inter) if self.links is not None else ()

    def _via(self, peer: int):
        return self.links.route(peer) if self.links is not None else self.group

    def _start_all_to_all(self, send: Pieces, recv: Pieces) -> _AllToAllHandle:
        n = self.schedule.world_size
        by_dst = {dst: j for j, (dst, _) in enumerate(self._peers)}
        by_src = {src: j for j, (_, src) in enumerate(self._peers)}
        send_order = [by_dst[p] for p in range(n) if p != self.rank]
        recv_pieces = [piece for p in range(n) if p != self.rank for piece in recv[by_src[p]]]
        flat_send = torch.cat([piece.reshape(-1) for j in send_order for piece in send[j]])
        flat_recv = flat_send.new_empty(sum(p.numel() for p in recv_pieces))
        in_splits = [sum(x.numel() for x in send[by_dst[p]]) if p != self.rank else 0 for p in range(n)]
        out_splits = [sum(x.numel() for x in recv[by_src[p]]) if p != self.rank else 0 for p in range(n)]
        work = dist.all_to_all_single(flat_recv, flat_send, out_splits, in_splits, group=self.group, async_op=True)
        return _AllToAllHandle(work, flat_recv, recv_pieces)

    @staticmethod
    def wait(handles: list) -> None:
        """Block until the step's transfers are done."""
        for h in handles:
            h.wait()
