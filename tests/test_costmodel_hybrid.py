"""The cost model of head x sequence layouts (``costmodel.hybrid``) and ``tasp plan``'s layout table: the
pieces add up, impossible splits are skipped, and on 2 H200s the predictions meet the measured
``benchmarks/peers.py`` cells (docs/bench/peers_a2a_h200x2.json) and pick what measured fastest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasp_plugin.cli.main import main as tasp
from tasp_plugin.costmodel import Problem, choose_layout, interconnect_for, predict, predict_layout

MEASURED = Path(__file__).resolve().parent.parent / "docs" / "bench" / "peers_a2a_h200x2.json"


def test_no_all_to_all_is_the_ring_prediction():
    net, problem = interconnect_for(1, 8, "h200"), Problem(65536, 32, 8, 128)
    layout = predict_layout(net, problem, 1, "hamilton_flat")
    assert layout.a2a_fwd_s == layout.a2a_bwd_s == 0
    assert layout.fwd_bwd_s == predict(net, problem, "hamilton_flat").fwd_bwd_s
    assert layout.name == "hamilton_flat x 8"


def test_all_to_all_only_is_one_local_call_plus_the_exchanges():
    net, problem = interconnect_for(1, 8, "h200"), Problem(65536, 32, 8, 128)
    layout = predict_layout(net, problem, 8, "zigzag")
    assert (layout.ulysses, layout.ring, layout.name) == (8, 1, "a2a 8")
    assert layout.ring_prediction.world_size == 1 and layout.a2a_fwd_s > 0
    assert layout.fwd_s == pytest.approx(layout.a2a_fwd_s + layout.ring_prediction.fwd_s)


def test_fewer_kv_heads_than_the_all_to_all_are_repeated():
    net = interconnect_for(1, 8, "h200")
    few = predict_layout(net, Problem(65536, 32, 2, 128), 8, "zigzag")
    eight = predict_layout(net, Problem(65536, 32, 8, 128), 8, "zigzag")
    assert few.a2a_fwd_s == pytest.approx(eight.a2a_fwd_s)  # 2 K/V heads travel as 8


@pytest.mark.parametrize(("ulysses", "heads", "kv"), [(3, 24, 24), (16, 32, 32), (4, 30, 30), (8, 32, 12)])
def test_impossible_splits_raise(ulysses, heads, kv):
    with pytest.raises(ValueError):
        predict_layout(interconnect_for(2, 8, "h100"), Problem(65536, heads, kv, 128), ulysses, "zigzag")


def test_all_to_all_stays_inside_nodes_and_rings_cross_them():
    """On 2 x 8 GPUs every layout's all-to-all size divides 8, and the ring group keeps one NIC per GPU."""
    choice = choose_layout(interconnect_for(2, 8, "h100"), Problem(262144, 32, 8, 128))
    assert {p.ulysses for p in choice.predictions.values()} == {1, 2, 4, 8}
    assert all(p.ulysses * p.ring == 16 for p in choice.predictions.values())
    assert choice.best.name in choice.reason and "2x8 H100" in choice.reason


def _measured() -> dict[tuple[str, int, int, str], float]:
    rows = json.loads(MEASURED.read_text())["rows"]
    return {(r["method"].split()[1], r["tokens_per_gpu"], r["kv_heads"], r["phase"]): r["seconds"]
            for r in rows if r["method"].startswith("tasp")}


def test_predictions_meet_the_two_h200_measurements():
    net = interconnect_for(1, 2, "h200")
    for (method, local, kv, phase), seconds in _measured().items():
        schedule = {"hamilton": "hamilton_flat"}.get(method, method)
        ulysses, algorithm = (2, "zigzag") if method == "a2a" else (1, schedule)
        layout = predict_layout(net, Problem(2 * local, 32, kv, 128), ulysses, algorithm)
        predicted = layout.fwd_s if phase == "fwd" else layout.fwd_bwd_s
        assert 0.8 < predicted / seconds < 1.2, (method, local, kv, phase, predicted, seconds)


def test_choice_on_two_h200s_is_what_measured_fastest():
    """Measured: the ring schedules beat the all-to-all in every cell at 8K tokens per GPU."""
    measured = _measured()
    for local, kv in {(c[1], c[2]) for c in measured}:
        fastest = min(("a2a", "zigzag", "hamilton"), key=lambda m: measured[(m, local, kv, "fwd+bwd")])
        choice = choose_layout(interconnect_for(1, 2, "h200"), Problem(2 * local, 32, kv, 128))
        assert fastest != "a2a" and choice.best.ulysses == 1, (local, kv, choice.reason)


def test_tasp_plan_shows_layouts_and_the_choice(capsys):
    assert tasp(["plan", "--world-size", "16", "--gpus-per-node", "8", "--interconnect", "h100",
                 "--seqlen", "262144", "--kv-heads", "8"]) == 0
    out = capsys.readouterr().out
    assert "head x sequence layouts" in out and "a2a 8 + zigzag x 2" in out and "zigzag x 16" in out
    assert "best layout: " in out
