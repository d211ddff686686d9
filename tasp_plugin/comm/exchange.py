"""One step's exchange of a ring schedule: on every cycle, send to the successor and receive from the
predecessor. Asynchronous (returns handles) so the caller overlaps it with compute.

Two transports: batched point-to-point (any schedule, any communicator), and one all-to-all for schedules
whose step is a full all-to-all (every rank sends exactly one chunk to every other rank: flat Hamilton) on
communicators that have one. The third word of ``TRANSPORTS``, ``peer_copy`` (copy-engine pulls from
symmetric memory), moves whole buffers and lives in ``peer_memory`` and the engine's rotation.
"""

from __future__ import annotations

import torch

from ..schedules import RingSchedule
from .communicator import Communicator, Handle

__all__ = ["TRANSPORTS", "RingExchange"]

# auto: all_to_all where the schedule's steps are all-to-alls and the group has one, else p2p; peer_copy
# (copy-engine pulls from symmetric memory, one node of CUDA GPUs) only when asked for
TRANSPORTS = ("auto", "p2p", "all_to_all", "peer_copy")

Pieces = list[list[torch.Tensor]]


def _is_all_to_all(schedule: RingSchedule, rank: int) -> bool:
    n = schedule.world_size
    dsts = sorted(dst for _, dst, _ in schedule.peers(rank))
    return n > 2 and dsts == [r for r in range(n) if r != rank]


class _AllToAllHandle:
    """Completes an all-to-all and copies the flat receive buffer into the receivers' pieces."""

    def __init__(self, work: Handle, flat: torch.Tensor, pieces: list[torch.Tensor]) -> None:
        self.work, self.flat, self.pieces = work, flat, pieces

    def wait(self) -> None:
        self.work.wait()
        offset = 0
        for p in self.pieces:
            p.copy_(self.flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


class RingExchange:
    """Sends the pieces of cycle ``j`` (a chunk may be several contiguous tensors, sent in order) to the
    successor on cycle ``j`` and receives the predecessor's into same-shaped pieces."""

    def __init__(self, schedule: RingSchedule, comm: Communicator, transport: str = "auto") -> None:
        if transport not in TRANSPORTS or transport == "peer_copy":
            raise ValueError(f"RingExchange sends with {TRANSPORTS[:3]}, got {transport!r}")
        full = _is_all_to_all(schedule, comm.rank) and comm.supports_all_to_all
        if transport == "all_to_all" and not full:
            raise ValueError(f"transport 'all_to_all' needs a communicator with an all-to-all and a schedule whose "
                             f"steps are all-to-alls (flat Hamilton), got {schedule.kind} on {type(comm).__name__}")
        self.transport = "all_to_all" if full and transport != "p2p" else "p2p"
        self.schedule = schedule
        self.comm = comm
        self._peers = [(dst, src) for _, dst, src in schedule.peers(comm.rank)]

    def start(self, send: Pieces, recv: Pieces) -> list[Handle]:
        """Post all sends and receives of one step (one list of pieces per cycle in ``send`` and ``recv``);
        ``wait`` the returned handles before reading ``recv``."""
        if self.transport == "all_to_all":
            return [self._start_all_to_all(send, recv)]
        return self.comm.start(
            [(dst, s) for (dst, _), pieces in zip(self._peers, send, strict=True) for s in pieces if s.numel()],
            [(src, r) for (_, src), pieces in zip(self._peers, recv, strict=True) for r in pieces if r.numel()])

    def _start_all_to_all(self, send: Pieces, recv: Pieces) -> _AllToAllHandle:
        n, me = self.schedule.world_size, self.comm.rank
        by_dst = {dst: j for j, (dst, _) in enumerate(self._peers)}
        by_src = {src: j for j, (_, src) in enumerate(self._peers)}
        send_order = [by_dst[p] for p in range(n) if p != me]
        recv_pieces = [piece for p in range(n) if p != me for piece in recv[by_src[p]]]
        flat_send = torch.cat([piece.reshape(-1) for j in send_order for piece in send[j]])
        flat_recv = flat_send.new_empty(sum(p.numel() for p in recv_pieces))
        in_splits = [sum(x.numel() for x in send[by_dst[p]]) if p != me else 0 for p in range(n)]
        out_splits = [sum(x.numel() for x in recv[by_src[p]]) if p != me else 0 for p in range(n)]
        work = self.comm.all_to_all(flat_recv, flat_send, out_splits, in_splits)
        return _AllToAllHandle(work, flat_recv, recv_pieces)

    @staticmethod
    def wait(handles: list[Handle]) -> None:
        """Block until the step's transfers are done."""
        Communicator.wait(handles)
