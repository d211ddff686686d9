"""Pick the predicted-fastest algorithm for an interconnect and problem, with a one-line reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..planning import Algorithm
from ..schedules import NoHamiltonianDecomposition, NoPathDecomposition
from .interconnect import Interconnect, MultiNode
from .predict import Prediction, predict
from .problem import ComputeRates, Problem

__all__ = ["Choice", "choose_algorithm"]

# what the engine can run on zigzag shards, from simplest to most complex (peers and kernel calls per step)
_CANDIDATES = (Algorithm.ZIGZAG, Algorithm.HAMILTON_MULTINODE, Algorithm.HAMILTON_FLAT)


@dataclass(frozen=True)
class Choice:
    """The chosen ``algorithm`` as a user names it (``zigzag`` or ``hamilton``), the concrete algorithm it
    runs (``schedule``: ``zigzag``, ``hamilton_flat`` or ``hamilton_multinode``), every feasible candidate's
    prediction, and why."""

    algorithm: Algorithm
    schedule: Algorithm
    predictions: Mapping[Algorithm, Prediction]
    reason: str


def _step_summary(p: Prediction) -> str:
    step = p.fwd_steps[1] if len(p.fwd_steps) > 1 else p.fwd_steps[0]
    bound = "transfer-bound" if p.comm_bound else "compute-bound"
    return f"{bound}, forward step compute {step.compute_s * 1e6:.0f} us vs transfer {step.comm_s * 1e6:.0f} us"


def choose_algorithm(interconnect: Interconnect, problem: Problem, rates: ComputeRates | None = None,
                     world_size: int | None = None, backward: bool = True, margin: float = 0.02) -> Choice:
    """The fastest candidate by predicted forward+backward time (forward only if not ``backward``), where a
    more complex schedule must beat the simpler choice by more than ``margin`` (a fraction; the model is no
    more exact than that). Candidates whose schedule does not exist (Hamilton for n = 4, 6) are skipped and
    named in the reason."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    predictions: dict[Algorithm, Prediction] = {}
    skipped: list[str] = []
    for name in _CANDIDATES:
        if name == "hamilton_multinode" and not isinstance(interconnect, MultiNode):
            continue
        try:
            predictions[name] = predict(interconnect, problem, name, rates, world_size)
        except (NoHamiltonianDecomposition, NoPathDecomposition) as exc:
            skipped.append(f"{name} unavailable ({exc})")

    def seconds(p: Prediction) -> float:
        return p.fwd_bwd_s if backward else p.fwd_s

    best = next(iter(predictions))
    for name, p in predictions.items():
        if seconds(p) < seconds(predictions[best]) * (1 - margin):
            best = name
    t_best = seconds(predictions[best])
    phase = "forward+backward" if backward else "forward"
    others = ", ".join(f"{k.value} {seconds(p) * 1e3:.3g} ms ({seconds(p) / t_best:.2f}x)"
                       for k, p in predictions.items() if k != best)
    reason = (f"{best.value}: predicted {t_best * 1e3:.3g} ms {phase} on {interconnect.name} "
              f"({_step_summary(predictions[best])}); {others or 'no other candidate'}")
    close = [k.value for k, p in predictions.items() if seconds(p) < t_best]
    if close:
        reason += f"; kept {best} since {', '.join(close)} gains less than the {margin:.0%} margin"
    if skipped:
        reason += "; " + "; ".join(skipped)
    family = Algorithm.ZIGZAG if best is Algorithm.ZIGZAG else Algorithm.HAMILTON
    return Choice(family, best, predictions, reason)
