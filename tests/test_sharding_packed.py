"""Per-document zigzag sharding of packed sequences (THD): rank ``r`` holds chunks ``r`` and ``2n-1-r`` of
every document, as Megatron-core and Transformer Engine do."""

import pytest
import torch

from tasp_plugin.sharding import (
    check_cu_seqlens,
    cu_seqlens_of,
    local_cu_seqlens,
    packed_shard_indices,
    padded_document_lengths,
    shard_packed,
    shard_sequence,
    unshard_packed,
)

SIZES = [1, 2, 3, 4, 5, 7, 8]


def document_mixes(n: int) -> dict[str, list[int]]:
    """Padded document lengths for ``n`` ranks: one document, many small ones, uneven ones, exactly 2n each."""
    m = 2 * n
    return {
        "one": [5 * m],
        "many_small": [m] * 9,
        "uneven": padded_document_lengths([1, 3 * m + 1, 7, 2 * m, 13, 4 * m - 1], n),
        "exact_2n": [m, m, m],
    }


def expected_positions(cu: list[int], rank: int, n: int) -> list[int]:
    """The rule in plain Python: each document in 2n chunks, rank r takes chunks r then 2n-1-r."""
    out: list[int] = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        c = (end - start) // (2 * n)
        for chunk in (rank, 2 * n - 1 - rank):
            out.extend(range(start + chunk * c, start + (chunk + 1) * c))
    return out


def cases():
    for n in SIZES:
        for name, lengths in document_mixes(n).items():
            yield pytest.param(n, lengths, id=f"n{n}-{name}")


@pytest.mark.parametrize("n,lengths", cases())
@pytest.mark.parametrize("seq_dim", [0, 1, -2])
def test_round_trip(n, lengths, seq_dim):
    cu = cu_seqlens_of(lengths)
    shape = [3, 3, 2]
    shape[seq_dim] = cu[-1]
    x = torch.randn(shape)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    shards = [shard_packed(x, cu_t, r, n, seq_dim) for r in range(n)]
    for s in shards:
        assert s.shape[seq_dim] == cu[-1] // n
    assert torch.equal(unshard_packed(shards, cu, seq_dim), x)


@pytest.mark.parametrize("n,lengths", cases())
def test_partition_follows_the_rule(n, lengths):
    cu = cu_seqlens_of(lengths)
    x = torch.arange(cu[-1])
    seen = []
    for r in range(n):
        got = shard_packed(x, cu, r, n, 0).tolist()
        assert got == expected_positions(cu, r, n)
        assert packed_shard_indices(cu, r, n).tolist() == got
        seen += got
    assert sorted(seen) == list(range(cu[-1]))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seq_dim", [0, 1, 2])
def test_one_document_equals_shard_sequence(n, seq_dim):
    shape = [2, 3, 4]
    shape[seq_dim] = 6 * n
    x = torch.randn(shape)
    for r in range(n):
        assert torch.equal(shard_packed(x, [0, 6 * n], r, n, seq_dim), shard_sequence(x, r, n, seq_dim))


@pytest.mark.parametrize("n,lengths", cases())
def test_local_cu_seqlens(n, lengths):
    cu = cu_seqlens_of(lengths)
    local = local_cu_seqlens(torch.tensor(cu), n)
    assert local == [c // n for c in cu]
    x = torch.arange(cu[-1])
    for r in range(n):
        shard = shard_packed(x, cu, r, n, 0)
        assert local[-1] == shard.numel()
        # each local document holds that document's tokens only: front chunk then back chunk
        for d, (a, b) in enumerate(zip(local[:-1], local[1:], strict=True)):
            rows = shard[a:b]
            assert rows.min() >= cu[d] and rows.max() < cu[d + 1]


def test_padded_lengths_and_cu_seqlens_of():
    assert padded_document_lengths([1, 4, 5, 8, 9], 2) == [4, 4, 8, 8, 12]
    assert padded_document_lengths(torch.tensor([3, 6]), 3) == [6, 6]
    assert padded_document_lengths([7], 1) == [8]
    assert cu_seqlens_of([4, 4, 8]) == [0, 4, 8, 16]
    assert cu_seqlens_of(torch.tensor([2, 6], dtype=torch.int32)) == [0, 2, 8]
    assert check_cu_seqlens(torch.tensor([0, 4, 12], dtype=torch.int64), 2, total=12) == [0, 4, 12]


@pytest.mark.parametrize(
    "cu,cp,total,error,match",
    [
        ([0, 4, 8], 0, None, ValueError, "cp_size must be >= 1"),
        (torch.tensor([0.0, 4.0]), 1, None, TypeError, "int32 or int64"),
        (torch.tensor([0, 4], dtype=torch.int16), 1, None, TypeError, "int32 or int64"),
        (torch.tensor([[0, 4]]), 1, None, ValueError, "1-D"),
        ("04", 1, None, TypeError, "sequence of ints"),
        (7, 1, None, TypeError, "sequence of ints"),
        ([0, 4.0], 1, None, TypeError, r"cu_seqlens\[1\] must be an int"),
        ([0, True], 1, None, TypeError, r"cu_seqlens\[1\] must be an int, got bool"),
        ([], 1, None, ValueError, "at least two entries"),
        ([0], 1, None, ValueError, "at least two entries"),
        ([2, 6], 1, None, ValueError, "must start at 0, got 2"),
        ([0, 4, 4, 8], 1, None, ValueError, "empty documents are not allowed.*document 1 has length 0"),
        ([0, 8, 4], 1, None, ValueError, "document 1 has length -4"),
        ([0, 8, 14], 2, None, ValueError, "document 1 has length 6, not a multiple of 2 \\* cp_size = 4"),
        ([0, 8, 16], 2, 12, ValueError, "ends at 16 but the packed sequence has 12 tokens"),
    ],
)
def test_check_cu_seqlens_errors(cu, cp, total, error, match):
    with pytest.raises(error, match=match):
        check_cu_seqlens(cu, cp, total=total)


def test_length_errors():
    with pytest.raises(ValueError, match="document 1 has length 0"):
        padded_document_lengths([3, 0], 2)
    with pytest.raises(ValueError, match="cp_size must be >= 1"):
        padded_document_lengths([3], 0)
    with pytest.raises(ValueError, match="document 2 has length -1"):
        cu_seqlens_of([1, 2, -1])
    with pytest.raises(TypeError, match="int32 or int64"):
        cu_seqlens_of(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="document 0 has length 3, not a multiple"):
        local_cu_seqlens([0, 3], 1)


def test_shard_and_unshard_errors():
    x = torch.randn(16, 2)
    with pytest.raises(ValueError, match="cp_rank 2 is outside 0..1"):
        shard_packed(x, [0, 8, 16], 2, 2, 0)
    with pytest.raises(ValueError, match="cp_rank -1 is outside"):
        shard_packed(x, [0, 8, 16], -1, 2, 0)
    with pytest.raises(ValueError, match="ends at 8 but the packed sequence has 16 tokens"):
        shard_packed(x, [0, 8], 0, 2, 0)
    with pytest.raises(ValueError, match="document 1 has length 2, not a multiple"):
        shard_packed(x, [0, 4, 6, 16], 0, 2, 0)
    with pytest.raises(ValueError, match="cp_rank 1 is outside"):
        packed_shard_indices([0, 8], 1, 1)
    shards = [shard_packed(x, [0, 8, 16], r, 2, 0) for r in range(2)]
    with pytest.raises(ValueError, match="at least one shard"):
        unshard_packed([], [0, 8, 16], 0)
    with pytest.raises(ValueError, match=r"must have 8 rows along dim 0 .*got lengths \[8, 7\]"):
        unshard_packed([shards[0], shards[1][:7]], [0, 8, 16], 0)
    with pytest.raises(ValueError, match="not a multiple of 2 \\* cp_size = 6"):
        unshard_packed(shards + [shards[0]], [0, 8, 16], 0)


def test_gradients_flow_through_round_trip():
    cu = cu_seqlens_of(padded_document_lengths([3, 9, 4], 2))
    x = torch.randn(cu[-1], 4, requires_grad=True)
    shards = [shard_packed(x, cu, r, 2, 0) for r in range(2)]
    unshard_packed(shards, cu, 0).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones_like(x))
