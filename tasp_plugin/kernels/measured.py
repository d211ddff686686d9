"""``backend="auto"`` on CUDA where several kernels fit: time each candidate once per block shape and phase
at first use, then always run the fastest for that shape (cached for the process).

The engine's block shapes repeat every layer and step, so each distinct (phase, dtype, q shape, k shape,
causal) is timed once: one untimed call per candidate (FA4 compiles then), then ``reps`` timed calls each
(CUDA events on the current stream; the wall clock on CPU). The winner's last result is returned, so
timing computes nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import BlockKernel

__all__ = ["MeasuredKernel"]

Key = tuple[str, torch.dtype, tuple[int, ...], tuple[int, ...], bool]
# process-wide, so that every attention call (each builds its kernel) reuses earlier measurements;
# keyed also by the candidates' names
_CHOICES: dict[tuple[tuple[str, ...], Key], str] = {}


def _seconds(run: Callable[[], None], cuda: bool) -> float:
    """Time ``run``: on CUDA with events on the current stream (transfers on other streams, still in flight
    inside the engine, neither count nor are waited for), on CPU with the wall clock."""
    if not cuda:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


class MeasuredKernel:
    """The fastest of ``candidates`` per block shape, measured at first use; :meth:`choices` lists them."""

    name = "auto"

    def __init__(self, candidates: Sequence[BlockKernel], reps: int = 3) -> None:
        if not candidates:
            raise ValueError("MeasuredKernel needs at least one candidate kernel")
        self.candidates = list(candidates)
        self.reps = reps
        self._names = tuple(k.name for k in self.candidates)

    def choices(self) -> dict[Key, str]:
        """Every block shape measured so far in this process (for these candidates) and its winner."""
        return {key: name for (names, key), name in _CHOICES.items() if names == self._names}

    def _run(self, key: Key, cuda: bool, call: Callable[[BlockKernel], Any]) -> Any:
        chosen = _CHOICES.get((self._names, key))
        if chosen is not None:
            return call(next(k for k in self.candidates if k.name == chosen))
        if len(self.candidates) == 1:
            _CHOICES[(self._names, key)] = self.candidates[0].name
            return call(self.candidates[0])
        timings: dict[str, float] = {}
        results: dict[str, Any] = {}
        for kernel in self.candidates:
            call(kernel)  # warm-up (compiles FA4's kernel for this configuration)

            def timed(kernel: BlockKernel = kernel) -> None:
                for _ in range(self.reps):
                    results[kernel.name] = call(kernel)

            timings[kernel.name] = _seconds(timed, cuda)
        best = min(timings, key=lambda name: timings[name])
        _CHOICES[(self._names, key)] = best
        return results[best]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The fastest candidate's block output and LSE (see ``BlockKernel``)."""
        key: Key = ("forward", q.dtype, tuple(q.shape), tuple(k.shape), causal)
        result: tuple[torch.Tensor, torch.Tensor] = self._run(
            key, q.is_cuda, lambda kern: kern.forward(q, k, v, causal, scale))
        return result

    def backward(self, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fastest candidate's dq, dk, dv (see ``BlockKernel``)."""
        key: Key = ("backward", q.dtype, tuple(q.shape), tuple(k.shape), causal)
        result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = self._run(
            key, q.is_cuda, lambda kern: kern.backward(dout, q, k, v, out, lse, causal, scale))
        return result
