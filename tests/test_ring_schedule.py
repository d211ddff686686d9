"""RingSchedule routing tables and multi-node cycles."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasp_plugin.schedules import RingSchedule, is_rail_aligned, multinode_cycles


def check_routing(s: RingSchedule):
    n = s.world_size
    for c in range(s.num_cycles):
        for r in range(n):
            assert s.predecessor(s.successor(r, c), c) == r
            assert s.source(r, c, 0) == r
            # walking back one hop per step visits every rank exactly once
            assert sorted(s.source(r, c, step) for step in range(n)) == list(range(n))
            for step in range(1, n):
                # what r holds at step s is what its predecessor held one step earlier
                assert s.source(r, c, step) == s.source(s.predecessor(r, c), c, step - 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=40).filter(lambda n: n not in (4, 6)))
def test_hamilton_routing(n):
    s = RingSchedule.hamilton(n)
    assert s.kind == "hamilton_flat" and s.num_cycles == n - 1 and s.num_steps == n
    check_routing(s)
    # one step of a K_n schedule is an all-to-all: every rank sends to every other rank once
    for r in range(n):
        assert sorted(dst for _, dst, _ in s.peers(r)) == [x for x in range(n) if x != r]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_ring(n):
    s = RingSchedule.ring(n)
    assert s.cycles == (tuple(range(n)),)
    if n > 1:
        check_routing(s)
        assert s.source(0, 0, 1) == n - 1


@pytest.mark.parametrize("nodes", range(2, 9))
@pytest.mark.parametrize("m", [1, 2, 4, 6, 8])
def test_multinode(nodes, m):
    s = RingSchedule.multinode(nodes, m)
    n = nodes * m
    assert s.world_size == n and s.num_cycles == m and s.nodes == nodes
    check_routing(s)
    for r in range(n):
        dsts = [dst for _, dst, _ in s.peers(r)]
        nic = [d for d in dsts if d // m != r // m]
        assert len(nic) == 1 and nic[0] // m == (r // m + 1) % nodes
        assert sorted(d for d in dsts if d // m == r // m) == [x for x in range(r // m * m, r // m * m + m) if x != r]
    hops = [(a, cyc[(i + 1) % n]) for cyc in s.cycles for i, a in enumerate(cyc) if a // m != cyc[(i + 1) % n] // m]
    off_rail = [(a, b) for a, b in hops if a % m != b % m]
    if m == 1 or nodes % 2 == 0:
        assert not off_rail and is_rail_aligned(nodes, m)
    else:
        # only each cycle's closing hop back to node 0 may leave its rail
        assert all(b // m == 0 and a // m == nodes - 1 for a, b in off_rail)


def test_multinode_odd_gpus_uses_searched_paths():
    s = RingSchedule.multinode(2, 7)
    check_routing(s)


def test_multinode_errors():
    with pytest.raises(ValueError, match="nodes >= 2"):
        multinode_cycles(1, 8)
    with pytest.raises(ValueError, match="3 Hamiltonian paths"):
        multinode_cycles(2, 3)


def test_from_cycles_rejects_broken():
    with pytest.raises(ValueError):
        RingSchedule.from_cycles([[0, 1, 2], [0, 1, 2]])
