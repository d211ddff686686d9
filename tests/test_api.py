"""context_parallel_attention input checking, layouts and the zigzag layout helpers."""

import pytest
import torch

from tasp_plugin.api import context_parallel_attention
from tasp_plugin.sharding import shard_sequence, unshard_sequence

from .reference import reference_attention


def test_world_size_one_is_plain_attention_in_every_layout(single_rank_group):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 8, 4, 16, dtype=torch.float64) for _ in range(3))
    ref, _ = reference_attention(q, k, v, True, 0.25)
    for layout, perm in (("bshd", (0, 1, 2, 3)), ("sbhd", (1, 0, 2, 3)), ("bhsd", (0, 2, 1, 3))):
        args = [x.permute(*perm) for x in (q, k, v)]
        out = context_parallel_attention(*args, layout=layout, softmax_scale=0.25)
        assert torch.allclose(out.permute(*perm), ref, atol=1e-12), layout


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"layout": "bsdh"}, ValueError, "unknown layout"),
    ({"algorithm": "tree"}, ValueError, "unknown algorithm"),
    ({"backend": "fast"}, ValueError, "unknown backend"),
    ({}, ValueError, "not initialised"),
])
def test_bad_options(kwargs, exc, match):
    """Each bad option names itself, and no group without torch.distributed says how to fix it."""
    x = torch.randn(1, 4, 2, 8)
    with pytest.raises(exc, match=match):
        context_parallel_attention(x, x, x, **kwargs)


def test_bad_tensors(single_rank_group):
    x = torch.randn(1, 4, 4, 8)
    with pytest.raises(TypeError, match="dtype"):
        context_parallel_attention(x, x.double(), x.double())
    with pytest.raises(ValueError, match="multiple of K/V heads"):
        context_parallel_attention(x, torch.randn(1, 4, 3, 8), torch.randn(1, 4, 3, 8))
    with pytest.raises(ValueError, match="same shape"):
        context_parallel_attention(x, x, torch.randn(1, 4, 2, 8))
    with pytest.raises(ValueError, match="even sequence length"):
        context_parallel_attention(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8))
    with pytest.raises(TypeError, match="4-D"):
        context_parallel_attention(x[0], x, x)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_shard_roundtrip_matches_megatron_zigzag(n):
    x = torch.arange(4 * n).view(1, 4 * n)
    shards = [shard_sequence(x, r, n, 1) for r in range(n)]
    assert shards[0].tolist() == [[0, 1, 4 * n - 2, 4 * n - 1]]
    assert torch.equal(unshard_sequence(shards, 1), x)


def test_shard_errors():
    with pytest.raises(ValueError, match="divisible by 2 \\* cp_size"):
        shard_sequence(torch.zeros(1, 6), 0, 4, 1)
    with pytest.raises(ValueError, match="cp_rank"):
        shard_sequence(torch.zeros(1, 8), 4, 4, 1)


def _mismatched(rank, n):
    import os

    import torch.distributed as dist

    os.environ["TASP_CHECK_SHAPES"] = "1"
    seq = 8 if rank == 0 else 12
    x = torch.randn(1, seq, 2, 8)
    try:
        context_parallel_attention(x, x, x)
    except ValueError as exc:
        result = str(exc)
    else:
        result = "no error"
    dist.barrier()
    return result


@pytest.mark.distributed
def test_shapes_that_differ_across_ranks_raise_on_every_rank():
    from .distributed import run_distributed

    for msg in run_distributed(_mismatched, 3):
        assert "disagree on the attention call" in msg and "q shape: rank 0 (1, 8, 2, 8), rank 1 (1, 12, 2, 8)" in msg
