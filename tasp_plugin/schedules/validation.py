"""Checks that a set of cycles or paths really is the schedule it claims to be.

Every generated schedule goes through these before use; errors name the offending cycle and arc.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ScheduleError", "validate_cycles", "validate_paths"]


class ScheduleError(ValueError):
    """A cycle or path set violates a schedule invariant."""


def _check_vertices(seq: Sequence[int], n: int, what: str) -> None:
    bad = [v for v in seq if not isinstance(v, int) or not 0 <= v < n]
    if bad:
        raise ScheduleError(f"{what} {list(seq)} has vertices outside 0..{n - 1}: {bad}")
    if len(set(seq)) != len(seq):
        raise ScheduleError(f"{what} {list(seq)} visits a vertex twice")


def validate_cycles(
    cycles: Sequence[Sequence[int]],
    n: int,
    *,
    complete: bool = False,
    allowed_arcs: set[tuple[int, int]] | None = None,
) -> None:
    """Raise :class:`ScheduleError` unless every cycle is a Hamiltonian cycle over ranks 0..n-1 and no
    arc is used twice.

    ``complete=True`` also requires that the cycles cover every ordered pair (a Hamiltonian decomposition
    of K*_n). ``allowed_arcs`` restricts which arcs may appear (e.g. the links of a multi-node topology).
    """
    if n < 1:
        raise ScheduleError(f"world size must be >= 1, got {n}")
    if not cycles:
        raise ScheduleError("no cycles given")
    seen: dict[tuple[int, int], int] = {}
    for c, cyc in enumerate(cycles):
        if len(cyc) != n:
            raise ScheduleError(f"cycle {c} {list(cyc)} has {len(cyc)} vertices, expected {n}")
        _check_vertices(cyc, n, f"cycle {c}")
        if n == 1:
            continue
        for pos, a in enumerate(cyc):
            arc = (a, cyc[(pos + 1) % n])
            if arc in seen:
                raise ScheduleError(f"arc {arc[0]}->{arc[1]} is used by cycle {seen[arc]} and cycle {c}")
            if allowed_arcs is not None and arc not in allowed_arcs:
                raise ScheduleError(f"cycle {c} uses arc {arc[0]}->{arc[1]}, which is not a link")
            seen[arc] = c
    if complete:
        missing = [(a, b) for a in range(n) for b in range(n) if a != b and (a, b) not in seen]
        if missing:
            raise ScheduleError(f"cycles do not cover every ordered pair: missing arcs {missing[:8]}")


def validate_paths(paths: Sequence[Sequence[int]], m: int) -> None:
    """Raise unless ``paths`` are m arc-disjoint Hamiltonian paths of K*_m covering every ordered pair,
    with every vertex starting exactly one path and ending exactly one."""
    if len(paths) != m:
        raise ScheduleError(f"expected {m} paths, got {len(paths)}")
    for p, path in enumerate(paths):
        if len(path) != m:
            raise ScheduleError(f"path {p} {list(path)} has {len(path)} vertices, expected {m}")
    for name, ends in (("starts", [p[0] for p in paths]), ("ends", [p[-1] for p in paths])):
        if sorted(ends) != list(range(m)):
            raise ScheduleError(f"every vertex must start and end exactly one path; path {name}: {ends}")
    seen: dict[tuple[int, int], int] = {}
    for p, path in enumerate(paths):
        _check_vertices(path, m, f"path {p}")
        for a, b in zip(path, path[1:], strict=False):  # consecutive pairs
            if (a, b) in seen:
                raise ScheduleError(f"arc {a}->{b} is used by path {seen[(a, b)]} and path {p}")
            seen[(a, b)] = p
    if len(seen) != m * (m - 1):
        raise ScheduleError(f"paths cover {len(seen)} arcs, expected {m * (m - 1)}")
