"""How a rotating buffer (the K/V rows, or the backward's dK/dV accumulators) gets from one step's
arrangement to the next: posted at the start of a step, waited for at its end.

Two ways, the same contract: ``P2PRotation`` sends this rank's chunks and receives into a fresh buffer
(NCCL or gloo point-to-point, or one all-to-all); ``PeerRotation`` pulls the chunks straight out of the
sources' symmetric buffers with copy-engine copies (``comm.PeerMemory``, one node, CUDA).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from ..comm import Handle, PeerMemory, RingExchange
from ..planning import StepPlan
from ..schedules import RingSchedule

__all__ = ["P2PRotation", "PeerRotation", "Rotation", "pieces"]

Plans = tuple[StepPlan, ...]


def pieces(buf: torch.Tensor, plan: StepPlan) -> list[list[torch.Tensor]]:
    """Per cycle, the buffer rows of its chunk (front piece, back piece): contiguous, sent as they are."""
    return [[buf[a:b] for a, b in slot] for slot in plan.slots]


class Rotation(ABC):
    """``first`` is the buffer of step 0; ``start(step, buf)`` posts the move of ``buf`` (arranged by step
    ``step``'s plan) to the next step's arrangement and returns ``(incoming, handles)``: ``incoming`` may be
    read once the handles were waited for."""

    first: torch.Tensor

    @abstractmethod
    def start(self, step: int, buf: torch.Tensor) -> tuple[torch.Tensor, list[Handle]]:
        """Post the move of step ``step``'s buffer ``buf`` to the next step's arrangement."""


class P2PRotation(Rotation):
    """Point-to-point (or all-to-all) sends and receives into a new buffer per step."""

    def __init__(self, exchange: RingExchange, plans: Plans, first: torch.Tensor) -> None:
        self.exchange, self.plans, self.first = exchange, plans, first

    def start(self, step: int, buf: torch.Tensor) -> tuple[torch.Tensor, list[Handle]]:
        incoming = torch.empty_like(buf)
        return incoming, self.exchange.start(pieces(buf, self.plans[step]), pieces(incoming, self.plans[step + 1]))


class _EventHandle:
    """Completion of the side stream's work up to a point: ``wait`` makes the current stream wait for it."""

    def __init__(self, event: torch.cuda.Event) -> None:
        self.event = event

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.event)


class PeerRotation(Rotation):
    """Copy-engine pulls from the sources' symmetric buffers (see ``comm.peer_memory`` for the ordering).

    ``initial`` is copied into this rank's buffer 0 for the peers to pull from (the step-0 computation reads
    ``initial`` itself); ``initial=None`` starts from zeros in buffer 0, which is then also ``first``."""

    def __init__(self, schedule: RingSchedule, memory: PeerMemory, tag: str, plans: Plans,
                 plans_of: Callable[[int], Plans], spec: tuple[torch.Size, torch.dtype, torch.device],
                 initial: torch.Tensor | None) -> None:
        self.memory, self.tag, self.plans, self.plans_of = memory, tag, plans, plans_of
        shape, self.dtype, device = spec
        self.shape = tuple(shape)
        self.sources = [src for _, _, src in schedule.peers(memory.rank)]
        self.slots = memory.buffers(tag, self.shape, self.dtype)
        side, current = memory.stream, torch.cuda.current_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            memory.barrier(tag)  # the peers finished reading these buffers in the previous call
            if initial is None:
                self.slots[0].zero_()
            else:
                self.slots[0].copy_(initial)
        if initial is None:
            current.wait_stream(side)
        self.first = self.slots[0] if initial is None else initial

    def start(self, step: int, buf: torch.Tensor) -> tuple[torch.Tensor, list[Handle]]:
        incoming = self.slots[(step + 1) % 2]
        side = self.memory.stream
        side.wait_stream(torch.cuda.current_stream(buf.device))
        with torch.cuda.stream(side):
            self.memory.barrier(self.tag)
            mine = self.plans[step + 1].slots
            for cycle, src in enumerate(self.sources):
                remote = self.memory.remote(self.tag, src, step % 2, self.shape, self.dtype)
                theirs = self.plans_of(src)[step].slots[cycle]
                for (a, b), (c, d) in zip(theirs, mine[cycle], strict=True):
                    if b > a:
                        incoming[c:d].copy_(remote[a:b])
            done = torch.cuda.Event()
            done.record(side)
        return incoming, [_EventHandle(done)]
