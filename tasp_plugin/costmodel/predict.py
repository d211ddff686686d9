"""Per-step and end-to-end time of ring, zigzag and Hamilton attention: each step is max(compute, transfer).

Step ``s`` (``s = 0 .. n-1``) computes on the chunks held at step ``s`` while the chunks for step ``s + 1`` are
in flight, so a step lasts the longer of the two, the compute slowed by the transfer beside it
(``ComputeRates.contention_gbps``); the slowest rank sets the pace. Per step a rank sends its
whole local K/V once, split evenly over the schedule's cycles (ring: all of it to one peer; flat Hamilton:
``1/(n-1)`` to each of ``n-1`` peers; multi-node Hamilton: ``1/m`` to each of ``m-1`` node peers and one NIC
peer). The backward also carries the dK/dV accumulators along the same cycles (docs/DESIGN.md, "Backward"):
window ``s`` sends K/V for step ``s + 1`` and the accumulators of step ``s - 1``, and one last hop brings the
accumulators home after the final step, not overlapped with anything.

Compute per step is counted from the engine's own step plans (``planning.step_work``: the causal rule of
docs/DESIGN.md, "One step"). On zigzag sharding every rank does half a local-sized block every step. The
paper's Ring Attention baseline is ``ring`` on contiguous sharding: a chunk from an earlier rank is a full
unmasked block, one from a later rank is skipped, so some rank does a full block every step after the
first. Without a causal mask every schedule does a full block every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..planning import Algorithm, Sharding, Topology, parse_choice, resolve, step_sends, step_work
from ..schedules import RingSchedule
from .interconnect import Interconnect, MultiNode
from .problem import ComputeRates, Problem

__all__ = ["Prediction", "StepTime", "predict"]


@dataclass(frozen=True)
class StepTime:
    """One step of the slowest rank: compute and the overlapped transfer, in seconds."""

    compute_s: float
    comm_s: float
    contention_s: float = 0.0

    @property
    def time_s(self) -> float:
        """Overlapped step time: the longer of the transfer and the compute, which a transfer beside it
        slows by ``contention_s`` (``ComputeRates.contention_gbps``)."""
        return max(self.comm_s, self.compute_s + (self.contention_s if self.comm_s > 0 else 0.0))


@dataclass(frozen=True)
class Prediction:
    """Predicted timeline of one attention call: forward steps, backward steps and the backward's last hop."""

    algorithm: Algorithm
    sharding: Sharding
    world_size: int
    num_cycles: int
    fwd_steps: tuple[StepTime, ...]
    bwd_steps: tuple[StepTime, ...]
    bwd_tail_s: float

    @property
    def fwd_s(self) -> float:
        """Forward time in seconds."""
        return sum(step.time_s for step in self.fwd_steps)

    @property
    def bwd_s(self) -> float:
        """Backward time in seconds, including the final dK/dV hop home."""
        return sum(step.time_s for step in self.bwd_steps) + self.bwd_tail_s

    @property
    def fwd_bwd_s(self) -> float:
        """Forward plus backward time in seconds."""
        return self.fwd_s + self.bwd_s

    @property
    def comm_bound(self) -> bool:
        """Whether transfers, not compute, set the forward's pace (over the steps that overlap a transfer)."""
        overlapped = self.fwd_steps[:-1]
        return sum(s.comm_s for s in overlapped) > sum(s.compute_s for s in overlapped)


def _schedule(algorithm: Algorithm, interconnect: Interconnect, world_size: int) -> RingSchedule:
    """The schedule ``algorithm`` (a concrete one) runs on ``world_size`` ranks of ``interconnect``.

    Raises ValueError (NoHamiltonianDecomposition, NoPathDecomposition) where the schedule does not exist.
    """
    if not algorithm.concrete:
        raise ValueError(f"algorithm {algorithm.value!r} is a rule, not a schedule; predict one of "
                         f"{[a.value for a in Algorithm if a.concrete]}")
    if algorithm is Algorithm.HAMILTON_MULTINODE and not isinstance(interconnect, MultiNode):
        raise ValueError("algorithm 'hamilton_multinode' needs a MultiNode interconnect")
    topology = (Topology.uniform(interconnect.nodes, interconnect.gpus_per_node)
                if isinstance(interconnect, MultiNode) else Topology.uniform(1, world_size))
    return resolve(algorithm, topology).schedule


def _comm_seconds(interconnect: Interconnect, schedule: RingSchedule, nbytes: float) -> float:
    """Transfer time of one step in which every rank moves ``nbytes``: the slowest rank's."""
    if nbytes <= 0 or schedule.world_size < 2:
        return 0.0
    return max(interconnect.comm_seconds(r, step_sends(schedule, r, nbytes)) for r in range(schedule.world_size))


def _world_size(interconnect: Interconnect, world_size: int | None) -> int:
    if world_size is None:
        return interconnect.world_size
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(interconnect, MultiNode) and world_size != interconnect.world_size:
        raise ValueError(f"world_size {world_size} must equal the MultiNode interconnect's {interconnect.world_size} "
                         "(describe a group inside one node by the intra interconnect)")
    if world_size > interconnect.world_size:
        raise ValueError(f"world_size {world_size} exceeds the interconnect's {interconnect.world_size} GPUs")
    return world_size


def predict(interconnect: Interconnect, problem: Problem, algorithm: Algorithm | str,
            rates: ComputeRates | None = None, world_size: int | None = None,
            sharding: Sharding | str = Sharding.ZIGZAG) -> Prediction:
    """Predict a concrete ``algorithm``'s forward and backward timeline for ``problem`` on ``world_size``
    ranks (default: all GPUs of ``interconnect``) with kernel ``rates`` (default: the measured H200 cuDNN numbers),
    for inputs split by ``sharding``."""
    rates = rates or ComputeRates()
    chosen = parse_choice(Algorithm, algorithm, "algorithm")
    split = parse_choice(Sharding, sharding, "sharding")
    n = _world_size(interconnect, world_size)
    schedule = _schedule(chosen, interconnect, n)
    block = problem.block_flops(n)
    kv = problem.kv_elements(n) * problem.dtype_bytes
    grads = problem.kv_elements(n) * problem.grad_bytes
    kv_only, grads_only, both = (_comm_seconds(interconnect, schedule, b) for b in (kv, grads, kv + grads))
    overhead = rates.call_overhead_us * 1e-6
    fwd, bwd = [], []
    for s in range(n):
        work = [step_work(schedule, r, s, problem.causal, split) for r in range(n)]
        fwd_compute = max(w * block / (rates.fwd_tflops * 1e12) + calls * overhead for w, calls in work)
        bwd_compute = max(w * block * rates.bwd_flop_ratio / (rates.bwd_tflops * 1e12) + calls * overhead
                          for w, calls in work)
        last = s == n - 1
        fwd_bytes = 0.0 if last else kv
        bwd_bytes = kv if s == 0 else grads if last else kv + grads
        fwd.append(StepTime(fwd_compute, 0.0 if last else kv_only, fwd_bytes / (rates.contention_gbps * 1e9)))
        bwd.append(StepTime(bwd_compute, (kv_only if s == 0 else grads_only if last else both),
                            bwd_bytes / (rates.contention_gbps * 1e9)))
    return Prediction(chosen, split, n, schedule.num_cycles, tuple(fwd), tuple(bwd), grads_only)
