"""algorithm="auto" on GPUs and `tasp plan --interconnect` use the cost model."""

from tasp_plugin.api import auto_algorithm
from tasp_plugin.cli import main
from tasp_plugin.topology import Topology


def test_auto_prefers_hamilton_where_transfers_dominate_and_zigzag_where_compute_does():
    one_node = Topology.uniform(1, 8)
    short = (1, 32, 32, 256, 128)       # 256 tokens per GPU
    long = (1, 32, 32, 65536, 128)      # 64K tokens per GPU: compute-bound everywhere
    assert auto_algorithm(one_node, short, 2, True, "AMD Instinct MI300X", None) == "hamilton_flat"
    assert auto_algorithm(one_node, long, 2, True, "NVIDIA H100 80GB HBM3", None) == "zigzag"
    assert auto_algorithm(Topology.parse("2x8"), short, 2, True, "NVIDIA H100", "h100").startswith("hamilton")
    assert auto_algorithm(Topology.uniform(1, 4), short, 2, True, "", "mi300x") == "zigzag"  # no K_4 decomposition


def test_plan_prints_the_cost_model_prediction(capsys):
    assert main(["plan", "--world-size", "8", "--interconnect", "mi300x", "--seqlen", "16384"]) == 0
    out = capsys.readouterr().out
    assert "cost model on 8x MI300X (causal)" in out and "picks hamilton_flat" in out


def test_unknown_interconnect_is_a_clear_error():
    import pytest

    from tasp_plugin.costmodel import interconnect_for

    with pytest.raises(ValueError, match="unknown interconnect 'tpu'"):
        interconnect_for(1, 8, "tpu")
