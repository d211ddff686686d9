"""Which block attentions one step computes: the causal rule of DESIGN.md section 2 as data.

Local rows are ``[front half | back half]`` (zigzag: blocks ``r`` and ``2n-1-r``; contiguous: block ``r``
split in two). K/V chunk ``j`` is (sub-chunk ``j`` of the front half, sub-chunk ``j`` of the back half).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedules import RingSchedule

__all__ = ["Block", "plan_step", "LAYOUTS"]

LAYOUTS = ("zigzag", "contiguous")


@dataclass(frozen=True)
class Block:
    """One kernel call: local query rows ``q_part`` ("all", "front", "back") against the listed key
    pieces ``(chunk, part)`` with part in ("front", "back", "whole"), concatenated in order."""

    q_part: str
    pieces: tuple[tuple[int, str], ...]
    causal: bool


def plan_step(schedule: RingSchedule, rank: int, step: int, causal: bool, layout: str) -> list[Block]:
    """Blocks of ``rank`` at ``step`` for the chunks it holds then."""
    c = schedule.num_cycles
    if step == 0:
        if not causal:
            return [Block("all", tuple((j, "whole") for j in range(c)), False)]
        fronts = tuple((j, "front") for j in range(c))
        backs = tuple((j, "back") for j in range(c))
        # same for both layouts: the local rows are two ordered halves of increasing position
        return [Block("front", fronts, True), Block("back", fronts, False), Block("back", backs, True)]
    sources = [(j, schedule.source(rank, j, step)) for j in range(c)]
    if not causal:
        return [Block("all", tuple((j, "whole") for j, _ in sources), False)]
    earlier = [j for j, src in sources if src < rank]
    later = [j for j, src in sources if src > rank]
    blocks = []
    if layout == "contiguous":
        if earlier:
            blocks.append(Block("all", tuple((j, "whole") for j in earlier), False))
        return blocks
    if earlier:
        blocks.append(Block("all", tuple((j, "front") for j in earlier), False))
    if later:
        blocks.append(Block("back", tuple((j, "whole") for j in later), False))
    return blocks
