"""Head x sequence layouts: the predicted time of Ulysses all-to-all groups of ``u`` GPUs inside a node
around a ring schedule over the remaining ``n / u``, and the choice among all layouts a machine allows.

The all-to-all stage is not overlapped with anything: the forward swaps q, k, v into head shards and the
output back (four all-to-alls), the backward the output gradient in and dq, dk, dv back (four more). Each
all-to-all sends ``1/u`` of a tensor to each of the ``u - 1`` peers of the group, on the node's links. The
ring part is :func:`predict` on the ring group (one GPU of each all-to-all group: ``m / u`` per node, each
with its own NIC) for ``1/u`` of the heads; K/V heads fewer than ``u`` are repeated up to ``u`` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..planning import Algorithm, HybridLayout
from ..schedules import NoHamiltonianDecomposition, NoPathDecomposition
from .interconnect import FullMesh, Interconnect, MultiNode, Switch
from .predict import Prediction, predict
from .problem import ComputeRates, Problem

__all__ = ["LayoutChoice", "LayoutPrediction", "choose_layout", "predict_layout"]

_RING_CANDIDATES = (Algorithm.ZIGZAG, Algorithm.HAMILTON_MULTINODE, Algorithm.HAMILTON_FLAT)


@dataclass(frozen=True)
class LayoutPrediction:
    """One layout: ``ulysses`` x ``ring`` ranks, the ring schedule's prediction (for ``1/ulysses`` of the
    heads) and the all-to-all seconds added to the forward and to the backward."""

    ulysses: int
    ring: int
    ring_prediction: Prediction
    a2a_fwd_s: float
    a2a_bwd_s: float

    @property
    def name(self) -> str:
        """``"zigzag x 8"`` for a plain ring, ``"a2a 8"`` for all-to-all only, ``"a2a 4 + hamilton_flat x 2"``."""
        ring = f"{self.ring_prediction.algorithm.value} x {self.ring}"
        if self.ulysses == 1:
            return ring
        return f"a2a {self.ulysses}" if self.ring == 1 else f"a2a {self.ulysses} + {ring}"

    @property
    def fwd_s(self) -> float:
        return self.a2a_fwd_s + self.ring_prediction.fwd_s

    @property
    def fwd_bwd_s(self) -> float:
        return self.a2a_fwd_s + self.a2a_bwd_s + self.ring_prediction.fwd_bwd_s


@dataclass(frozen=True)
class LayoutChoice:
    """The predicted-fastest layout, every feasible layout's prediction (by name), and why."""

    best: LayoutPrediction
    predictions: Mapping[str, LayoutPrediction]
    reason: str


def _gpus_per_node(interconnect: Interconnect) -> int:
    return interconnect.gpus_per_node if isinstance(interconnect, MultiNode) else interconnect.world_size


def _ring_interconnect(interconnect: Interconnect, ulysses: int) -> Interconnect:
    """The links one ring group sees: ``m / u`` GPUs per node (all ring groups run at once, but each GPU
    has its own NVLink injection and its own NIC), as many nodes as before."""
    if isinstance(interconnect, MultiNode):
        return replace(interconnect, intra=replace(interconnect.intra, gpus=interconnect.gpus_per_node // ulysses))
    return replace(interconnect, gpus=interconnect.world_size // ulysses)


def _a2a_seconds(interconnect: Interconnect, ulysses: int, nbytes: float, efficiency: float) -> float:
    """One all-to-all of a ``nbytes`` tensor per rank inside a group of ``ulysses`` GPUs of one node, at
    ``efficiency`` of the modelled link rate (``ComputeRates.a2a_efficiency``)."""
    if ulysses == 1:
        return 0.0
    node: FullMesh | Switch = interconnect.intra if isinstance(interconnect, MultiNode) else interconnect
    return node.comm_seconds(0, {peer: nbytes / ulysses / efficiency for peer in range(1, ulysses)})


def predict_layout(interconnect: Interconnect, problem: Problem, ulysses: int, algorithm: Algorithm | str,
                   rates: ComputeRates | None = None) -> LayoutPrediction:
    """Predict all-to-all groups of ``ulysses`` GPUs (dividing the GPUs per node) around the concrete ring
    ``algorithm`` over the rest. ``ValueError`` where the split or its ring schedule does not exist."""
    m, n = _gpus_per_node(interconnect), interconnect.world_size
    if ulysses < 1 or m % ulysses:
        raise ValueError(f"ulysses {ulysses} must divide the {m} GPUs per node")
    kv = problem.kv_heads * HybridLayout.of(n, ulysses).kv_repeats(problem.heads, problem.kv_heads)
    ring_problem = replace(problem, heads=problem.heads // ulysses, kv_heads=kv // ulysses)
    rates = rates or ComputeRates()
    ring = predict(_ring_interconnect(interconnect, ulysses), ring_problem, algorithm, rates)
    local = problem.batch * problem.local_tokens(n) * problem.head_dim * problem.dtype_bytes
    forward = 2 * sum(_a2a_seconds(interconnect, ulysses, local * heads, rates.a2a_efficiency)
                      for heads in (problem.heads, kv))
    return LayoutPrediction(ulysses, n // ulysses, ring, forward, forward)


def choose_layout(interconnect: Interconnect, problem: Problem, rates: ComputeRates | None = None,
                  backward: bool = True, margin: float = 0.02) -> LayoutChoice:
    """The fastest layout by predicted forward+backward time (forward only if not ``backward``) over every
    all-to-all size that divides the GPUs per node and the heads, and every ring schedule that exists for
    the rest; a layout with more all-to-all must win by more than ``margin`` over one with less."""
    m = _gpus_per_node(interconnect)
    predictions: dict[str, LayoutPrediction] = {}
    for ulysses in (u for u in range(1, m + 1) if m % u == 0):
        for algorithm in _RING_CANDIDATES:
            try:
                layout = predict_layout(interconnect, problem, ulysses, algorithm, rates)
            except (ValueError, NoHamiltonianDecomposition, NoPathDecomposition):
                continue
            if layout.ring == 1 and algorithm is not Algorithm.ZIGZAG:
                continue  # one ring rank: every schedule is the same single call
            predictions.setdefault(layout.name, layout)

    def seconds(p: LayoutPrediction) -> float:
        return p.fwd_bwd_s if backward else p.fwd_s

    ordered = sorted(predictions.values(), key=lambda p: (p.ulysses, seconds(p)))
    best = ordered[0]
    for p in ordered[1:]:
        if seconds(p) < seconds(best) * (1 - margin if p.ulysses > best.ulysses else 1):
            best = p
    t = seconds(best)
    phase = "forward+backward" if backward else "forward"
    a2a = (f"all-to-all {(best.a2a_fwd_s + (best.a2a_bwd_s if backward else 0)) * 1e3:.3g} ms of it"
           if best.ulysses > 1 else "no all-to-all")
    others = ", ".join(f"{p.name} {seconds(p) / t:.2f}x" for p in sorted(predictions.values(), key=seconds)
                       if p is not best)
    reason = (f"{best.name}: predicted {t * 1e3:.3g} ms {phase} on {interconnect.name} ({a2a}); "
              f"{others or 'no other layout'}")
    faster = [p.name for p in predictions.values() if seconds(p) < t]
    if faster:
        reason += f"; kept it since {', '.join(faster)} gain less than the {margin:.0%} margin for more all-to-all"
    return LayoutChoice(best, predictions, reason)
