"""How K/V travel (``$TASP_TRANSPORT``): copy-engine pulls from symmetric memory (``peer_copy``, two GPUs)
give the same results as NCCL point-to-point, across repeated calls, interleaved layers and a buffer that
has to grow; on CPU groups ``auto`` stays point-to-point and ``peer_copy`` is refused on every rank."""

import pytest
import torch
import torch.distributed as dist

from tasp_plugin import checks
from tasp_plugin.api import context_parallel_attention
from tasp_plugin.comm import LoopbackGroup
from tasp_plugin.engine import EngineConfig
from tasp_plugin.kernels import MathKernel
from tasp_plugin.schedules import RingSchedule

from .distributed import run_distributed
from .test_engine_distributed import _check, _matrix


@pytest.mark.parametrize("value", ["bogus", "nccl"])
def test_unknown_transport_is_refused(monkeypatch, value):
    monkeypatch.setenv(checks.TRANSPORT_ENV, value)
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="TASP_TRANSPORT"):
        context_parallel_attention(q, q, q, group=LoopbackGroup(1, 0))


def test_engine_config_checks_the_transport():
    sched = RingSchedule.ring(1)
    with pytest.raises(ValueError, match="unknown transport"):
        EngineConfig.create(schedule=sched, comm=LoopbackGroup(1, 0), kernel=MathKernel(), head_dim=4, transport="x")
    with pytest.raises(ValueError, match="needs the group's PeerMemory"):
        EngineConfig.create(schedule=RingSchedule.ring(2), comm=LoopbackGroup(2, 0), kernel=MathKernel(),
                            head_dim=4, transport="peer_copy")


def test_peer_copy_at_cp_size_one_is_plain_attention(monkeypatch):
    """Nothing travels in a group of one: TASP_TRANSPORT=peer_copy must not break it (dense and packed)."""
    monkeypatch.setenv(checks.TRANSPORT_ENV, "peer_copy")
    q = torch.randn(1, 8, 2, 4)
    assert context_parallel_attention(q, q, q, group=LoopbackGroup(1, 0)).shape == q.shape
    assert context_parallel_attention(q[0], q[0], q[0], group=LoopbackGroup(1, 0), layout="thd",
                                      cu_seqlens=[0, 2, 8]).shape == q[0].shape


def _on_cpu(rank, n, transport):
    import os

    os.environ[checks.TRANSPORT_ENV] = transport
    q = torch.randn(1, 4 * n, 2, 4)
    try:
        out = context_parallel_attention(q, q, q, algorithm="zigzag")
    except ValueError as exc:
        return str(exc)
    return out.shape


@pytest.mark.distributed
def test_peer_copy_is_refused_on_every_cpu_rank_and_auto_still_runs():
    refused = run_distributed(_on_cpu, 2, "peer_copy")
    assert all("peer_copy needs an NCCL group" in str(r) for r in refused), refused
    assert run_distributed(_on_cpu, 2, "auto") == [torch.Size([1, 8, 2, 4])] * 2


def _matrix_with(rank, n, transport):
    import os

    os.environ[checks.TRANSPORT_ENV] = transport
    return _matrix(rank, n, "cuda", (torch.float32, torch.bfloat16))


@pytest.mark.gpu(2)
@pytest.mark.distributed
@pytest.mark.parametrize("transport", ["peer_copy", "p2p"])
def test_transports_match_full_attention_on_gpus(transport):
    _check(2, run_distributed(_matrix_with, 2, transport, backend="nccl"))


def _layers(rank, n, transport):
    """Two layers forward, then backward (the buffers are reused across calls), at two shapes (the
    symmetric buffers grow), then the small shape again; returns every output and gradient."""
    import os

    os.environ[checks.TRANSPORT_ENV] = transport
    results = []
    for seq in (64, 512, 64):
        torch.manual_seed(seq)
        x = torch.randn(2, seq // n, 8, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = [torch.randn(32, 32, device="cuda", dtype=torch.bfloat16) / 6 for _ in range(2)]
        h = x
        for layer in range(2):
            qkv = h @ w[layer]
            h = context_parallel_attention(qkv, qkv, qkv, algorithm="hamilton") + h
        h.float().square().sum().backward()
        results += [h.detach().cpu(), x.grad.cpu()]
    dist.barrier()
    return results


@pytest.mark.gpu(2)
@pytest.mark.distributed
def test_peer_copy_equals_p2p_bit_for_bit_across_calls():
    peer = run_distributed(_layers, 2, "peer_copy", backend="nccl")
    p2p = run_distributed(_layers, 2, "p2p", backend="nccl")
    for a, b in zip(peer, p2p, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


class _TwoNodePair(LoopbackGroup):
    """Two ranks on two nodes that would offer symmetric memory (there is none across nodes)."""

    def peer_memory(self, device):
        return object()

    def topology(self, override=None):
        from tasp_plugin.planning import Topology

        return Topology.uniform(2, 1)


@pytest.mark.parametrize("algorithm", ["zigzag", "ring", "hamilton_flat"])
def test_peer_copy_is_refused_across_nodes_for_every_algorithm(monkeypatch, algorithm):
    monkeypatch.setenv(checks.TRANSPORT_ENV, "peer_copy")
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="peer_copy needs"):
        context_parallel_attention(q, q, q, group=_TwoNodePair(2, 0), algorithm=algorithm)
