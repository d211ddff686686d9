"""Topology, the process-group builder (against Megatron-core's own groups) and multi-node Hamilton in the
engine (emulated node layouts) against single-process attention."""

import os

import pytest
import torch
import torch.distributed as dist

from tasp_plugin.planning import resolve
from tasp_plugin.topology import Topology, cp_rank_lists, subgroup_rank_lists

from .distributed import run_distributed
from .emulated import emulated_errors
from .reference import reference_attention


def test_topology_value():
    t = Topology.parse("2x4")
    assert t.nodes == ((0, 1, 2, 3), (4, 5, 6, 7)) and t.link == "multi_node" and t.gpus_per_node == 4
    assert t.local_index(6) == 2 and t.node_of(6) == 1 and str(t) == "2x4"
    odd = Topology.from_node_ids(["b", "a", "b", "a", "c"])
    assert odd.nodes == ((0, 2), (1, 3), (4,)) and odd.gpus_per_node is None
    assert Topology.uniform(1, 5).link == "single_node"
    for bad in ("2 by 4", "x4", ""):
        with pytest.raises(ValueError, match="2x4"):
            Topology.parse(bad)
    with pytest.raises(ValueError, match="partition"):
        Topology(((0, 1), (1, 2)))


def test_megatron_and_deepspeed_rank_orders():
    assert cp_rank_lists(8, 4, tp_size=2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert cp_rank_lists(16, 2, tp_size=2, pp_size=2) == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11],
                                                          [12, 14], [13, 15]]
    assert cp_rank_lists(8, 4, order="deepspeed") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="divisible"):
        cp_rank_lists(8, 3)
    with pytest.raises(ValueError, match="unknown order"):
        cp_rank_lists(8, 2, order="fsdp")
    with pytest.raises(ValueError, match="tp_size and pp_size must be 1"):
        cp_rank_lists(8, 2, tp_size=2, order="deepspeed")


def test_subgroups_of_a_cp_group_spanning_nodes_and_of_groups_sharing_a_node():
    topo, intra, rails = subgroup_rank_lists([0, 2, 4, 6, 8, 10, 12, 14], lambda g: g // 8)
    assert topo == Topology.parse("2x4")
    assert intra == [[0, 2, 4, 6], [8, 10, 12, 14]] and rails == [[0, 8], [2, 10], [4, 12], [6, 14]]
    topo, intra, rails = subgroup_rank_lists([4, 5, 6, 7], lambda g: g // 8)
    assert topo.num_nodes == 1 and intra == [[4, 5, 6, 7]] and rails == []


@pytest.mark.parametrize("spec, kind", [("2x4", "hamilton_multinode"), ("1x8", "hamilton_flat"),
                                        ("3x3", "hamilton_flat"), ("2x3", "zigzag"), ("1x4", "zigzag"),
                                        ("3x2", "hamilton_multinode")])
def test_hamilton_picks_flat_or_multinode_from_the_topology(spec, kind):
    assert resolve("hamilton", Topology.parse(spec)).algorithm == kind


def test_explicit_multinode_needs_several_equal_nodes():
    with pytest.raises(ValueError, match="hamilton_multinode"):
        resolve("hamilton_multinode", Topology.uniform(1, 8))
    assert resolve("hamilton_flat", Topology.parse("2x4")).schedule.kind == "hamilton_flat"


@pytest.mark.parametrize("spec", ["2x2", "2x4", "4x2", "3x2"])
@pytest.mark.parametrize("causal", [True, False])
def test_multinode_hamilton_matches_reference(spec, causal):
    n = Topology.parse(spec).world_size
    assert resolve("hamilton", Topology.parse(spec)).schedule.kind == "hamilton_multinode"
    errors = emulated_errors(n, "hamilton", causal, 2, torch.float64, 8 * n, topology=spec)
    assert max(errors.values()) < 1e-10, errors


def test_multinode_hamilton_on_nodes_whose_ranks_are_not_consecutive():
    """A CP group whose node members interleave in group order (relabelled schedule)."""
    topo = Topology(((0, 2, 4, 6), (1, 3, 5, 7)))
    plan = resolve("hamilton", topo)
    assert plan.schedule.kind == "hamilton_multinode"
    assert all(plan.schedule.node_of(r) == topo.node_of(r) for r in range(8))
    # every hop of the relabelled cycles: one NIC hop per rank and cycle set, the rest inside a node
    for r in range(8):
        peers = [dst for _, dst, _ in plan.schedule.peers(r)]
        assert sum(topo.node_of(p) != topo.node_of(r) for p in peers) == 1


def _groups_and_engine(rank, world):
    """For several (tp, cp) splits on 8 ranks laid out as 2 nodes x 4: Megatron's CP groups equal ours,
    the sub-groups are the node and rail slices, and multi-node Hamilton through them is exact."""
    from megatron.core import parallel_state as ps

    from tasp_plugin import context_parallel_attention
    from tasp_plugin.compat.seed_api import hamilton_attention_forward_full_flash_attn_two_nodes
    from tasp_plugin.integrations.megatron import initialize_tasp_groups, tasp_groups_for
    from tasp_plugin.sharding import shard_sequence
    from tasp_plugin.topology import build_cp_groups, build_subgroups

    os.environ["TASP_TOPOLOGY"] = "2x4"
    report = {}
    for tp, cp in ((1, 8), (2, 4), (2, 2), (1, 2), (4, 2)):
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
        mine = next(g for g in cp_rank_lists(world, cp, tp_size=tp) if rank in g)
        groups = build_subgroups(ps.get_context_parallel_group())
        registered = initialize_tasp_groups()
        report[("registered", tp, cp)] = (tasp_groups_for(ps.get_context_parallel_group()) is registered
                                          and registered.inter_ranks == groups.inter_ranks)
        _, intra, rails = subgroup_rank_lists(mine, lambda g: g // 4)
        report[(tp, cp)] = (ps.get_context_parallel_global_ranks() == mine,
                            list(groups.intra_ranks) == next((g for g in intra if rank in g and len(g) > 1), []),
                            list(groups.inter_ranks) == next((g for g in rails if rank in g), []),
                            groups.topology)
        if cp > 2:
            torch.manual_seed(7)
            q, k, v = (torch.randn(1, 16 * cp, h, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
            ref, _ = reference_attention(q, k, v, True, 8 ** -0.5)
            ref.sum().backward()
            me = dist.get_rank(groups.cp)
            lq, lk, lv = (shard_sequence(x.detach(), me, cp, 1).requires_grad_() for x in (q, k, v))
            out = context_parallel_attention(lq, lk, lv, group=groups, algorithm="hamilton", causal=True)
            out.sum().backward()
            pairs = [(out, ref), (lq.grad, q.grad), (lk.grad, k.grad), (lv.grad, v.grad)]
            report[("engine", cp)] = max((a - shard_sequence(r.detach(), me, cp, 1)).abs().max().item()
                                         for a, r in pairs)
        ps.destroy_model_parallel()
    # the seed's multi-node entry point on the whole 2x4 world, non-causal
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 64, 2, 8, dtype=torch.float64) for _ in range(3))
    ref, ref_lse = reference_attention(q, k, v, False, 0.3)
    local = [x.chunk(8, 1)[rank] for x in (q, k, v)]
    out, lse = hamilton_attention_forward_full_flash_attn_two_nodes(None, local[0], list(local[1].chunk(4, 1)),
                                                                   list(local[2].chunk(4, 1)), 0.3)
    report["seed"] = max((out - ref.chunk(8, 1)[rank]).abs().max().item(),
                         (lse - ref_lse.chunk(8, 2)[rank]).abs().max().item())
    # DeepSpeed-ordered CP groups of 4 on the same layout: one group per node, no rails
    ds = build_cp_groups(4, order="deepspeed")
    report["deepspeed"] = (ds.cp_ranks, ds.topology.num_nodes, ds.inter)
    return report


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.integration  # uses megatron-core's parallel_state: run on both CI lines
def test_groups_match_megatron_and_multinode_engine_is_exact():
    pytest.importorskip("megatron.core")
    for rank, report in enumerate(run_distributed(_groups_and_engine, 8)):
        for split in ((1, 8), (2, 4), (2, 2), (1, 2), (4, 2)):
            same_cp, same_intra, same_rail, topo = report[split]
            assert same_cp and same_intra and same_rail, (rank, split)
            assert report[("registered", *split)], (rank, split)
        assert report[(1, 8)][3] == Topology.parse("2x4") and report[(2, 4)][3] == Topology.parse("2x2")
        assert report[("engine", 8)] < 1e-10 and report[("engine", 4)] < 1e-10, report
        assert report["seed"] < 1e-10
        cp_ranks, nodes, inter = report["deepspeed"]
        assert cp_ranks == tuple(range(4 * (rank // 4), 4 * (rank // 4) + 4)) and nodes == 1 and inter is None


def test_schedule_choice_is_built_once_per_algorithm_and_topology():
    """The attention call asks on every layer: the second ask returns the same object, not a rebuild."""
    topo = Topology.parse("2x4")
    assert resolve("hamilton", topo) is resolve("hamilton", Topology.parse("2x4"))
    assert resolve("hamilton", topo) is not resolve("hamilton_flat", topo)
