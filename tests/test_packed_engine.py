"""Packed documents through the engine: out, LSE, dq, dk, dv of every rank against float64 attention with
a block-diagonal (causal or not) mask over the whole packed sequence; every algorithm, n = 1..8, padding,
one document (= the unpacked result), many small documents, uneven sizes, MHA and GQA, float64 and bf16;
and the kernel calls per step do not grow with the number of documents."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tasp_plugin.comm import ThreadGroup
from tasp_plugin.engine import EngineConfig, run_backward, run_forward
from tasp_plugin.kernels import MathKernel, get_kernel
from tasp_plugin.planning import PackedLayout, Topology, resolve, sub_chunk_lengths, varlen_blocks
from tasp_plugin.sharding import cu_seqlens_of, grouped_local_order, padded_document_lengths, shard_packed

from .reference import packed_reference

TOL = {torch.float64: 1e-10, torch.bfloat16: 3e-2}


def packed_errors(n, algorithm, causal, doc_lengths, kv_heads=2, dtype=torch.float64, heads=4, head_dim=8,
                  kernel=None, device="cpu"):
    """Largest error (relative to the reference's magnitude) over all ranks, per quantity."""
    torch.manual_seed(7)
    cu = cu_seqlens_of(padded_document_lengths(doc_lengths, n))
    total, scale = cu[-1], head_dim ** -0.5
    q, k, v = (torch.randn(total, h, head_dim, dtype=torch.float64, requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    dout = torch.randn(total, heads, head_dim, dtype=torch.float64)
    ref_out, ref_lse = packed_reference(q, k, v, cu, causal, scale)
    (ref_out * dout).sum().backward()
    groups = ThreadGroup.create(n)
    schedule = resolve(algorithm, Topology.uniform(1, n)).schedule
    layout = PackedLayout.from_cu_seqlens(cu, n)
    kern = kernel or get_kernel("auto", torch.device(device), dtype, head_dim)
    order = grouped_local_order(cu, n)

    def local(x, rank, dim=0):
        return shard_packed(x.detach(), cu, rank, n, dim).index_select(dim, order)

    def bhsd(x, rank):
        return local(x, rank).transpose(0, 1).unsqueeze(0).to(device, dtype).contiguous()

    def rank_errors(rank):
        cfg = EngineConfig.create(schedule=schedule, comm=groups[rank], kernel=kern, head_dim=head_dim,
                                  causal=causal, packed=layout)
        lq, lk, lv = (bhsd(x, rank) for x in (q, k, v))
        out, lse = run_forward(cfg, lq, lk, lv)
        grads = run_backward(cfg, bhsd(dout, rank), lq, lk, lv, out.to(dtype), lse)
        refs = [bhsd(ref_out, rank), local(ref_lse, rank, 1).unsqueeze(0)] + [bhsd(x.grad, rank) for x in (q, k, v)]
        return {name: ((a.double().cpu() - r.double().cpu()).abs().max() / r.double().abs().max()).item()
                for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), refs, strict=True)}

    with ThreadPoolExecutor(n) as pool:
        per_rank = list(pool.map(rank_errors, range(n)))
    return {name: max(e[name] for e in per_rank) for name in per_rank[0]}


DOCS = {
    "one": [40],
    "uneven": [9, 30, 3, 17],
    "short": [1, 2, 3],  # shorter than 2 x CP: padded
    "many": [5] * 12,
}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("algorithm", ["ring", "zigzag", "hamilton"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("docs", list(DOCS))
def test_packed_engine_matches_per_document_attention(n, algorithm, causal, docs):
    errors = packed_errors(n, algorithm, causal, DOCS[docs])
    assert all(e < TOL[torch.float64] for e in errors.values()), errors


@pytest.mark.parametrize("n", [2, 5])
def test_packed_engine_bf16_and_mha(n):
    errors = packed_errors(n, "hamilton", True, DOCS["uneven"], kv_heads=4, dtype=torch.bfloat16)
    assert all(e < TOL[torch.bfloat16] for e in errors.values()), errors


@pytest.mark.gpu
@pytest.mark.parametrize("n,algorithm,kv_heads", [(2, "zigzag", 4), (5, "hamilton", 2), (8, "hamilton", 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_packed_engine_on_gpu_with_flash_varlen(n, algorithm, kv_heads, causal):
    errors = packed_errors(n, algorithm, causal, DOCS["uneven"] + DOCS["short"], kv_heads=kv_heads,
                           dtype=torch.bfloat16, head_dim=64, device="cuda")
    assert all(e < TOL[torch.bfloat16] for e in errors.values()), errors


def test_one_document_equals_the_unpacked_result():
    """A single document: the packed path gives what the unpacked engine gives on the same shards."""
    n, seq = 3, 36
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 4, seq // n, 8, dtype=torch.float64) for _ in range(3))
    groups_a, groups_b = ThreadGroup.create(n), ThreadGroup.create(n)
    schedule = resolve("hamilton", Topology.uniform(1, n)).schedule
    layout = PackedLayout.from_cu_seqlens([0, seq], n)

    def both(rank):
        plain = EngineConfig.create(schedule=schedule, comm=groups_a[rank], kernel=MathKernel(), head_dim=8)
        packed = EngineConfig.create(schedule=schedule, comm=groups_b[rank], kernel=MathKernel(), head_dim=8,
                                     packed=layout)
        return run_forward(plain, q, k, v), run_forward(packed, q, k, v)

    with ThreadPoolExecutor(n) as pool:
        for (a, la), (b, lb) in pool.map(both, range(n)):
            assert torch.allclose(a, b, atol=1e-12) and torch.allclose(la, lb, atol=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_kernel_calls_per_step_do_not_grow_with_documents(n):
    schedule = resolve("hamilton", Topology.uniform(1, n)).schedule
    lengths = tuple(sub_chunk_lengths(64, schedule.num_cycles))
    for causal in (True, False):
        counts = {docs: max(len(step) for step in varlen_blocks(schedule, 1, causal, lengths,
                                                                PackedLayout((64 // docs,) * docs)))
                  for docs in (1, 4, 16, 64)}
        assert len(set(counts.values())) == 1 and counts[1] <= 4, counts


def _api_rank(rank, n, algorithm, causal, docs, kv_heads):
    """One gloo rank: the packed call through context_parallel_attention (thd) against the reference."""
    from tasp_plugin.api import context_parallel_attention

    torch.manual_seed(11)
    cu = cu_seqlens_of(padded_document_lengths(docs, n))
    q, k, v = (torch.randn(cu[-1], h, 8, dtype=torch.float64, requires_grad=True) for h in (4, kv_heads, kv_heads))
    ref_out, ref_lse = packed_reference(q, k, v, cu, causal, 8 ** -0.5)
    ref_out.square().sum().backward()
    lq, lk, lv = (shard_packed(x.detach(), cu, rank, n, 0).requires_grad_(True) for x in (q, k, v))
    out, lse = context_parallel_attention(lq, lk, lv, algorithm=algorithm, causal=causal, layout="thd",
                                          cu_seqlens=torch.tensor(cu, dtype=torch.int32), return_lse=True)
    out.square().sum().backward()
    pairs = [(out, shard_packed(ref_out, cu, rank, n, 0)), (lse, shard_packed(ref_lse, cu, rank, n, 1))] + [
        (x.grad, shard_packed(r.grad, cu, rank, n, 0)) for x, r in ((lq, q), (lk, k), (lv, v))]
    return max(((a - r).abs().max() / r.abs().max()).item() for a, r in pairs)


@pytest.mark.distributed
@pytest.mark.parametrize("n,algorithm,causal,kv_heads", [(2, "zigzag", True, 4), (3, "hamilton", True, 2),
                                                         (5, "hamilton", False, 2), (4, "ring", True, 1)])
def test_api_thd_with_cu_seqlens_matches_the_reference(n, algorithm, causal, kv_heads):
    from .distributed import run_distributed

    errors = run_distributed(_api_rank, n, algorithm, causal, [7, 20, 2, 11], kv_heads)
    assert max(errors) < 1e-10, errors


def _bad_call(rank, n, cu, layout):
    from tasp_plugin.api import context_parallel_attention

    q = torch.randn(24 // n if layout == "thd" else 1, *((4, 8) if layout == "thd" else (24 // n, 4, 8)))
    try:
        context_parallel_attention(q, q, q, layout=layout, cu_seqlens=cu)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.distributed
@pytest.mark.parametrize("cu,layout,message", [
    ([0, 8, 24], "thd", "multiple of 2"),  # 8 tokens is not a multiple of 2 x 3
    ([0, 12, 18], "thd", "24"),  # the documents do not fill the tokens
    ([0, 18, 12, 24], "thd", "increas"),
    (None, "thd", "needs cu_seqlens"),
    ([0, 24], "bshd", "needs layout 'thd'"),
    (torch.tensor([0.0, 24.0]), "thd", "integers"),
])
def test_bad_cu_seqlens_raise_on_every_rank(cu, layout, message):
    from .distributed import run_distributed

    results = run_distributed(_bad_call, 3, cu, layout)
    assert all(message in r for r in results), results


def test_packed_fingerprint_compares_documents_only_when_checking_every_call(monkeypatch):
    from tasp_plugin import checks

    q = torch.randn(8, 2, 4)
    options = checks.check_call(q, q, q, algorithm="zigzag", causal=True, softmax_scale=None, layout="thd",
                                backend="auto", return_lse=False)
    monkeypatch.delenv(checks.CHECK_ENV, raising=False)
    # a new batch's documents must not make a new fingerprint (that would gather on every training step)
    assert checks.fingerprint(options, q, q, q, None, (0, 4, 8)) == checks.fingerprint(options, q, q, q, None,
                                                                                          (0, 8))
    monkeypatch.setenv(checks.CHECK_ENV, "1")
    assert checks.fingerprint(options, q, q, q, None, (0, 4, 8)) != checks.fingerprint(options, q, q, q, None,
                                                                                          (0, 8))
