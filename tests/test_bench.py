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
    for handle in LoopbackGroup(4, 1, deliver=False).exchange([(2, torch.ones(3))], [(0, target)]):
        handle.wait()
    assert target.eq(0).all()
    LoopbackGroup(4, 1).exchange([(2, torch.ones(3))], [(0, target)])
    assert target.eq(1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_per_rank_measurement_on_gpu():
    from tasp_plugin.bench import per_rank_seconds

    result = per_rank_seconds("hamilton", 8, 1024, 4, 2, 64, True, True)
    assert result.seconds > 0 and 0 < result.kernel_seconds <= result.seconds * 1.05
