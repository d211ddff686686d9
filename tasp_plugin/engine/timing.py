"""The optional per-step timing hook: the executor marks points of each step of each phase (forward,
backward), a hook turns them into communication and compute times. CPU: wall clock; CUDA: events on the
current stream."""

from __future__ import annotations

import time
from typing import Protocol

import torch

__all__ = ["PHASES", "StepHook", "StepTimer"]

PHASES = ("forward", "backward")
Mark = tuple[str, str, int]  # (phase, point, step)


class StepHook(Protocol):
    """Receives ``mark(phase, point, step)`` for phase in ``PHASES`` and point in ("start", "posted",
    "computed", "received")."""

    def mark(self, phase: str, point: str, step: int) -> None: ...


class StepTimer:
    """Records each step's marks; :meth:`summary` gives milliseconds in the seed API's format.

    Communication time of a step runs from posting its transfers to their completion; compute time from
    posting to the end of its block attentions (they overlap). ``total_time`` spans the whole call.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[Mark, torch.cuda.Event | float] = {}

    def mark(self, phase: str, point: str, step: int) -> None:
        """Record ``point`` of ``step`` in ``phase`` now."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[(phase, point, step)] = event
        else:
            self.marks[(phase, point, step)] = time.perf_counter()

    def _ms(self, a: Mark, b: Mark) -> float:
        if a not in self.marks or b not in self.marks:
            return 0.0
        start, end = self.marks[a], self.marks[b]
        if isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event):
            end.synchronize()
            return float(start.elapsed_time(end))
        assert isinstance(start, float) and isinstance(end, float)
        return (end - start) * 1e3

    def summary(self, phase: str = "forward") -> dict[str, float]:
        """``{'total_time', 'comm_total_time', 'comp_total_time'}`` of ``phase`` in milliseconds."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; choose one of {PHASES}")
        steps = sorted({s for p, _, s in self.marks if p == phase})
        if not steps:
            return {"total_time": 0.0, "comm_total_time": 0.0, "comp_total_time": 0.0}
        comm = sum(self._ms((phase, "posted", s), (phase, "received", s)) for s in steps)
        comp = sum(self._ms((phase, "posted", s), (phase, "computed", s)) for s in steps)
        last = max(steps)
        end = (phase, "received", last) if (phase, "received", last) in self.marks else (phase, "computed", last)
        return {"total_time": self._ms((phase, "start", steps[0]), end), "comm_total_time": comm,
                "comp_total_time": comp}
