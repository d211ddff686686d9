"""The engine with every rank as a thread on one device (``ThreadGroup``) against single-process attention:
on CPU a few cases (proof that the emulation itself is exact), on CUDA the distributed matrix."""

import itertools

import pytest
import torch

from tasp_plugin.comm import LoopbackGroup, ThreadGroup
from tasp_plugin.engine import EngineConfig, StepTimer, run_forward
from tasp_plugin.kernels import MathKernel
from tasp_plugin.schedules import RingSchedule

from .emulated import emulated_errors

TOL = {torch.float64: 1e-10, torch.float32: 2e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("n, algorithm, causal", [(5, "hamilton", True), (4, "zigzag", False), (8, "hamilton", False)])
def test_thread_emulation_matches_reference_on_cpu(n, algorithm, causal):
    errors = emulated_errors(n, algorithm, causal, 2, torch.float64, 4 * n + 2 * n)
    assert max(errors.values()) < TOL[torch.float64], errors


GPU_MATRIX = list(itertools.product([2, 3, 4, 5, 7, 8], ["ring", "hamilton"], [True, False], [4, 1],
                                    [torch.float32, torch.bfloat16]))


@pytest.mark.gpu
@pytest.mark.parametrize("n, algorithm, causal, kv_heads, dtype", GPU_MATRIX)
def test_engine_matrix_emulated_on_one_gpu(n, algorithm, causal, kv_heads, dtype):
    errors = emulated_errors(n, algorithm, causal, kv_heads, dtype, 48 * n, device="cuda", heads=4, head_dim=64)
    assert max(errors.values()) < TOL[dtype], errors


def test_a_thread_that_never_gets_its_message_times_out_instead_of_hanging():
    group = ThreadGroup.create(2, timeout=0.2)[0]
    target = torch.empty(3)
    (handle,) = group.start([], [(1, target)])
    with pytest.raises(TimeoutError, match="rank 0 waited"):
        handle.wait()


def test_loopback_runs_one_ranks_full_step_sequence():
    """One rank alone: every step's blocks run (timing marks for all n steps) on same-sized data."""
    n = 8
    timer = StepTimer()
    cfg = EngineConfig.create(schedule=RingSchedule.hamilton(n), comm=LoopbackGroup(n, 3), kernel=MathKernel(),
                              head_dim=8, softmax_scale=0.25, hook=timer)
    q, k, v = (torch.randn(1, 2, 4 * (n - 1), 8) for _ in range(3))
    out, lse = run_forward(cfg, q, k, v)
    assert out.shape == q.shape and torch.isfinite(lse).all()
    assert {step for _, _, step in timer.marks} == set(range(n))
    with pytest.raises(ValueError, match="outside"):
        LoopbackGroup(4, 4)


def test_receives_match_sends_in_posting_order_even_when_waited_out_of_order():
    """The backward posts the K/V prefetch before the accumulator hop but waits for the hop first."""
    a, b = ThreadGroup.create(2)
    first, second = torch.empty(1), torch.empty(1)
    a.start([(1, torch.tensor([1.0]))], [])
    a.start([(1, torch.tensor([2.0]))], [])
    (h1,) = b.start([], [(0, first)])
    (h2,) = b.start([], [(0, second)])
    h2.wait()
    h1.wait()
    assert (first.item(), second.item()) == (1.0, 2.0)


def test_engine_config_rejects_an_unknown_sharding():
    with pytest.raises(ValueError, match="unknown sharding 'zig-zag'"):
        EngineConfig.create(schedule=RingSchedule.ring(2), comm=LoopbackGroup(2, 0), kernel=MathKernel(), head_dim=8,
                            sharding="zig-zag")
