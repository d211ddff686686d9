"""Packed documents (THD): the causal rule per document, as varlen kernel calls.

Every rank holds ``L_d / (2n)`` rows of document ``d`` in each half (chunks ``r`` and ``2n - 1 - r`` of
every document, the Megatron-core / Transformer Engine convention). Inside the engine a rank's rows are
grouped: ``[front piece of doc 0, of doc 1, ... | back piece of doc 0, of doc 1, ...]``, so each half is
the documents in order, and the halves are cut into the same row sub-chunks as unpacked sequences (the
sub-chunks travel exactly as before). The block rule of ``steps`` holds per document, because it depends
only on which rank a piece comes from. Along any run of same-half pieces in increasing chunk order the
document index never decreases, so within such a run every document's keys are contiguous: a block whose
queries lie in one half and whose keys are one such run is ONE varlen call over all documents. Splitting
each block of ``steps`` that way gives at most four calls per step, whatever the number of documents.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

from ..schedules import RingSchedule
from .steps import arrangement
from .vocabulary import Sharding

__all__ = ["PackedLayout", "VarlenBlock", "varlen_blocks"]


@dataclass(frozen=True)
class PackedLayout:
    """Rows of each document in each local half (``L_d / (2n)``; every rank the same)."""

    half_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.half_lengths or any(h < 1 for h in self.half_lengths):
            raise ValueError(f"every document needs at least one row per half, got {self.half_lengths}")

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: tuple[int, ...] | list[int], cp_size: int) -> PackedLayout:
        """From validated global padded cumulative lengths (each document a multiple of ``2 * cp_size``)."""
        return cls(tuple((b - a) // (2 * cp_size) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)))

    @functools.cached_property
    def cu(self) -> tuple[int, ...]:
        """Cumulative document rows within a half, from 0."""
        out = [0]
        for h in self.half_lengths:
            out.append(out[-1] + h)
        return tuple(out)

    @property
    def half(self) -> int:
        """Rows per half."""
        return self.cu[-1]

    def rows_per_document(self, segments: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
        """How many rows of each document the half-row ``segments`` (``[start, stop)``) hold."""
        counts = [0] * len(self.half_lengths)
        for start, stop in segments:
            d = bisect.bisect_right(self.cu, start) - 1
            while start < stop:
                end = min(stop, self.cu[d + 1])
                counts[d] += end - start
                start, d = end, d + 1
        return tuple(counts)


@dataclass(frozen=True)
class VarlenBlock:
    """One varlen kernel call: the queries of local half ``q_half`` ("front" or "back") against buffer rows
    ``keys``; ``cu_k`` the cumulative per-document key counts (documents with none see nothing)."""

    q_half: str
    keys: tuple[int, int]
    causal: bool
    cu_k: tuple[int, ...]

    @property
    def max_k(self) -> int:
        """The longest document's key count."""
        return max(b - a for a, b in zip(self.cu_k[:-1], self.cu_k[1:], strict=True))


def _cumulative(counts: tuple[int, ...]) -> tuple[int, ...]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return tuple(out)


@functools.lru_cache(maxsize=256)
def varlen_blocks(schedule: RingSchedule, rank: int, causal: bool, lengths: tuple[int, ...],
                  layout: PackedLayout) -> tuple[tuple[VarlenBlock, ...], ...]:
    """Per step ``0 .. n - 1``, the varlen calls of ``rank`` on zigzag-sharded packed documents, for row
    sub-chunk ``lengths`` of a half (the same split as ``step_plans``, so the buffers line up)."""
    c = schedule.num_cycles
    starts = [sum(lengths[:j]) for j in range(c)]
    steps = []
    for step in range(schedule.world_size):
        order, spans = arrangement(step, schedule, rank, causal, Sharding.ZIGZAG, c)
        bounds = [0]
        for j, _ in order:
            bounds.append(bounds[-1] + lengths[j])
        blocks = []
        for q_part, first, end, span_causal in spans:
            runs: list[tuple[str, int, int]] = []  # (half, first piece, end piece) of same-half pieces
            for i in range(first, end):
                if runs and runs[-1][0] == order[i][1]:
                    runs[-1] = (runs[-1][0], runs[-1][1], i + 1)
                else:
                    runs.append((order[i][1], i, i + 1))
            for q_half in (("front", "back") if q_part == "all" else (q_part,)):
                for k_half, a, b in runs:
                    if bounds[b] == bounds[a] or (span_causal and q_half == "front" and k_half == "back"):
                        continue  # empty, or front queries before the back keys (the diagonal's masked quarter)
                    segments = tuple((starts[order[i][0]], starts[order[i][0]] + lengths[order[i][0]])
                                     for i in range(a, b))
                    cu_k = _cumulative(layout.rows_per_document(segments))
                    blocks.append(VarlenBlock(q_half, (bounds[a], bounds[b]), span_causal and q_half == k_half,
                                              cu_k))
        steps.append(tuple(blocks))
    return tuple(steps)
