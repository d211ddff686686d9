"""The "context_parallel" config section, initialize's argument checks, TASPAttention and the mpu on one
rank (no DeepSpeed start-up needed)."""

from __future__ import annotations

import types

import pytest
import torch

from tasp_plugin.integrations.deepspeed import (
    ContextParallelConfig,
    TASPAttention,
    build_groups,
    install_context_parallel,
    installed_context_parallel,
    parse_config,
    zero_cp_loss_scale,
)
from tasp_plugin.integrations.deepspeed.groups import ContextParallelMPU
from tests.reference import reference_attention

BASE = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1}}


def test_parse_config_defaults_and_strips_section():
    given = {**BASE, "context_parallel": {"size": 4, "algorithm": "ring", "backend": "cpu"}}
    cfg, rest = parse_config(given, world_size=8)
    assert cfg == ContextParallelConfig(size=4, algorithm="ring", backend="cpu")
    assert rest == BASE and "context_parallel" in given  # input untouched
    assert parse_config(dict(BASE))[0] == ContextParallelConfig()


@pytest.mark.parametrize("section, world, message", [
    ({"size": 4, "algo": "ring"}, 8, r"unknown key\(s\) \['algo'\].*allowed keys"),
    ({"size": 0}, 8, "size\" must be a positive integer"),
    ({"size": "8"}, 8, "size\" must be a positive integer"),
    ({"size": True}, 8, "size\" must be a positive integer"),
    ({"size": 8, "algorithm": "tree"}, 8, "algorithm\" must be one of"),
    ({"size": 8, "backend": "triton"}, 8, "backend\" must be one of"),
    ({"size": 3}, 8, "does not divide the world size 8"),
    ({"size": 4, "ulysses_size": 3}, 8, "ulysses_size\" must be a positive integer that divides"),
    ({"size": 4, "ulysses_size": 0}, 8, "ulysses_size\" must be a positive integer that divides"),
])
def test_parse_config_rejects_bad_sections(section, world, message):
    with pytest.raises(ValueError, match=message):
        parse_config({**BASE, "context_parallel": section}, world_size=world)


def test_parse_config_rejects_non_object_section():
    with pytest.raises(TypeError, match="must be an object"):
        parse_config({**BASE, "context_parallel": [8]})


@pytest.mark.parametrize("extra, message", [
    ({"sequence_parallel_size": 2}, 'remove "sequence_parallel_size"'),
    ({"data_parallel_size": 2}, 'remove "data_parallel_size"'),
    ({"zero_optimization": {"stage": 3, "reduce_scatter": False}}, "reduce_scatter"),
])
def test_parse_config_rejects_conflicting_deepspeed_settings(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_config({**BASE, **extra, "context_parallel": {"size": 2}}, world_size=4)


def test_zero_cp_loss_scale_compensates_only_zero3():
    assert [zero_cp_loss_scale(stage, 4) for stage in (0, 1, 2, 3)] == [1.0, 1.0, 1.0, 4.0]


def test_initialize_rejects_bad_arguments(monkeypatch):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from tasp_plugin.integrations.deepspeed import initialize

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="mpu and mesh_param must be None"):
        initialize(model=model, config=dict(BASE), mpu=object())
    with pytest.raises(ValueError, match="not both"):
        initialize(args=types.SimpleNamespace(deepspeed_config="ds.json"), model=model, config=dict(BASE))
    with pytest.raises(ValueError, match="no DeepSpeed config"):
        initialize(model=model)


def test_tasp_attention_validates_arguments():
    with pytest.raises(ValueError, match="unknown algorithm"):
        TASPAttention(algorithm="tree")
    with pytest.raises(ValueError, match="unknown layout"):
        TASPAttention(layout="bsh")
    with pytest.raises(ValueError, match="unknown backend"):
        install_context_parallel(None, backend="triton")


def test_tasp_attention_on_one_rank_is_full_attention(single_rank_group):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 12, 4, 8), torch.randn(2, 12, 2, 8), torch.randn(2, 12, 2, 8)
    previous = installed_context_parallel()
    try:
        install_context_parallel(single_rank_group, algorithm="hamilton")
        out = TASPAttention(softmax_scale=0.3)(q, k, v)
    finally:
        install_context_parallel(previous.group, previous.algorithm, previous.backend)
    want, _ = reference_attention(q, k, v, causal=True, scale=0.3)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_mpu_on_one_rank(single_rank_group):
    mpu = ContextParallelMPU(build_groups(1))
    assert (mpu.get_sequence_parallel_world_size(), mpu.get_data_parallel_world_size(),
            mpu.get_sequence_data_parallel_world_size(), mpu.get_model_parallel_world_size()) == (1, 1, 1, 1)
    assert mpu.get_data_parallel_group_ranks() == [0]
    assert mpu.reduce_loss(torch.tensor(2.5, requires_grad=True)).item() == 2.5
    with pytest.raises(ValueError, match="positive divisor"):
        build_groups(2)
