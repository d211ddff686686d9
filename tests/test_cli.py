"""`tasp plan`: output, plot, config files and one-line errors."""

import json
import subprocess
import sys

import pytest

from tasp_plugin.cli import main
from tasp_plugin.planning import Topology, link_traffic, resolve


def test_plan_flat_with_plot(tmp_path, capsys):
    png = tmp_path / "cycles.png"
    assert main(["plan", "--world-size", "10", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "hamilton_flat (9 cycles)" in out and "validation: OK" in out
    assert out.count("cycle ") >= 9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_multinode_shows_nic_and_rails(capsys):
    assert main(["plan", "--world-size", "16", "--gpus-per-node", "8", "--seqlen", "16384", "--heads", "8",
                 "--head-dim", "64", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "hamilton_multinode" in out and "every inter-node hop stays on its rail" in out
    # 1024 local tokens x 8 heads x 64 x 4 bytes x 2 (K and V) = 4 MiB, split over 8 cycles = 512 KiB
    assert "rank   0: intra-node [->1: 512.0 KiB" in out and "NIC [->8 (rail 0): 512.0 KiB]" in out


def test_plan_odd_node_count_names_the_hops_that_cross_rails(capsys):
    assert main(["plan", "--world-size", "12", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "NIC [->4 (rail 0)" in out and "rank   8:" in out and "NIC [->2 (crosses rails 0 -> 2)" in out


def test_plan_fallback_for_six(capsys):
    assert main(["plan", "--world-size", "6"]) == 0
    assert "zigzag ring instead" in capsys.readouterr().out


def test_config_file_and_override(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"world_size": 8, "gpus_per_node": 4, "seqlen": 1024}))
    assert main(["plan", "--config", str(cfg), "--seqlen", "2048"]) == 0
    assert "seqlen 2048" in capsys.readouterr().out
    cfg.write_text(json.dumps({"world_sise": 8}))
    assert main(["plan", "--config", str(cfg)]) == 2


@pytest.mark.parametrize("args", [["--world-size", "6", "--gpus-per-node", "4"],
                                  ["--world-size", "0"], ["--seqlen", "8"]])
def test_errors_are_one_line_without_traceback(args):
    proc = subprocess.run([sys.executable, "-c", "import sys; from tasp_plugin.cli import main; sys.exit(main())",
                           "plan", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("tasp: error:")


def _hamilton(world_size, gpus_per_node=None):
    m = gpus_per_node or world_size
    return resolve("hamilton", Topology.uniform(world_size // m, m))


def test_hamilton_resolution_rule():
    single = _hamilton(1)
    assert single.schedule.world_size == 1 and "single rank" in single.reason
    assert _hamilton(8).algorithm == "hamilton_flat"
    assert _hamilton(4).algorithm == "zigzag"
    assert _hamilton(16, 8).algorithm == "hamilton_multinode"
    assert _hamilton(12, 3).algorithm == "hamilton_flat"


def test_link_traffic_bytes():
    t = link_traffic(_hamilton(8).schedule, 3, 7000, 8)
    assert sorted(t.intra_peers) == [0, 1, 2, 4, 5, 6, 7] and set(t.intra_peers.values()) == {1000}
    assert t.inter_peers == {} and t.total == 7000


def test_example_runs():
    proc = subprocess.run([sys.executable, "examples/schedules_tour.py"], capture_output=True, text=True,
                          cwd=__import__("pathlib").Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "hamilton_multinode" in proc.stdout and "zigzag" in proc.stdout


def test_missing_config_file_and_zero_gpus_per_node_are_one_line_errors(capsys, tmp_path):
    assert main(["plan", "--config", str(tmp_path / "missing.json")]) == 2
    assert main(["plan", "--world-size", "8", "--gpus-per-node", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("tasp: error:") == 2 and "Traceback" not in err and "gpus per node 0" in err


def test_link_traffic_follows_relabelled_nodes():
    plan = resolve("hamilton", Topology(((0, 2, 4, 6), (1, 3, 5, 7))))
    for r in range(8):
        t = link_traffic(plan.schedule, r, 800, 4)
        assert len(t.inter_peers) == 1 and all(p % 2 == r % 2 for p in t.intra_peers)
