"""Hamiltonian decompositions of the complete digraph K*_n and path decompositions of K*_m.

Construction (pure combinatorics, no torch):

* odd ``n``: the 1-rotational decomposition. Vertices are ``Z_{n-1}`` plus a fixed point ``inf = n-1``;
  with a *sequencing* ``a`` of ``Z_{n-1}`` (consecutive differences are all non-zero residues), the
  ``n-1`` cycles ``[inf, a_0+i, ..., a_{n-2}+i]`` are arc-disjoint and cover K*_n. With the zig-zag
  sequencing ``0, 1, -1, 2, -2, ...`` this is Walecki's decomposition with each cycle used both ways.
* even ``n >= 8``: take the odd decomposition of K*_{n-1} and a second fixed point ``n-1``. Pick one arc
  ``x -> y`` from each of its ``n-2`` cycles so that the picked arcs form a Hamiltonian path of K*_{n-1};
  inserting ``n-1`` between ``x`` and ``y`` keeps every cycle Hamiltonian, and ``n-1`` followed by the
  path closes the last cycle. The path is given in closed form by :func:`insertion_path` (no search, no
  cache; every result is still validated), so any even n costs milliseconds. Existence for every even
  n >= 8 is Tillson's theorem (T. W. Tillson, J. Combin. Theory B 29 (1980) 68-74); this path is our own
  construction, proved in :func:`insertion_path`'s docstring and checked by the tests up to n = 200.
* ``n = 4, 6``: no decomposition exists (Bermond-Faber); :class:`NoHamiltonianDecomposition`.
"""

from __future__ import annotations

from functools import cache

from .validation import validate_cycles, validate_paths

__all__ = [
    "NoHamiltonianDecomposition",
    "NoPathDecomposition",
    "hamiltonian_decomposition",
    "hamiltonian_path_decomposition",
    "insertion_path",
    "zigzag_sequencing",
]

_INSERTION_PATH_8 = (2, 4, 6, 5, 3, 1, 0)


class NoHamiltonianDecomposition(ValueError):
    """K*_n has no decomposition into n-1 Hamiltonian cycles (n = 4 or 6)."""


class NoPathDecomposition(ValueError):
    """K*_m has no decomposition into m Hamiltonian paths for this m (or none is implemented)."""


def zigzag_sequencing(m: int) -> list[int]:
    """The sequencing ``0, 1, m-1, 2, m-2, ...`` of Z_m (m even): its m-1 steps are 1, -2, 3, -4, ...

    All partial sums are distinct and all differences are the distinct non-zero residues.
    """
    if m < 1 or (m > 1 and m % 2):
        raise ValueError(f"a zig-zag sequencing of Z_m needs an even m (or m = 1), got {m}")
    seq = [0]
    for j in range(1, m):
        seq.append((j + 1) // 2 if j % 2 else (-(j // 2)) % m)
    return seq


def _rotational_cycles(n: int) -> list[list[int]]:
    """The 1-rotational decomposition of K*_n for odd n (vertices Z_{n-1} plus fixed point n-1)."""
    m = n - 1
    base = zigzag_sequencing(m)
    return [[m] + [(x + i) % m for x in base] for i in range(m)]


def _arc_owner(cycles: list[list[int]], n: int) -> list[list[int]]:
    """``owner[a][b]`` = index of the cycle that holds arc a -> b (-1 on the diagonal)."""
    owner = [[-1] * n for _ in range(n)]
    for c, cyc in enumerate(cycles):
        for pos, a in enumerate(cyc):
            owner[a][cyc[(pos + 1) % len(cyc)]] = c
    return owner


def insertion_path(n: int) -> list[int]:
    """Closed-form rainbow Hamiltonian path of the zig-zag decomposition of K*_{n-1} (n even, n >= 8).

    With ``m = n - 2``, ``h = m / 2`` and the fixed point ``inf = m``: ``0``, the odd residues, ``inf``, the
    even residues ``2..m-2``, each in increasing order, with ``h + 1`` moved to just after ``h``.
    Proof: in the zig-zag decomposition arc ``x -> x + d`` (``0 < d < m``) lies in cycle ``x + (d-1)/2``
    for odd d and ``x + d/2 - h`` for even d, ``inf -> y`` in cycle ``y`` and ``x -> inf`` in cycle
    ``x - h``. The arcs ``0 -> 1``, ``h-1 -> h+3``, ``inf -> 2``, ``m-1 -> inf``, ``h -> h+1`` and
    ``h+1 -> h+2`` take cycles 0, 1, 2, h-1, h, h+1; the four runs of step 2 (odd and even vertices below
    and above h) take the other residues once each. n = 8 (m = 6, too small for the pattern) uses a path
    found by computer search.
    """
    if n % 2 or n < 8:
        raise ValueError(f"insertion paths exist for even n >= 8, got {n}")
    if n == 8:
        return list(_INSERTION_PATH_8)
    m, h = n - 2, (n - 2) // 2
    path = [0, *range(1, m, 2), m, *range(2, m, 2)]
    path.remove(h + 1)
    path.insert(path.index(h) + 1, h + 1)
    return path


def _even_cycles(n: int) -> list[list[int]]:
    """Decomposition of K*_n, n even >= 8: the odd one of K*_{n-1} with vertex n-1 inserted."""
    base = _rotational_cycles(n - 1)
    path = insertion_path(n)
    owner = _arc_owner(base, n - 1)
    cycles = [list(c) for c in base]
    for x, y in zip(path, path[1:], strict=False):  # consecutive pairs
        cyc = cycles[owner[x][y]]
        cyc.insert(cyc.index(y), n - 1)
    cycles.append([n - 1] + list(path))
    return cycles


@cache
def _decomposition(n: int) -> tuple[tuple[int, ...], ...]:
    if n == 2:
        cycles = [[0, 1]]
    elif n % 2:
        cycles = _rotational_cycles(n)
    else:
        cycles = _even_cycles(n)
    validate_cycles(cycles, n, complete=True)
    return tuple(tuple(c) for c in cycles)


def hamiltonian_decomposition(n: int) -> list[list[int]]:
    """n-1 arc-disjoint directed Hamiltonian cycles covering every ordered pair of ranks 0..n-1.

    Cycle ``[v0, v1, ..., v_{n-1}]`` means data flows v0 -> v1 -> ... -> v_{n-1} -> v0.
    Raises :class:`NoHamiltonianDecomposition` for n = 4 and 6, where none exists.
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"a Hamiltonian decomposition needs n >= 2 ranks, got {n!r}")
    if n in (4, 6):
        raise NoHamiltonianDecomposition(
            f"K*_{n} has no decomposition into {n - 1} Hamiltonian cycles (proven for n = 4 and 6); "
            f"use the ring schedule (algorithm='zigzag' or 'ring') for a world size of {n}"
        )
    return [list(c) for c in _decomposition(n)]


@cache
def _path_decomposition(m: int) -> tuple[tuple[int, ...], ...]:
    if m == 1:
        return ((0,),)
    if m % 2 == 0:
        base = zigzag_sequencing(m)
        paths = [[(x + i) % m for x in base] for i in range(m)]
    else:
        paths = _search_odd_path_decomposition(m)
    validate_paths(paths, m)
    return tuple(tuple(p) for p in paths)


def _search_odd_path_decomposition(m: int, node_limit: int = 2_000_000) -> list[list[int]]:
    """Depth-first search for odd m: path i starts at vertex i (every vertex starts exactly one path).

    Exhaustive for m = 3 and 5 (none exists); finds one for m = 7, 9, 11 in well under a second.
    """
    used = [[False] * m for _ in range(m)]
    ended = [False] * m
    paths: list[list[int]] = []
    budget = [node_limit]

    def extend(path: list[int], on_path: list[bool]) -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            raise TimeoutError
        if len(path) == m:
            if ended[path[-1]]:
                return False
            ended[path[-1]] = True
            paths.append(list(path))
            if len(paths) == m or start_next():
                return True
            paths.pop()
            ended[path[-1]] = False
            return False
        x = path[-1]
        for y in range(m):
            if on_path[y] or used[x][y]:
                continue
            used[x][y] = on_path[y] = True
            path.append(y)
            if extend(path, on_path):
                return True
            path.pop()
            used[x][y] = on_path[y] = False
        return False

    def start_next() -> bool:
        start = len(paths)
        on_path = [False] * m
        on_path[start] = True
        return extend([start], on_path)

    try:
        found = start_next()
    except TimeoutError:
        raise NoPathDecomposition(
            f"no Hamiltonian path decomposition of K*_{m} found within the search budget (odd m); "
            "use an even number of GPUs per node"
        ) from None
    if not found:
        raise NoPathDecomposition(
            f"K*_{m} has no decomposition into {m} Hamiltonian paths (exhaustive search); "
            "use an even number of GPUs per node"
        )
    return paths


def hamiltonian_path_decomposition(m: int) -> list[list[int]]:
    """m arc-disjoint directed Hamiltonian paths of K*_m; every vertex starts one and ends one.

    For even m these are the m rotations of the zig-zag path ``0, 1, m-1, 2, m-2, ...``; path i starts
    at i and ends at i + m/2. Odd m is searched: none exists for m = 3 and 5 (:class:`NoPathDecomposition`).
    """
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"a path decomposition needs m >= 1 vertices, got {m!r}")
    return [list(p) for p in _path_decomposition(m)]
