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

SUPPORTED = [n for n in range(2, 129) if n not in (4, 6)]


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
def test_every_supported_n_up_to_128_is_a_decomposition(n):
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
@given(st.integers(min_value=2, max_value=128).filter(lambda n: n not in (4, 6)))
def test_property_decomposition(n):
    assert_decomposition(hamiltonian_decomposition(n), n)


def base_cycle_of_arc(n):
    """Arc -> index of the cycle holding it in the zig-zag decomposition of K*_{n-1}, built from scratch."""
    m = n - 2
    seq = zigzag_sequencing(m)
    owner = {}
    for i in range(m):
        cyc = [m] + [(x + i) % m for x in seq]
        owner.update({(cyc[k], cyc[(k + 1) % (m + 1)]): i for k in range(m + 1)})
    return owner


def test_insertion_path_is_rainbow_hamiltonian_for_every_even_n_up_to_200():
    """The closed form needs no search: it visits every vertex and uses one arc of each base cycle."""
    for n in range(8, 201, 2):
        path = deco.insertion_path(n)
        owner = base_cycle_of_arc(n)
        assert sorted(path) == list(range(n - 1)), n
        assert sorted(owner[arc] for arc in zip(path, path[1:], strict=False)) == list(range(n - 2)), n


def test_insertion_path_shape():
    """0, the odd residues, inf = 10, the even ones, with h + 1 = 6 moved behind h = 5 (n = 12)."""
    assert deco.insertion_path(12) == [0, 1, 3, 5, 6, 7, 9, 10, 2, 4, 8]


@pytest.mark.parametrize("n", [4, 6, 7, 9])
def test_insertion_path_rejects_odd_and_small_n(n):
    with pytest.raises(ValueError, match="even n >= 8"):
        deco.insertion_path(n)


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
    arcs = [(a, b) for p in paths for a, b in zip(p, p[1:], strict=False)]
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
