"""Benchmark building blocks: FLOP counts, the loopback group's timing mode, and (on a GPU) one per-rank
measurement."""

import pytest
import torch

from tasp_plugin.bench import attention_flops
from tasp_plugin.comm import LoopbackGroup


def test_attention_flops():
    assert attention_flops(1, 1, 2, 3, 4, False, False) == 4 * 2 * 3 * 4
    assert attention_flops(2, 3, 8, 8, 16, True, True) == 4 * 2 * 3 * 64 * 16 * 0.5 * 3.5


def test_loopback_without_delivery_leaves_receive_buffers_alone():
    target = torch.zeros(3)
    for handle in LoopbackGroup(4, 1, deliver=False).start([(2, torch.ones(3))], [(0, target)]):
        handle.wait()
    assert target.eq(0).all()
    LoopbackGroup(4, 1).start([(2, torch.ones(3))], [(0, target)])
    assert target.eq(1).all()


@pytest.mark.gpu
def test_per_rank_measurement_on_gpu():
    from tasp_plugin.bench import per_rank_seconds

    result = per_rank_seconds("hamilton", 8, 1024, 4, 2, 64, True, True)
    assert result.seconds > 0 and 0 < result.kernel_seconds <= result.seconds * 1.05


def _harness(rank, world):
    import os

    from tasp_plugin.bench import prof_perform

    os.environ["TASP_TOPOLOGY"] = "2x2"
    flat = prof_perform(1, 64, 4, 8, True, False, 2, 1, 0, accuracy_test=True, kv_heads=2)
    multi = prof_perform(1, 64, 4, 8, False, True, 1, 0, 0, accuracy_test=True)
    return flat, multi


@pytest.mark.distributed
def test_prof_perform_returns_the_documented_dict_and_exact_outputs():
    from .distributed import run_distributed

    for flat, multi in run_distributed(_harness, 4):
        assert set(flat) == {"hamilton", "ring"} and flat["hamilton"]["name"] == "K4-zigzag-fallback"
        assert multi["hamilton"]["name"] == "(2-K2-2)^2-hamilton" and flat["ring"]["name"] == "ring"
        assert len(flat["hamilton"]["data"]) == 2 and len(multi["ring"]["data"]) == 1
        assert set(flat["ring"]["data"][0]) == {"total_time", "comm_total_time", "comp_total_time"}
        for result in (flat, multi):
            for entry in result.values():
                assert entry["accuracy"]["max_abs_error"] < 1e-5 and entry["accuracy"]["cosine_similarity"] > 0.99999


def test_bench_command_rejects_bad_counts(capsys):
    from tasp_plugin.cli import main

    assert main(["bench", "--iters", "0"]) == 2
    assert "--iters" in capsys.readouterr().err


@pytest.mark.distributed
def test_bench_command_starts_its_own_processes_and_writes_the_result(tmp_path, capsys, monkeypatch):
    import json

    from tasp_plugin.bench.harness import mean_timings
    from tasp_plugin.cli import main

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "bench.json"
    assert main(["bench", "--nproc", "3", "--seqlen", "48", "--heads", "2", "--head-dim", "8", "--iters", "2",
                 "--warmups", "0", "--accuracy", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["hamilton"]["name"] == "K3-hamilton" and len(result["ring"]["data"]) == 2
    assert result["hamilton"]["accuracy"]["max_abs_error"] < 1e-5
    assert mean_timings([{"t": 1.0}, {"t": 3.0}]) == {"t": 2.0}


def test_documented_cpu_bench_command_runs_hamilton():
    """docs/BENCHMARKS.md's CPU ``tasp bench`` line uses a world size where Hamilton runs (not the n = 4, 6
    zigzag fallback) and a sequence length its world size divides."""
    import re
    import shlex
    from pathlib import Path

    from tasp_plugin.cli.main import build_parser
    from tasp_plugin.planning import Topology, resolve

    text = (Path(__file__).parents[1] / "docs" / "BENCHMARKS.md").read_text()
    lines = re.findall(r"^tasp bench [^#\n]*", text, flags=re.M)
    assert lines
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert resolve("hamilton", Topology.uniform(1, args.nproc)).algorithm == "hamilton_flat", line
        assert args.seqlen % (2 * args.nproc) == 0, line
