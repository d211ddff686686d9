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


def test_world_size_is_bounded_with_the_reason(capsys):
    assert main(["plan", "--world-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "between 1 and 1024" in err and "n^2" in err


def test_plot_is_refused_above_its_limit_in_one_line(tmp_path, capsys):
    png = tmp_path / "big.png"
    assert main(["plan", "--world-size", "64", "--plot", str(png)]) == 2
    err = capsys.readouterr()
    assert err.err.count("\n") == 1 and "legible up to 32 ranks; got 64" in err.err
    assert err.out == "" and not png.exists()  # refused before printing or drawing anything


@pytest.mark.parametrize("n", range(2, 33))
def test_plot_geometry_keeps_every_arrow_visible(n):
    from tasp_plugin.cli.plot import panel_geometry, panel_inches

    axis_points = panel_inches(n) * 72 * 0.85  # the panel's axis in points (most of the panel)
    geo = panel_geometry(n, axis_points)
    arrow = geo["chord"] - 2 * geo["shrink"]  # the visible part of an arrow between neighbouring ranks
    assert geo["marker"] < geo["chord"] and arrow > geo["head"] > 0 and geo["font"] >= 4


@pytest.mark.slow
def test_plot_of_the_largest_allowed_group(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    png = tmp_path / "p32.png"
    assert main(["plan", "--world-size", "32", "--plot", str(png)]) == 0
    width, height = Image.open(png).size
    assert width <= 2500 and height <= 4500


def test_config_plot_path_is_relative_to_the_config_file(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = tmp_path / "cfg" / "plan.json"
    cfg.write_text(json.dumps({"world_size": 5, "plot": "cycles.png"}))
    assert main(["plan", "--config", str(cfg)]) == 0
    assert (tmp_path / "cfg" / "cycles.png").is_file() and not (tmp_path / "cwd" / "cycles.png").exists()
    assert main(["plan", "--config", str(cfg), "--plot", "here.png"]) == 0  # a command-line path: the cwd
    assert (tmp_path / "cwd" / "here.png").is_file()


def test_shipped_plan_configs_hold_no_paths():
    from tasp_plugin.cli.main import CONFIG_PATHS

    root = __import__("pathlib").Path(__file__).parents[1] / "configs" / "plan"
    for path in root.glob("*.json"):
        assert not set(json.loads(path.read_text())) & set(CONFIG_PATHS), path
        assert main(["plan", "--config", str(path)]) == 0


def _bench_launch(monkeypatch, cuda_gpus: int):
    """What ``tasp bench`` would start without a launcher: (nproc, args), with no process started."""
    import torch

    from tasp_plugin.cli import bench

    started = []
    monkeypatch.setattr(bench, "run_local", lambda fn, n, args: started.append((n, args)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_gpus)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return started


def test_bench_defaults_run_hamilton_on_cpu_and_one_process_per_gpu(monkeypatch):
    from tasp_plugin.planning import Topology

    started = _bench_launch(monkeypatch, 0)
    assert main(["bench"]) == 0
    n, args = started[-1]
    assert n == 5 and args.seqlen == 8200 and args.seqlen % (2 * n) == 0  # K_5: flat Hamilton, not the fallback
    assert resolve("hamilton", Topology.uniform(1, n)).algorithm == "hamilton_flat"
    started = _bench_launch(monkeypatch, 8)
    assert main(["bench"]) == 0 and started[-1][0] == 8 and started[-1][1].seqlen == 8192


def test_bench_checks_settings_before_starting_processes(monkeypatch, capsys):
    started = _bench_launch(monkeypatch, 2)
    assert main(["bench", "--nproc", "3"]) == 2  # 3 processes, 2 GPUs: never a mixed NCCL/gloo job
    assert main(["bench", "--nproc", "3", "--device", "cpu", "--seqlen", "100"]) == 2
    assert main(["bench", "--heads", "4", "--kv-heads", "3"]) == 2
    err = capsys.readouterr().err
    assert "one GPU each, but 2 are visible" in err and "--seqlen 100 is not a multiple of 2 x world size = 6" in err
    assert "use 96 or 102" in err and "--kv-heads 3 must divide --heads 4" in err and started == []
