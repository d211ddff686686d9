"""The optional per-step timing hook: the executor marks points of each step, a hook turns them into
communication and compute times. CPU: wall clock; CUDA: events on the current stream."""

from __future__ import annotations

import time
from typing import Protocol

import torch

__all__ = ["StepHook", "StepTimer"]


class StepHook(Protocol):
    """Receives ``mark(point, step)`` for point in ("start", "posted", "computed", "received")."""

    def mark(self, point: str, step: int) -> None: ...


class StepTimer:
    """Records each step's marks; :meth:`summary` gives milliseconds in the seed API's format.

    Communication time of a step runs from posting its transfers to their completion; compute time from
    posting to the end of its block attentions (they overlap). ``total_time`` spans the whole call.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[tuple[str, int], object] = {}

    def mark(self, point: str, step: int) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[(point, step)] = event
        else:
            self.marks[(point, step)] = time.perf_counter()

    def _ms(self, a: tuple[str, int], b: tuple[str, int]) -> float:
        if a not in self.marks or b not in self.marks:
            return 0.0
        if self.cuda:
            self.marks[b].synchronize()
            return float(self.marks[a].elapsed_time(self.marks[b]))
        return (self.marks[b] - self.marks[a]) * 1e3

    def summary(self) -> dict[str, float]:
        """``{'total_time', 'comm_total_time', 'comp_total_time'}`` in milliseconds."""
        steps = sorted({s for _, s in self.marks})
        if not steps:
            return {"total_time": 0.0, "comm_total_time": 0.0, "comp_total_time": 0.0}
        comm = sum(self._ms(("posted", s), ("received", s)) for s in steps)
        comp = sum(self._ms(("posted", s), ("computed", s)) for s in steps)
        last = max(steps)
        end = ("received", last) if ("received", last) in self.marks else ("computed", last)
        return {"total_time": self._ms(("start", steps[0]), end), "comm_total_time": comm, "comp_total_time": comp}
