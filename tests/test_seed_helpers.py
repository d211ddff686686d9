"""The seed README's routing helpers keep the meaning the reference documents."""

import pytest

from tasp_plugin.compat.seed_helpers import (
    calculate_in_mapping_circle,
    calculate_inter_node_mapping,
    calculate_intra_node_in_mapping_two_nodes,
    calculate_intra_node_out_mapping_two_nodes,
    calculate_out_mapping_circle,
    calculate_source_rank_per_iter,
    gen_hamilton_circle,
    gen_hamilton_circle_two_nodes,
    gen_hamilton_path_local,
)
from tasp_plugin.schedules import RingSchedule


@pytest.mark.parametrize("n", [3, 5, 8, 10, 16])
def test_in_and_out_mappings_are_inverse(n):
    looping = gen_hamilton_circle(n)
    out, inn = calculate_out_mapping_circle(looping), calculate_in_mapping_circle(looping)
    for a in range(n):
        assert out[a][a] == inn[a][a] == -1
        for b in range(n):
            if a != b:
                assert out[a][b] == inn[b][a] >= 0
                cyc = looping[out[a][b]]
                assert cyc[(cyc.index(a) + 1) % n] == b
    # every chunk index appears once per row: one send per cycle per step
    assert all(sorted(x for x in row if x >= 0) == list(range(n - 1)) for row in out)


def test_source_rank_table_agrees_with_cycles():
    looping = gen_hamilton_circle(8)
    table = calculate_source_rank_per_iter(looping)
    s = RingSchedule.from_cycles(looping)
    for r in range(8):
        for it in range(8):
            for c in range(7):
                cyc = looping[c]
                src = cyc[(cyc.index(r) - it) % 8]
                assert table[r][it][c] == (src <= r) == (s.source(r, c, it) <= r)


def test_intra_node_mappings():
    paths = gen_hamilton_path_local(8)
    out = calculate_intra_node_out_mapping_two_nodes(paths)
    inn = calculate_intra_node_in_mapping_two_nodes(paths)
    for a in range(8):
        for b in range(8):
            assert out[a][b] == inn[b][a]
            if a != b:
                p = paths[out[a][b]]
                assert p[p.index(a) + 1] == b


@pytest.mark.parametrize("n, m", [(16, 8), (32, 8), (24, 8), (8, 4)])
def test_two_nodes_any_node_count(n, m):
    looping = gen_hamilton_circle_two_nodes(n, m)
    assert len(looping) == m and all(sorted(c) == list(range(n)) for c in looping)
    inbound, outbound = calculate_inter_node_mapping(looping)
    for r, (dst, chunk) in enumerate(outbound):
        assert inbound[dst] == (r, chunk)
        assert dst // m == (r // m + 1) % (n // m)


def test_two_nodes_rejects_bad_split():
    with pytest.raises(ValueError, match="multiple"):
        gen_hamilton_circle_two_nodes(12, 8)


def test_inter_node_mapping_rejects_flat_schedule():
    with pytest.raises(ValueError, match="not an"):
        calculate_inter_node_mapping(gen_hamilton_circle(8))
