"""Where each step's keys/values lie and which block attentions it computes: the causal rule as data
(docs/DESIGN.md, "One step"). The engine runs these plans and the cost model counts its work from them.

Local rows are ``[front half | back half]`` (zigzag sharding: blocks ``r`` and ``2n-1-r``; contiguous: block
``r`` split in two). Each half is cut into ``c`` sub-chunks (``c`` = cycles, possibly unequal); K/V chunk ``j``
is (front piece ``j``, back piece ``j``) and travels on cycle ``j``. At every step the receiver places the
pieces in one buffer in an order chosen so that every block's keys are one contiguous row range: no
per-step concatenation. Step 0 (and "home", step ``n``) is the local row order itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..schedules import RingSchedule
from .vocabulary import Sharding

__all__ = ["Block", "StepPlan", "arrangement", "plan_step", "step_plans", "step_work", "sub_chunk_lengths"]

Piece = tuple[int, str]  # (chunk, "front" | "back")
Span = tuple[str, int, int, bool]  # (q_part, first piece, end piece, causal)


@dataclass(frozen=True)
class Block:
    """One kernel call: local query rows ``q_part`` ("all", "front", "back") against buffer rows
    ``keys = (start, stop)``."""

    q_part: str
    keys: tuple[int, int]
    causal: bool


@dataclass(frozen=True)
class StepPlan:
    """A step's buffer arrangement (per chunk: front and back row ranges) and its kernel calls."""

    slots: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    blocks: tuple[Block, ...]


def sub_chunk_lengths(half: int, c: int) -> list[int]:
    """Lengths of the ``c`` sub-chunks of a half of ``half`` rows (as equal as possible)."""
    bounds = [round(i * half / c) for i in range(c + 1)]
    return [bounds[i + 1] - bounds[i] for i in range(c)]


def arrangement(step: int, schedule: RingSchedule, rank: int, causal: bool, sharding: Sharding,
                 c: int) -> tuple[list[Piece], list[Span]]:
    """The buffer's piece order and the blocks as ``(q_part, first piece, end piece, causal)``."""
    fronts = [(j, "front") for j in range(c)]
    backs = [(j, "back") for j in range(c)]
    local_order = fronts + backs
    if step % schedule.world_size == 0:
        # the local rows are two halves of increasing position, the front one first (both shardings): the
        # diagonal block is one causal call over them all (front rows see front keys up to their own, back rows
        # all front keys and back keys up to their own)
        return local_order, [("all", 0, 2 * c, causal)]
    if not causal:
        return local_order, [("all", 0, 2 * c, False)]
    sources = [schedule.source(rank, j, step) for j in range(c)]
    earlier = [j for j in range(c) if sources[j] < rank]
    later = [j for j in range(c) if sources[j] > rank]
    e = len(earlier)
    if sharding is Sharding.CONTIGUOUS:
        order = [(j, p) for j in earlier + later for p in ("front", "back")]
        return order, [("all", 0, 2 * e, False)]
    # zigzag: [fronts of earlier | fronts of later, backs of later | backs of earlier]
    order = ([(j, "front") for j in earlier] + [(j, "front") for j in later]
             + [(j, "back") for j in later] + [(j, "back") for j in earlier])
    return order, [("all", 0, e, False), ("back", e, e + 2 * len(later), False)]


def plan_step(schedule: RingSchedule, rank: int, step: int, causal: bool, sharding: Sharding | str,
              lengths: list[int] | tuple[int, ...]) -> StepPlan:
    """Buffer arrangement and blocks of ``rank`` at ``step`` (``step == n`` is home), for sub-chunk ``lengths``."""
    c = schedule.num_cycles
    # Sharding(...) looks a member up by value; mypy checks it against _Choice.__new__ (python/mypy#10573)
    order, spans = arrangement(step, schedule, rank, causal, Sharding(sharding), c)  # type: ignore[call-arg]
    starts: list[int] = []
    offset = 0
    for j, _ in order:
        starts.append(offset)
        offset += lengths[j]
    where = {piece: (s, s + lengths[piece[0]]) for piece, s in zip(order, starts, strict=True)}
    slots = tuple((where[(j, "front")], where[(j, "back")]) for j in range(c))
    bounds = starts + [offset]
    blocks = tuple(Block(q, (bounds[a], bounds[b]), causal_block) for q, a, b, causal_block in spans
                   if bounds[b] > bounds[a])
    return StepPlan(slots, blocks)


@functools.lru_cache(maxsize=256)
def step_plans(schedule: RingSchedule, rank: int, causal: bool, sharding: Sharding,
               lengths: tuple[int, ...]) -> tuple[StepPlan, ...]:
    """``rank``'s plans for steps ``0 .. n`` (``n``: home, where the backward's accumulators end), computed
    once per call shape and shared by the forward and the backward."""
    return tuple(plan_step(schedule, rank, s, causal, sharding, lengths) for s in range(schedule.world_size + 1))


def step_work(schedule: RingSchedule, rank: int, step: int, causal: bool,
              sharding: Sharding | str) -> tuple[float, int]:
    """``(work, calls)`` of ``rank`` at ``step``: its blocks' attention work as a fraction of one
    unmasked local x local block (a causal diagonal block counts half), and the number of kernel calls.
    Counted on sub-chunks of one row each, so the fractions are exact."""
    c = schedule.num_cycles
    plan = plan_step(schedule, rank, step, causal, sharding, (1,) * c)
    rows = {"all": 2 * c, "front": c, "back": c}
    work = sum(rows[b.q_part] * (b.keys[1] - b.keys[0]) * (0.5 if b.causal else 1.0) for b in plan.blocks)
    return work / (2 * c) ** 2, len(plan.blocks)
