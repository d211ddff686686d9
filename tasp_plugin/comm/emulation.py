"""Stand-ins for a process group that let one process emulate a CP group, for tests and benchmarks on
a single device: ``ThreadGroup`` runs every rank in its own thread and delivers real data (results are
exact); ``LoopbackGroup`` runs one rank alone and fills each receive with a same-sized copy of what it
sends (data is wrong, timing and memory traffic are those of one rank's real step sequence)."""

from __future__ import annotations

import threading
from collections import defaultdict

import torch

from .communicator import Communicator, Handle, Transfers

__all__ = ["EmulatedGroup", "LoopbackGroup", "ThreadGroup"]


class EmulatedGroup(Communicator):
    """One rank of a group that lives inside this process (threads, or one rank alone)."""

    def __init__(self, world_size: int, rank: int) -> None:
        super().__init__(world_size, rank)


class _Done:
    def wait(self) -> None:
        """Nothing to wait for: the copies were issued when posting."""


class LoopbackGroup(EmulatedGroup):
    """Rank ``rank`` of ``world_size`` running alone: the i-th receive gets a copy of the i-th send, or,
    with ``deliver=False``, is left as allocated (a transfer that fully overlaps compute, as NCCL's own
    stream would; the data is then meaningless, only the timing counts)."""

    def __init__(self, world_size: int, rank: int, deliver: bool = True) -> None:
        super().__init__(world_size, rank)
        self.deliver = deliver

    def start(self, sends: Transfers, recvs: Transfers) -> list[Handle]:
        if len(sends) != len(recvs):
            raise ValueError("loopback needs as many sends as receives in one exchange")
        if self.deliver:
            for (_, s), (_, r) in zip(sends, recvs, strict=True):
                r.copy_(s.view_as(r))
        return [_Done()]


class _Mailbox:
    """Messages between the threads of one ``ThreadGroup``. As with real point-to-point, the k-th receive
    posted for a (src, dst) pair gets the k-th message sent on it, whenever either side waits."""

    def __init__(self) -> None:
        self.messages: dict[tuple[int, int, int], torch.Tensor] = {}
        self.sent: dict[tuple[int, int], int] = defaultdict(int)
        self.posted: dict[tuple[int, int], int] = defaultdict(int)
        self.cond = threading.Condition()

    def put(self, src: int, dst: int, tensor: torch.Tensor) -> None:
        with self.cond:
            self.messages[(src, dst, self.sent[(src, dst)])] = tensor
            self.sent[(src, dst)] += 1
            self.cond.notify_all()

    def ticket(self, src: int, dst: int) -> int:
        """The sequence number of a receive being posted now."""
        with self.cond:
            self.posted[(src, dst)] += 1
            return self.posted[(src, dst)] - 1

    def take(self, src: int, dst: int, seq: int, timeout: float) -> torch.Tensor:
        key = (src, dst, seq)
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.messages, timeout=timeout):
                raise TimeoutError(f"rank {dst} waited {timeout} s for a message from rank {src}")
            return self.messages.pop(key)


class _Receive:
    def __init__(self, box: _Mailbox, src: int, dst: int, target: torch.Tensor, timeout: float) -> None:
        self.box, self.src, self.dst, self.target, self.timeout = box, src, dst, target, timeout
        self.seq = box.ticket(src, dst)

    def wait(self) -> None:
        message = self.box.take(self.src, self.dst, self.seq, self.timeout)
        self.target.copy_(message.view_as(self.target))


class ThreadGroup(EmulatedGroup):
    """Rank ``rank`` of a group whose ranks are threads of this process; make all ranks' handles with
    :meth:`create` so they share one mailbox. Sent tensors must not be modified before they are received
    (the engine never does)."""

    def __init__(self, world_size: int, rank: int, box: _Mailbox, timeout: float = 120.0) -> None:
        super().__init__(world_size, rank)
        self._box, self._timeout = box, timeout

    @classmethod
    def create(cls, world_size: int, timeout: float = 120.0) -> list[ThreadGroup]:
        """One handle per rank, sharing a mailbox."""
        box = _Mailbox()
        return [cls(world_size, r, box, timeout) for r in range(world_size)]

    def start(self, sends: Transfers, recvs: Transfers) -> list[Handle]:
        for peer, s in sends:
            self._box.put(self._rank, peer, s)
        return [_Receive(self._box, peer, self._rank, r, self._timeout) for peer, r in recvs]
