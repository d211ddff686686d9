"""What a training run prints about itself: the attention schedule that actually runs on its CP group."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..planning import Algorithm, Topology, resolve

__all__ = ["describe_schedule", "final_line"]


def _one(cp_comm_type: str, topology: Topology, cuda: bool, shape: tuple[int, int, int, int, int] | None,
         nbytes: int, device_name: str | None) -> str:
    requested = "zigzag" if cp_comm_type == "p2p" else cp_comm_type
    prefix = "p2p = " if cp_comm_type == "p2p" else ""
    if requested == Algorithm.AUTO and topology.world_size > 1:
        if cuda and shape is not None:
            from ..api import auto_algorithm

            chosen = auto_algorithm(topology, shape, nbytes, True, device_name or "cuda",
                                    os.environ.get("TASP_INTERCONNECT") or None)
            return (f"auto -> {resolve(chosen, topology).describe()} (the cost model's pick for this model's "
                    f"attention calls on {device_name or 'this GPU'}; it chooses per call shape)")
        if cuda:
            return "auto: the cost model chooses per attention call shape on GPUs"
        return (f"auto -> {resolve(requested, topology).describe()} (off GPUs auto follows the hamilton rule; "
                "on GPUs the cost model chooses per call shape)")
    res = resolve(requested, topology)
    if res.algorithm != res.requested:
        return f"{prefix}{requested} -> {res.describe()}"
    return prefix + res.describe()


def describe_schedule(cp_comm_type: str | Sequence[str], topology: Topology, *, cuda: bool = False,
                      shape: tuple[int, int, int, int, int] | None = None, nbytes: int = 4,
                      device_name: str | None = None) -> str:
    """One line naming the schedule a CP group of ``topology`` runs for ``cp_comm_type`` (an algorithm name,
    Megatron's ``p2p``, or one per layer), from ``planning.resolve``, e.g. ``hamilton -> hamilton_flat: K_8,
    7 cycles`` or ``hamilton -> zigzag (K_4 has no Hamiltonian decomposition ...)``. For ``auto`` on GPUs
    (``cuda``) the cost model's pick for attention calls of ``shape`` ``(batch, heads, kv_heads, local_seq,
    head_dim)`` with ``nbytes`` per element, as ``context_parallel_attention`` makes it."""
    if topology.world_size == 1:
        return "none (CP = 1: plain attention on each rank)"
    if isinstance(cp_comm_type, str):
        return _one(cp_comm_type, topology, cuda, shape, nbytes, device_name)
    lines = {name: _one(name, topology, cuda, shape, nbytes, device_name) for name in cp_comm_type}
    if len(lines) == 1:
        return next(iter(lines.values()))
    per_layer = ", ".join(cp_comm_type)
    return f"per layer [{per_layer}]: " + "; ".join(lines.values())


def final_line(losses: Sequence[float], steps_run: int, tokens_per_second: float, seconds: float,
               **where: str) -> str:
    """The one line a run ends with: the final loss (and the first, for scale), throughput of the steps this
    run made, and where its outputs are (``where``: label -> path)."""
    line = (f"final loss {losses[-1]:.4f} at step {len(losses)} (step 1: {losses[0]:.4f}) | "
            f"{tokens_per_second:,.0f} tokens/s over {steps_run} step{'s' if steps_run != 1 else ''} "
            f"({seconds:.1f} s)")
    return line + "".join(f" | {label} {path}" for label, path in where.items())
