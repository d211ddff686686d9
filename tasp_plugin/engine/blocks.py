"""Where each step's keys/values lie and which block attentions it computes: the causal rule of
DESIGN.md section 2 as data.

Local rows are ``[front half | back half]`` (zigzag: blocks ``r`` and ``2n-1-r``; contiguous: block ``r``
split in two). Each half is cut into ``c`` sub-chunks (``c`` = cycles, possibly unequal); K/V chunk ``j``
is (front piece ``j``, back piece ``j``) and travels on cycle ``j``. At every step the receiver places the
pieces in one buffer in an order chosen so that every block's keys are one contiguous row range: no
per-step concatenation. Step 0 (and "home", step ``n``) is the local row order itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedules import RingSchedule

__all__ = ["Block", "StepPlan", "plan_step", "sub_chunk_lengths", "LAYOUTS"]

LAYOUTS = ("zigzag", "contiguous")

Piece = tuple[int, str]  # (chunk, "front" | "back")


@dataclass(frozen=True)
class Block:
    """One kernel call: local query rows ``q_part`` ("all", "front", "back") against buffer rows
    ``keys = (start, stop)``."""

    q_part: str
    keys: tuple[int, int]
    causal: bool


@dataclass(frozen=True)
class StepPlan:
    """A step's buffer layout (per chunk: front and back row ranges) and its kernel calls."""

    slots: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    blocks: tuple[Block, ...]


def sub_chunk_lengths(half: int, c: int) -> list[int]:
    """Lengths of the ``c`` sub-chunks of a half of ``half`` rows (as equal as possible)."""
    bounds = [round(i * half / c) for i in range(c + 1)]
    return [bounds[i + 1] - bounds[i] for i in range(c)]


def _layout(step: int, schedule: RingSchedule, rank: int, causal: bool, layout: str, c: int):
    """The buffer's piece order and the blocks as ``(q_part, first piece, end piece, causal)``."""
    fronts = [(j, "front") for j in range(c)]
    backs = [(j, "back") for j in range(c)]
    local_order = fronts + backs
    if step % schedule.world_size == 0:
        if not causal:
            return local_order, [("all", 0, 2 * c, False)]
        # the local rows are two ordered halves of increasing position (both layouts)
        return local_order, [("front", 0, c, True), ("back", 0, c, False), ("back", c, 2 * c, True)]
    if not causal:
        return local_order, [("all", 0, 2 * c, False)]
    sources = [schedule.source(rank, j, step) for j in range(c)]
    earlier = [j for j in range(c) if sources[j] < rank]
    later = [j for j in range(c) if sources[j] > rank]
    e = len(earlier)
    if layout == "contiguous":
        order = [(j, p) for j in earlier + later for p in ("front", "back")]
        return order, [("all", 0, 2 * e, False)]
    # zigzag: [fronts of earlier | fronts of later, backs of later | backs of earlier]
    order = ([(j, "front") for j in earlier] + [(j, "front") for j in later]
             + [(j, "back") for j in later] + [(j, "back") for j in earlier])
    return order, [("all", 0, e, False), ("back", e, e + 2 * len(later), False)]


def plan_step(schedule: RingSchedule, rank: int, step: int, causal: bool, layout: str,
              lengths: list[int]) -> StepPlan:
    """Layout and blocks of ``rank`` at ``step`` (``step == n`` is home), for sub-chunk ``lengths``."""
    c = schedule.num_cycles
    order, spans = _layout(step, schedule, rank, causal, layout, c)
    starts, offset = [], 0
    for j, _ in order:
        starts.append(offset)
        offset += lengths[j]
    where = {piece: (s, s + lengths[piece[0]]) for piece, s in zip(order, starts)}
    slots = tuple((where[(j, "front")], where[(j, "back")]) for j in range(c))
    bounds = starts + [offset]
    blocks = tuple(Block(q, (bounds[a], bounds[b]), causal_block) for q, a, b, causal_block in spans
                   if bounds[b] > bounds[a])
    return StepPlan(slots, blocks)
