"""Cost model: properties of the predictions that a wrong model would break."""

import math
import subprocess
import sys
from dataclasses import replace
from itertools import pairwise

import pytest

from tasp_plugin.costmodel import (
    H100_NVSWITCH,
    MI300X_MESH,
    ComputeRates,
    FullMesh,
    MultiNode,
    Problem,
    Switch,
    choose_algorithm,
    h100_nodes,
    predict,
)
from tasp_plugin.planning import link_traffic, step_sends
from tasp_plugin.schedules import RingSchedule

MHA = Problem(seq_len=8192, heads=32, kv_heads=32, head_dim=128)
PRESETS = [(MI300X_MESH, "hamilton_flat"), (H100_NVSWITCH, "hamilton_flat"), (h100_nodes(2), "hamilton_multinode")]


def fwd_speedup(interconnect, problem, hamilton, baseline=("zigzag", "zigzag"), rates=None):
    """Forward time of ``baseline`` = (algorithm, sharding) over Hamilton's."""
    algorithm, sharding = baseline
    base = predict(interconnect, problem, algorithm, rates, sharding=sharding)
    return base.fwd_s / predict(interconnect, problem, hamilton, rates).fwd_s


def test_costmodel_does_not_import_torch():
    code = "import sys, tasp_plugin.costmodel; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("interconnect,hamilton", PRESETS, ids=lambda x: getattr(x, "name", x))
def test_speedup_falls_to_one_as_sequence_grows(interconnect, hamilton):
    seqs = [2**k for k in range(16, 22)]  # 64K .. 2M tokens: from transfer-bound into compute-bound
    speedups = [fwd_speedup(interconnect, replace(MHA, seq_len=s), hamilton) for s in seqs]
    gaps = [abs(s - 1) for s in speedups]
    assert all(a >= b for a, b in pairwise(gaps)), speedups
    assert speedups[-1] == pytest.approx(1.0, abs=0.001)
    assert not predict(interconnect, replace(MHA, seq_len=seqs[-1]), hamilton).comm_bound


def test_hamilton_beats_ring_on_full_mesh_at_short_sequence_but_not_beyond_n_minus_1():
    paper = ComputeRates(contention_gbps=math.inf)  # the contention rate was measured on H200s, not MI300X
    for seq in (4096, 8192, 16384):
        problem = replace(MHA, seq_len=seq)
        assert fwd_speedup(MI300X_MESH, problem, "hamilton_flat", ("ring", "contiguous"), paper) > 4
        assert fwd_speedup(MI300X_MESH, problem, "hamilton_flat") <= MI300X_MESH.gpus - 1
    ideal = FullMesh(gpus=8, link_gbps=64.0, latency_us=1e-9)
    free_compute = ComputeRates(fwd_tflops=1e9, call_overhead_us=0, contention_gbps=math.inf)
    assert fwd_speedup(ideal, MHA, "hamilton_flat", rates=free_compute) == pytest.approx(7.0, rel=1e-3)


def test_switch_advantage_comes_only_from_per_message_efficiency():
    fair = Switch(gpus=8, injection_gbps=450.0, peer_efficiency=0.8, aggregate_efficiency=0.8, latency_us=10.0)
    for seq in (4096, 65536):
        assert fwd_speedup(fair, replace(MHA, seq_len=seq), "hamilton_flat") <= 1.0
    short = replace(MHA, seq_len=4096)
    gain = fwd_speedup(H100_NVSWITCH, short, "hamilton_flat")
    assert 1.2 < gain <= H100_NVSWITCH.aggregate_efficiency / H100_NVSWITCH.peer_efficiency


@pytest.mark.parametrize("schedule,gpus_per_node", [
    (RingSchedule.ring(8), 8), (RingSchedule.hamilton(8), 8), (RingSchedule.hamilton(10), 10),
    (RingSchedule.hamilton(16), 8), (RingSchedule.multinode(2, 8), 8), (RingSchedule.multinode(3, 4), 4)])
def test_step_traffic_per_peer_and_per_link(schedule, gpus_per_node):
    """Ring: all K/V to one peer; flat Hamilton: 1/(n-1) to every other rank; multi-node: 1/m to each of m
    peers, exactly one of them across the NIC. ``plan.link_traffic`` splits the same bytes by node."""
    n = schedule.world_size
    kv_bytes = replace(MHA, seq_len=4096 * n).kv_elements(n) * MHA.dtype_bytes
    peers = {"ring": 1, "hamilton_flat": n - 1, "hamilton_multinode": gpus_per_node}[schedule.kind]
    for rank in range(n):
        sends = step_sends(schedule, rank, kv_bytes)
        assert len(sends) == peers and all(b == pytest.approx(kv_bytes / peers) for b in sends.values())
        planned = link_traffic(schedule, rank, kv_bytes, gpus_per_node)
        assert sorted({**planned.intra_peers, **planned.inter_peers}) == sorted(sends)
        assert len(planned.inter_peers) == sum(d // gpus_per_node != rank // gpus_per_node for d in sends)
        if schedule.kind == "hamilton_multinode":
            assert len(planned.inter_peers) == 1


def test_multinode_hamilton_puts_one_chunk_per_step_on_each_nic():
    net = h100_nodes(2)
    sched = RingSchedule.multinode(2, 8)
    nic = [sum(b for d, b in step_sends(sched, r, 8.0).items() if d // 8 != r // 8) for r in range(16)]
    assert nic == [1.0] * 16
    short = replace(MHA, seq_len=16384)
    assert fwd_speedup(net, short, "hamilton_multinode") > fwd_speedup(net, short, "hamilton_flat") > 1


@pytest.mark.parametrize("field,interconnect", [("link_gbps", MI300X_MESH), ("injection_gbps", H100_NVSWITCH),
                                            ("nic_gbps", h100_nodes(2))])
def test_more_bandwidth_never_slows_and_speeds_up_transfer_bound_steps(field, interconnect):
    for algorithm in ("ring", "zigzag", "hamilton_flat"):
        times = [predict(replace(interconnect, **{field: getattr(interconnect, field) * f}), MHA, algorithm).fwd_bwd_s
                 for f in (0.5, 1.0, 2.0, 4.0)]
        assert all(a >= b for a, b in pairwise(times)), (algorithm, times)
        assert times[0] > times[-1]


def test_causal_layout_rule():
    long = replace(MHA, seq_len=2**20)  # compute-bound
    ring = predict(MI300X_MESH, long, "ring", sharding="contiguous")
    zigzag, ham = (predict(MI300X_MESH, long, a) for a in ("zigzag", "hamilton_flat"))
    assert ring.fwd_s / zigzag.fwd_s == pytest.approx(2.0, rel=0.1)  # contiguous shards: some rank does a full block
    assert len({round(s.compute_s, 9) for s in zigzag.fwd_steps[1:]}) == 1  # zigzag: the same work every step
    # step 0's diagonal is one causal call over the local rows: the same work and calls as every other step
    assert zigzag.fwd_steps[0].compute_s == pytest.approx(zigzag.fwd_steps[1].compute_s)
    assert ham.fwd_steps[1].compute_s > zigzag.fwd_steps[1].compute_s  # two kernel calls per step, not one
    dense = replace(long, causal=False)
    assert (predict(MI300X_MESH, dense, "ring", sharding="contiguous").fwd_s
            == predict(MI300X_MESH, dense, "zigzag").fwd_s)
    compute = [sum(s.compute_s for s in p.fwd_steps) for p in (predict(MI300X_MESH, dense, "zigzag"), zigzag)]
    assert compute[0] == pytest.approx(2 * compute[1], rel=0.01)  # twice the work (contention is per byte)


def test_timeline_shape_and_backward_traffic():
    p = predict(MI300X_MESH, MHA, "hamilton_flat")
    assert len(p.fwd_steps) == len(p.bwd_steps) == 8 and p.num_cycles == 7
    assert p.fwd_steps[-1].comm_s == 0 and p.bwd_tail_s > 0
    assert p.bwd_steps[1].comm_s > p.bwd_steps[0].comm_s  # K/V plus the dK/dV accumulators
    assert p.fwd_bwd_s > p.fwd_s
    half = predict(MI300X_MESH, replace(MHA, grad_bytes=2), "hamilton_flat")
    assert half.bwd_s < p.bwd_s and half.fwd_s == p.fwd_s
    single = predict(MI300X_MESH, MHA, "zigzag", world_size=1)
    assert single.bwd_tail_s == 0 and all(s.comm_s == 0 for s in single.fwd_steps + single.bwd_steps)


def test_choose_algorithm():
    short = choose_algorithm(MI300X_MESH, replace(MHA, seq_len=10240))
    assert (short.algorithm, short.schedule) == ("hamilton", "hamilton_flat")
    assert "transfer-bound" in short.reason and "zigzag" in short.reason
    long = choose_algorithm(H100_NVSWITCH, replace(MHA, seq_len=2**20))  # Hamilton within the margin: keep zigzag
    assert long.algorithm == "zigzag" and "compute-bound" in long.reason and "margin" in long.reason
    assert long.predictions["hamilton_flat"].fwd_bwd_s < long.predictions["zigzag"].fwd_bwd_s
    assert choose_algorithm(H100_NVSWITCH, replace(MHA, seq_len=2**20), margin=0).algorithm == "hamilton"
    nodes = choose_algorithm(h100_nodes(2), MHA)
    assert (nodes.algorithm, nodes.schedule) == ("hamilton", "hamilton_multinode")
    six = choose_algorithm(MI300X_MESH, replace(MHA, seq_len=6 * 1024), world_size=6)
    assert six.algorithm == "zigzag" and "hamilton_flat unavailable" in six.reason
    assert set(six.predictions) == {"zigzag"}
    fwd_only = choose_algorithm(MI300X_MESH, MHA, backward=False)
    assert "forward on" in fwd_only.reason


@pytest.mark.parametrize("make,match", [
    (lambda: Problem(0, 32, 32, 128), "seq_len"),
    (lambda: Problem(8192, 32, 5, 128), "kv_heads"),
    (lambda: Problem(8192, 32, 32, 128, dtype_bytes=1.5), "dtype_bytes"),
    (lambda: predict(MI300X_MESH, replace(MHA, seq_len=1000), "zigzag"), "seq_len"),
    (lambda: predict(MI300X_MESH, MHA, "ulysses"), "algorithm"),
    (lambda: predict(MI300X_MESH, MHA, "zigzag", world_size=16), "world_size"),
    (lambda: predict(h100_nodes(2), MHA, "zigzag", world_size=8), "world_size"),
    (lambda: predict(H100_NVSWITCH, MHA, "hamilton_multinode"), "MultiNode"),
    (lambda: predict(MI300X_MESH, replace(MHA, seq_len=6144), "hamilton_flat", world_size=6), "decomposition"),
    (lambda: FullMesh(gpus=8, link_gbps=0), "link_gbps"),
    (lambda: Switch(gpus=8, injection_gbps=450, peer_efficiency=1.5), "peer_efficiency"),
    (lambda: MultiNode(nodes=1, intra=H100_NVSWITCH, nic_gbps=50), "nodes"),
    (lambda: ComputeRates(fwd_tflops=-1), "fwd_tflops"),
    (lambda: ComputeRates(call_overhead_us=-1), "call_overhead_us"),
    (lambda: choose_algorithm(MI300X_MESH, MHA, margin=1.5), "margin"),
])
def test_validation_errors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="causal"):
        Problem(8192, 32, 32, 128, causal=1)
    with pytest.raises(TypeError, match="intra"):
        MultiNode(nodes=2, intra=h100_nodes(2), nic_gbps=50)
