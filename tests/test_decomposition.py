"""Hamiltonian decompositions and path decompositions, checked independently of validate_cycles."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasp_plugin.schedules import (
    NoHamiltonianDecomposition,
    NoPathDecomposition,
    hamiltonian_decomposition,
    hamiltonian_path_decomposition,
    zigzag_sequencing,
)
from tasp_plugin.schedules import decomposition as deco

SUPPORTED = [n for n in range(2, 65) if n not in (4, 6)]


def assert_decomposition(cycles, n):
    """Independent check: n-1 Hamiltonian cycles whose arcs are exactly the n(n-1) ordered pairs."""
    assert len(cycles) == n - 1
    arcs = []
    for cyc in cycles:
        assert sorted(cyc) == list(range(n)), cyc
        arcs += [(cyc[i], cyc[(i + 1) % n]) for i in range(n)] if n > 2 else [(cyc[0], cyc[1]), (cyc[1], cyc[0])]
    assert len(arcs) == n * (n - 1)
    assert set(arcs) == {(a, b) for a in range(n) for b in range(n) if a != b}


@pytest.mark.parametrize("n", SUPPORTED)
def test_every_supported_n_up_to_64_is_a_decomposition(n):
    assert_decomposition(hamiltonian_decomposition(n), n)


@pytest.mark.parametrize("n", [4, 6])
def test_no_decomposition_for_4_and_6(n):
    with pytest.raises(NoHamiltonianDecomposition, match="no decomposition") as info:
        hamiltonian_decomposition(n)
    assert isinstance(info.value, ValueError)
    assert "ring" in str(info.value)


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, "8"])
def test_bad_world_size_is_a_value_error(bad):
    with pytest.raises(ValueError):
        hamiltonian_decomposition(bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=64).filter(lambda n: n not in (4, 6)))
def test_property_decomposition(n):
    assert_decomposition(hamiltonian_decomposition(n), n)


@pytest.mark.parametrize("n", [8, 10, 12, 14, 18, 22, 26, 30])
def test_search_without_cache_finds_valid_insertion(n, monkeypatch):
    """The search itself (not the shipped cache) yields a valid decomposition for n % 4 == 0 and 2."""
    shipped = deco._cached_insertion_paths()
    monkeypatch.setattr(deco, "_cached_insertion_paths", lambda: {})
    path = deco.find_insertion_path(n)
    assert sorted(path) == list(range(n - 1))
    assert path == shipped[n], "the shipped cache must be what build_cache reproduces"
    assert_decomposition(deco._even_cycles(n), n)


def test_shipped_cache_entries_are_valid_paths():
    cache = deco._cached_insertion_paths()
    assert all(n in cache for n in range(8, 65, 2)), "cache must cover every even n <= 64"
    for n, path in cache.items():
        assert_decomposition(deco._even_cycles(n), n)


@pytest.mark.parametrize("m", [2, 4, 6, 8, 10, 16])
def test_zigzag_sequencing_is_a_sequencing(m):
    seq = zigzag_sequencing(m)
    assert sorted(seq) == list(range(m))
    assert sorted((seq[i + 1] - seq[i]) % m for i in range(m - 1)) == list(range(1, m))


def test_zigzag_sequencing_rejects_odd():
    with pytest.raises(ValueError, match="even"):
        zigzag_sequencing(5)


def assert_path_decomposition(paths, m):
    assert len(paths) == m
    arcs = [(a, b) for p in paths for a, b in zip(p, p[1:])]
    assert all(sorted(p) == list(range(m)) for p in paths)
    assert len(arcs) == len(set(arcs)) == m * (m - 1)
    assert sorted(p[0] for p in paths) == sorted(p[-1] for p in paths) == list(range(m))


@pytest.mark.parametrize("m", list(range(2, 65, 2)) + [1, 7, 9, 11])
def test_path_decompositions(m):
    assert_path_decomposition(hamiltonian_path_decomposition(m), m)


@pytest.mark.parametrize("m", [3, 5])
def test_no_path_decomposition_for_3_and_5(m):
    with pytest.raises(NoPathDecomposition, match="exhaustive"):
        hamiltonian_path_decomposition(m)
