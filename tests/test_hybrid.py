"""Head x sequence hybrid (Ulysses all-to-all around a ring schedule): the split as pure data, and
``context_parallel_attention(..., ulysses_size=u)`` over emulated CP groups (every rank a thread) against
float64 single-process attention on the full sequence: out, LSE, dq, dk, dv."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tasp_plugin import context_parallel_attention
from tasp_plugin.comm import ThreadGroup
from tasp_plugin.planning import HybridLayout
from tasp_plugin.sharding import cu_seqlens_of, padded_document_lengths, shard_packed, shard_sequence

from .distributed import run_distributed
from .reference import packed_reference, reference_attention


def test_groups_are_consecutive_all_to_all_and_strided_rings():
    layout = HybridLayout.of(8, 4)
    assert (layout.ulysses, layout.ring) == (4, 2)
    assert layout.a2a_members(6) == (4, 5, 6, 7)
    assert layout.ring_members(6) == (2, 6)
    assert layout.gathered_pieces() == ((0, 0), (1, 0), (2, 0), (3, 0), (3, 1), (2, 1), (1, 1), (0, 1))


def test_ring_topologies_and_node_span_follow_the_cp_topology():
    from tasp_plugin.planning import Topology

    layout, whole = HybridLayout.of(8, 2), Topology.parse("2x4")
    assert layout.ring_topologies(whole) == (Topology.parse("2x2"),) * 2  # ranks 0,2 | 4,6 and 1,3 | 5,7
    assert layout.a2a_node_span(whole) == 1 and HybridLayout.of(8, 8).a2a_node_span(whole) == 2


@pytest.mark.parametrize(("n", "u"), [(4, 2), (8, 4), (8, 2), (8, 8), (6, 3), (2, 1)])
def test_gathered_sequence_is_the_ring_groups_zigzag_shard(n, u):
    """The claim the hybrid rests on: zigzag over n, gathered in the all-to-all group, is zigzag over n / u."""
    layout = HybridLayout.of(n, u)
    positions = torch.arange(2 * n * 3)  # three tokens per chunk
    for rank in range(n):
        shards = [shard_sequence(positions, m, n, 0) for m in layout.a2a_members(rank)]
        half = shards[0].numel() // 2
        gathered = torch.cat([shards[j][half * part:half * (part + 1)] for j, part in layout.gathered_pieces()])
        ring_position = layout.ring_members(rank).index(rank)
        assert torch.equal(gathered, shard_sequence(positions, ring_position, layout.ring, 0))


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("u", [2, 4])
def test_packed_gather_order_is_the_ring_groups_shard_per_document(n, u):
    """Per-document zigzag over n, gathered per document, is per-document zigzag over n / u."""
    layout = HybridLayout.of(n, u)
    cu = cu_seqlens_of(padded_document_lengths([5, 17, 2 * n], n))
    positions = torch.arange(cu[-1])
    local = [(b - a) // n for a, b in zip(cu[:-1], cu[1:], strict=True)]
    for rank in range(n):
        received = torch.cat([shard_packed(positions, cu, m, n, 0) for m in layout.a2a_members(rank)])
        gathered = received[torch.tensor(layout.gather_order(local))]
        ring_position = layout.ring_members(rank).index(rank)
        assert torch.equal(gathered, shard_packed(positions, cu, ring_position, layout.ring, 0))


@pytest.mark.parametrize(("n", "u", "heads", "kv", "message"), [
    (6, 4, 8, 8, "does not divide the CP group"),
    (4, 4, 6, 6, "must divide the 6 query heads"),
    (4, 4, 12, 6, "one must divide the other"),
    (4, 0, 8, 8, "positive integer"),
])
def test_bad_splits_raise(n, u, heads, kv, message):
    with pytest.raises(ValueError, match=message):
        HybridLayout.of(n, u).kv_repeats(heads, kv)


def test_kv_heads_are_repeated_only_when_fewer_than_the_all_to_all():
    layout = HybridLayout.of(8, 4)
    assert layout.kv_repeats(8, 8) == 1
    assert layout.kv_repeats(8, 4) == 1
    assert layout.kv_repeats(8, 2) == 2
    assert layout.kv_repeats(8, 1) == 4


def hybrid_errors(n: int, u: int, algorithm: str, causal: bool, heads: int, kv_heads: int,
                  dtype: torch.dtype = torch.float64, topology: str | None = None, seq_per_rank: int = 8) -> dict:
    """Largest error, relative to the reference's magnitude, of out, lse, dq, dk, dv over all ranks."""
    torch.manual_seed(7)
    b, d, seq = 2, 16, seq_per_rank * n
    q, k, v = (torch.randn(b, seq, h, d, dtype=torch.float64, requires_grad=True) for h in (heads, kv_heads, kv_heads))
    dout = torch.randn(b, seq, heads, d, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, d ** -0.5)
    (ref_out * dout).sum().backward()
    groups = ThreadGroup.create(n)

    def run(rank: int) -> dict:
        local = [shard_sequence(x.detach(), rank, n, 1).to(dtype).requires_grad_() for x in (q, k, v)]
        out, lse = context_parallel_attention(*local, group=groups[rank], algorithm=algorithm, causal=causal,
                                              return_lse=True, ulysses_size=u, topology=topology)
        (out * shard_sequence(dout, rank, n, 1).to(dtype)).sum().backward()
        refs = [shard_sequence(ref_out, rank, n, 1), shard_sequence(ref_lse, rank, n, 2),
                *(shard_sequence(x.grad, rank, n, 1) for x in (q, k, v))]
        got = [out, lse, *(x.grad for x in local)]
        return {name: ((a.double() - r).abs().max() / r.abs().max()).item()
                for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), got, refs, strict=True)}

    with ThreadPoolExecutor(n) as pool:
        per_rank = list(pool.map(run, range(n)))
    return {name: max(e[name] for e in per_rank) for name in per_rank[0]}


SPLITS = [(u, r, kv) for u, r in [(2, 2), (4, 2), (2, 4), (8, 1), (3, 2), (2, 3), (2, 5)] for kv in (24, 6, 2)
          if kv % u == 0 or u % kv == 0]  # (all-to-all size, ring size, K/V heads of 24 query heads)


@pytest.mark.parametrize(("u", "r", "kv_heads"), SPLITS)
@pytest.mark.parametrize("algorithm", ["zigzag", "hamilton"])
@pytest.mark.parametrize("causal", [True, False])
def test_hybrid_matches_full_attention_float64(u, r, kv_heads, algorithm, causal):
    heads = 24
    errors = hybrid_errors(u * r, u, algorithm, causal, heads, kv_heads)
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize(("topology", "u"), [("2x4", 4), ("2x4", 2), ("4x2", 2)])
@pytest.mark.parametrize("algorithm", ["hamilton", "hamilton_multinode", "ring"])
def test_hybrid_on_emulated_nodes(topology, u, algorithm):
    """All-to-all inside a node, the ring part across nodes (one GPU per rail, or per node pair)."""
    errors = hybrid_errors(8, u, algorithm, True, 8, 4, topology=topology)
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.parametrize(("u", "r"), [(2, 2), (4, 1), (2, 3)])
@pytest.mark.parametrize("algorithm", ["zigzag", "hamilton"])
@pytest.mark.parametrize("causal", [True, False])
def test_hybrid_on_packed_documents(u, r, algorithm, causal):
    """layout="thd" + cu_seqlens with ulysses_size: each document attends only to itself, out/LSE/grads exact."""
    n, heads, kv, d = u * r, 8, 2, 8
    cu = cu_seqlens_of(padded_document_lengths([7, 2 * n, 13], n))
    torch.manual_seed(3)
    q, k, v = (torch.randn(cu[-1], h, d, dtype=torch.float64, requires_grad=True) for h in (heads, kv, kv))
    dout = torch.randn(cu[-1], heads, d, dtype=torch.float64)
    ref_out, ref_lse = packed_reference(q, k, v, cu, causal, d ** -0.5)
    (ref_out * dout).sum().backward()
    groups = ThreadGroup.create(n)

    def run(rank: int) -> float:
        local = [shard_packed(x.detach(), cu, rank, n, 0).requires_grad_() for x in (q, k, v)]
        out, lse = context_parallel_attention(*local, group=groups[rank], algorithm=algorithm, causal=causal,
                                              layout="thd", cu_seqlens=cu, return_lse=True, ulysses_size=u)
        (out * shard_packed(dout, cu, rank, n, 0)).sum().backward()
        pairs = [(out, shard_packed(ref_out, cu, rank, n, 0)), (lse, shard_packed(ref_lse, cu, rank, n, 1)),
                 *((x.grad, shard_packed(g, cu, rank, n, 0)) for x, g in zip(local, (q.grad, k.grad, v.grad),
                                                                              strict=True))]
        return max(((a - b).abs().max() / b.abs().max()).item() for a, b in pairs)

    with ThreadPoolExecutor(n) as pool:
        assert max(pool.map(run, range(n))) < 1e-10


@pytest.mark.parametrize(("algorithm", "u"), [("hamilton", 4), ("zigzag", 4), ("zigzag", 8)])
def test_all_to_all_across_nodes_warns(algorithm, u):
    """Nodes of 2 GPUs and all-to-all groups of 4 or 8: correct, but the all-to-all leaves NVLink."""
    with pytest.warns(UserWarning, match="span up to"):
        errors = hybrid_errors(8, u, algorithm, True, 8, 8, topology="4x2")
    assert max(errors.values()) < 1e-10


def errors_on_every_rank(n: int, shape: tuple[int, ...], timeout: float = 120.0, **kwargs) -> list[str]:
    """Each emulated rank's ValueError message (or "no error") for one hybrid call with ``kwargs``."""
    groups = ThreadGroup.create(n, timeout=timeout)

    def run(rank: int) -> str:
        x = torch.randn(*shape)
        try:
            context_parallel_attention(x, x, x, group=groups[rank], **kwargs)
        except ValueError as exc:
            return str(exc)
        return "no error"

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_a_ring_group_without_a_schedule_fails_on_every_rank():
    """Uneven nodes: the odd ring group has no multi-node Hamilton schedule. Every rank must raise before
    the all-to-all (it used to strand the other ring group in the exchange: a hang)."""
    from tasp_plugin.planning import Topology

    uneven = Topology(((0, 1, 2), (3, 4, 5, 6, 7)))
    with pytest.warns(UserWarning, match="span up to"):
        messages = errors_on_every_rank(8, (1, 16, 4, 8), timeout=20, algorithm="hamilton_multinode",
                                        ulysses_size=2, topology=uneven)
    assert len(set(messages)) == 1 and messages[0] != "no error", messages


@pytest.mark.parametrize("transport", ["peer_copy", "all_to_all"])
def test_transports_without_sub_groups_are_refused(monkeypatch, transport):
    monkeypatch.setenv("TASP_TRANSPORT", transport)
    messages = errors_on_every_rank(2, (1, 8, 4, 8), ulysses_size=2)
    assert all("does not work with ulysses_size > 1" in m for m in messages), messages


def test_hybrid_bf16_is_close():
    errors = hybrid_errors(4, 2, "hamilton", True, 8, 2, dtype=torch.bfloat16, seq_per_rank=16)
    assert max(errors.values()) < 3e-2, errors


def test_bad_ulysses_size_raises_on_every_rank():
    messages = errors_on_every_rank(4, (1, 8, 6, 8), ulysses_size=4)
    assert all("ulysses_size 4 must divide the 6 query heads" in m for m in messages), messages


def _nccl_rank(rank: int, world: int) -> dict:
    """One rank of a 2-GPU NCCL run: a2a over both GPUs (u = 2, ring 1), float32 and bf16, GQA, causal."""
    torch.manual_seed(11)
    b, seq, heads, kv, d = 1, 256, 8, 2, 64
    q, k, v = (torch.randn(b, seq, h, d, dtype=torch.float64, requires_grad=True) for h in (heads, kv, kv))
    dout = torch.randn(b, seq, heads, d, dtype=torch.float64)
    ref, _ = reference_attention(q, k, v, True, d ** -0.5)
    (ref * dout).sum().backward()
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        local = [shard_sequence(x.detach(), rank, world, 1).to("cuda", dtype).requires_grad_() for x in (q, k, v)]
        out = context_parallel_attention(*local, ulysses_size=world, causal=True)
        (out * shard_sequence(dout, rank, world, 1).to("cuda", dtype)).sum().backward()
        refs = [shard_sequence(x, rank, world, 1) for x in (ref, q.grad, k.grad, v.grad)]
        got = [out, *(x.grad for x in local)]
        errors[str(dtype)] = max(((a.double().cpu() - r).abs().max() / r.abs().max()).item()
                                 for a, r in zip(got, refs, strict=True))
    return errors


@pytest.mark.gpu(2)
@pytest.mark.distributed
def test_hybrid_on_two_gpus_with_nccl():
    for errors in run_distributed(_nccl_rank, 2, backend="nccl"):
        assert errors["torch.float32"] < 1e-3 and errors["torch.bfloat16"] < 3e-2, errors
