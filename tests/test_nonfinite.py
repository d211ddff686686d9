"""NaN and inf through the engine against ``scaled_dot_product_attention`` (math backend) on the full
sequence (issue 13), and the out/LSE merge's non-finite semantics on both of its code paths.

The reference is SDPA's math backend over each query row's visible keys: for non-causal attention that is
one SDPA call on the full sequence; for causal attention, row ``i`` is SDPA on keys ``0..i``. (SDPA with
``is_causal=True`` adds the mask as a ``-inf`` bias and multiplies hidden values by a zero weight, so a NaN
or inf at a hidden position also turns rows that cannot see it NaN; no distributed schedule can or should
reproduce that. docs/API.md, "NaN and Inf", says so.) Out, LSE and all three gradients are compared
element by element: the same NaN, +inf and -inf positions, finite values to 1e-9 (fp64).
"""

import functools
import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tasp_plugin.comm import ThreadGroup
from tasp_plugin.engine import EngineConfig, run_backward, run_forward
from tasp_plugin.kernels import CpuFlashKernel, MathKernel, get_kernel, merge_into
from tasp_plugin.planning import Topology, resolve
from tasp_plugin.sharding import shard_sequence, unshard_sequence

NAN, INF = float("nan"), float("inf")
SEQ = 60  # divisible by 2n for every n below; at n = 5 Hamilton's sub-chunks hold 1 or 2 rows
SCALE = 0.35
# GQA (2 query heads share one K/V head); the poison goes to batch 1, K/V head 0, head-dim 3
B, HEADS, KV_HEADS, DIM = 2, 2, 1, 8
POISON = {"k": [NAN, INF, -INF], "v": [NAN, INF, -INF], "q": [NAN]}
POSITIONS = (0, 23, SEQ - 1)  # first key (row 0 sees it alone), one inside, the last


def sdpa_reference(q, k, v, dout, causal: bool, scale: float):
    """SDPA (math backend) over each row's visible keys, with autograd: ``[B, H, S, D]`` float64 inputs
    (K/V may have fewer heads) -> out, lse (natural log of the row's softmax sum), dq, dk, dv."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    with sdpa_kernel(SDPBackend.MATH):
        if causal:
            rows = [(q[:, :, i:i + 1], ke[:, :, :i + 1], ve[:, :, :i + 1]) for i in range(q.shape[2])]
        else:
            rows = [(q, ke, ve)]
        out = torch.cat([F.scaled_dot_product_attention(qi, ki, vi, scale=scale) for qi, ki, vi in rows], 2)
        lse = torch.cat([torch.logsumexp(qi @ ki.transpose(-1, -2) * scale, -1) for qi, ki, _ in rows], 2)
    (out * dout).sum().backward()
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def poisoned(where: str | None, value: float, pos: int, dtype=torch.float64, seq: int = SEQ):
    """Random q, k, v, dout ``[B, H, S, D]`` with ``value`` at one element of ``where`` (q, k or v)."""
    gen = torch.Generator().manual_seed(13)
    q, dout = (torch.randn(B, HEADS, seq, DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(B, KV_HEADS, seq, DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    if where is not None:
        {"q": q, "k": k, "v": v}[where][1, 0, pos, 3] = value
    return tuple(x.to(dtype) for x in (q, k, v, dout))


@functools.cache
def reference_for(where: str, value: float, pos: int, causal: bool):
    return sdpa_reference(*poisoned(where, value, pos), causal, SCALE)


def distributed(q, k, v, dout, n: int, algorithm: str, causal: bool, backend: str):
    """Every rank of a CP group of ``n`` as a thread: zigzag shards in, full-sequence (unsharded)
    out, lse, dq, dk, dv back."""
    groups = ThreadGroup.create(n)
    schedule = resolve(algorithm, Topology.uniform(1, n)).schedule
    kernel = get_kernel(backend, torch.device("cpu"), q.dtype, DIM)

    def rank(r):
        cfg = EngineConfig.create(schedule=schedule, comm=groups[r], kernel=kernel, head_dim=DIM, causal=causal,
                                  softmax_scale=SCALE)
        lq, lk, lv, ldout = (shard_sequence(x, r, n, 2).contiguous() for x in (q, k, v, dout))
        out, lse = run_forward(cfg, lq, lk, lv)
        out = out.to(q.dtype)
        return (out, lse, *run_backward(cfg, ldout, lq, lk, lv, out, lse))

    with ThreadPoolExecutor(n) as pool:
        per_rank = list(pool.map(rank, range(n)))
    return [unshard_sequence([r[i] for r in per_rank], 2) for i in range(5)]


def assert_same(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """Same shape, the same NaN, +inf and -inf elements, finite elements within ``tol`` (relative to the
    reference's largest finite magnitude, or absolute where that is below 1, e.g. an all-zero gradient)."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, name
    for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = (test(got) != test(want)).nonzero().tolist()
        assert not differ, f"{name}: {kind} differs at {differ[:5]} ({len(differ)} elements)"
    finite = torch.isfinite(want)
    if finite.any():
        err = (got[finite] - want[finite]).abs().max() / want[finite].abs().max().clamp_min(1.0)
        assert err < tol, f"{name}: finite elements off by {err:.3g}"


NAMES = ("out", "lse", "dq", "dk", "dv")
MATRIX = [(backend, n, algorithm, causal, where, value)
          for backend, n, algorithm, causal in itertools.product(["cpu", "math"], [1, 2, 3, 5], ["zigzag", "hamilton"],
                                                                 [True, False])
          for where, values in POISON.items() for value in values]


@pytest.mark.parametrize("backend, n, algorithm, causal, where, value", MATRIX)
def test_engine_propagates_nan_and_inf_like_sdpa_on_the_full_sequence(backend, n, algorithm, causal, where, value):
    for pos in POSITIONS:
        got = distributed(*poisoned(where, value, pos), n, algorithm, causal, backend)
        for name, g, w in zip(NAMES, got, reference_for(where, value, pos, causal), strict=True):
            assert_same(f"{name} ({where}[{pos}] = {value})", g, w, 1e-9)


@pytest.mark.parametrize("backend", ["cpu", "math"])
@pytest.mark.parametrize("causal", [True, False])
def test_engine_nonfinite_in_fp32(backend, causal):
    """The fp32 path (fp32 kernels, fp32 accumulators) keeps the same non-finite pattern."""
    for where, value in [("k", NAN), ("k", INF), ("k", -INF), ("v", NAN), ("v", INF)]:
        q, k, v, dout = poisoned(where, value, 23, torch.float32)
        want = sdpa_reference(*(x.double() for x in (q, k, v, dout)), causal, SCALE)
        got = distributed(q, k, v, dout, 5, "hamilton", causal, backend)
        for name, g, w in zip(NAMES, got, want, strict=True):
            assert_same(f"{name} ({where} = {value})", g, w, 1e-4)


@pytest.mark.parametrize("backend", ["cpu", "math"])
def test_row_whose_only_key_scores_minus_inf_is_empty(backend):
    """Causal row 0 sees key 0 alone; a -inf there (with a positive query) leaves the row empty: out 0 and
    LSE -inf, as SDPA gives; its gradients are NaN only where SDPA's are."""
    q, k, v, dout = poisoned("k", -INF, 0)
    q[..., 0, 3] = q[..., 0, 3].abs() + 0.5
    want = sdpa_reference(q, k, v, dout, True, SCALE)
    assert torch.isneginf(want[1][1, :, 0]).all() and want[0][1, :, 0].eq(0).all()
    got = distributed(q, k, v, dout, 5, "hamilton", True, backend)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert_same(name, g, w, 1e-9)


@pytest.mark.parametrize("kernel", [MathKernel(), CpuFlashKernel()], ids=lambda k: k.name)
@pytest.mark.parametrize("causal, lk", [(True, 1), (True, 5), (False, 1), (False, 2), (False, 5)])
@pytest.mark.parametrize("where, value", [(w, x) for w, xs in POISON.items() for x in xs])
def test_block_kernels_on_small_poisoned_blocks(kernel, causal, lk, where, value):
    """One block, the poison alone or nearly so: out and LSE as SDPA's (LSE NaN or +inf, never 0), and
    the backward with the block's own out/LSE as the merged ones."""
    for pos in range(lk):
        q, k, v, dout = poisoned(where, value, pos, seq=lk)
        want = sdpa_reference(q, k, v, dout, causal, SCALE)
        out, lse = kernel.forward(q, k, v, causal, SCALE)
        grads = kernel.backward(dout, q, k, v, out, lse, causal, SCALE)
        for name, g, w in zip(NAMES, (out, lse, *grads), want, strict=True):
            assert_same(f"{name} ({where}[{pos}] = {value})", g, w, 1e-9)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("where, value", [(w, x) for w, xs in POISON.items() for x in xs])
def test_merged_blocks_equal_one_block_over_the_union(causal, where, value):
    """Merging the blocks of a split key range gives what one call over all keys gives, NaN and inf
    included (causal: the diagonal block, then the keys before it, as the engine's steps do)."""
    seq = 12
    m = MathKernel()
    for pos in range(seq):
        q, k, v, _ = poisoned(where, value, pos, seq=seq)
        want_out, want_lse = m.forward(q, k, v, causal, SCALE)
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:3], -INF, dtype=q.dtype)
        if causal:  # rows 6..11: diagonal block, then keys 0..5 unmasked; rows 0..5: their own diagonal
            back = slice(6, 12)
            merge_into(out[:, :, back], lse[:, :, back], *m.forward(q[:, :, back], k[:, :, back], v[:, :, back],
                                                                     True, SCALE))
            merge_into(out[:, :, back], lse[:, :, back], *m.forward(q[:, :, back], k[:, :, :6], v[:, :, :6],
                                                                     False, SCALE))
            merge_into(out[:, :, :6], lse[:, :, :6], *m.forward(q[:, :, :6], k[:, :, :6], v[:, :, :6], True, SCALE))
        else:
            for keys in (slice(0, 1), slice(1, 5), slice(5, 12)):
                merge_into(out, lse, *m.forward(q, k[:, :, keys], v[:, :, keys], False, SCALE))
        assert_same(f"out ({where}[{pos}])", out, want_out, 1e-12)
        assert_same(f"lse ({where}[{pos}])", lse, want_lse, 1e-12)


def test_merge_special_values():
    """The merge's rules, row by row: (accumulated lse, block lse, accumulated out, block out) -> result."""
    cases = [  # lse, block_lse, out, block_out, want_lse, want_out
        (-INF, -INF, 0.0, 0.0, -INF, 0.0),  # both empty stay empty
        (-INF, 1.0, 0.0, 2.0, 1.0, 2.0),  # first block taken as is
        (1.0, -INF, 2.0, 0.0, 1.0, 2.0),  # empty block changes nothing
        (1.0, -INF, 2.0, NAN, 1.0, NAN),  # ... unless its out is NaN (a NaN value at zero weight)
        (-INF, 1.0, NAN, 2.0, 1.0, NAN),  # a NaN accumulated at zero weight stays
        (NAN, 1.0, NAN, 2.0, NAN, NAN),  # NaN LSE on either side
        (1.0, NAN, 2.0, NAN, NAN, NAN),
        (INF, 1.0, NAN, 2.0, INF, NAN),  # a +inf score: LSE +inf, out NaN
        (1.0, INF, 2.0, NAN, INF, NAN),
        (INF, INF, NAN, NAN, INF, NAN),  # two +inf sides: +inf, not inf - inf
        (1.0, 1.0, INF, 2.0, 1.0 + 0.6931471805599453, INF),  # an inf value stays inf, either side
        (1.0, 3.0, 2.0, -INF, 3.0 + 0.1269280110429725, -INF),
        (-INF, 1.0, 0.0, INF, 1.0, INF),
    ]
    lse, block_lse, out, block_out, want_lse, want_out = (torch.tensor(c, dtype=torch.float64).view(1, 1, -1)
                                                          for c in zip(*cases, strict=True))
    out, block_out, want_out = (x.unsqueeze(-1).expand(1, 1, len(cases), 4).clone() for x in (out, block_out, want_out))
    merge_into(out, lse, block_out, block_lse)
    assert_same("lse", lse, want_lse, 1e-12)
    assert_same("out", out, want_out, 1e-12)


FUSED_VS_FALLBACK = """
import os, sys, torch
from tasp_plugin.kernels.fused_merge import fused_merge_into
from tasp_plugin.kernels.merge import merge_into
device = sys.argv[1]
inf, nan = float("inf"), float("nan")
lses = [0.0, 1.5, -2.0, 20.0, -20.0, inf, -inf, nan]
pairs = [(a, b) for a in lses for b in lses]
outs = [0.0, 1.0, -3.0, inf, -inf, nan]
lse = torch.tensor([a for a, _ in pairs], device=device).view(1, 1, -1).repeat(2, 3, 1)
block_lse = torch.tensor([b for _, b in pairs], device=device).view(1, 1, -1).repeat(2, 3, 1)
out = torch.tensor(outs, device=device).repeat(2, 3, len(pairs), 1)
block_out = torch.tensor(outs[::-1], device=device).repeat(2, 3, len(pairs), 1)
block_out[..., ::2, :] = block_out[..., ::2, :].roll(1, -1)  # every pairing of out and block out values
os.environ["TASP_FUSED_MERGE"] = "0"
torch_out, torch_lse = out.clone(), lse.clone()
merge_into(torch_out, torch_lse, block_out.to(torch.bfloat16 if device == "cuda" else torch.float32), block_lse)
fused_out, fused_lse = out.clone(), lse.clone()
fused_merge_into(fused_out, fused_lse, block_out.to(torch.bfloat16 if device == "cuda" else torch.float32),
                 block_lse)
for name, a, b in (("out", fused_out, torch_out), ("lse", fused_lse, torch_lse)):
    for test in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(test(a), test(b)), (name, test.__name__, (test(a) != test(b)).nonzero()[:5].tolist())
    fin = torch.isfinite(b)
    assert torch.allclose(a[fin], b[fin], rtol=1e-5, atol=1e-5), name
print("same")
"""


def _fused_vs_fallback(device: str, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-c", FUSED_VS_FALLBACK, device], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stdout + proc.stderr


def test_fused_merge_semantics_equal_pytorch_path_on_cpu():
    """The Triton kernel, run by Triton's CPU interpreter, against the PyTorch path: every pairing of
    finite, +-inf and NaN LSEs and outs (needs Triton installed; CPU-only torch has none)."""
    pytest.importorskip("triton")
    _fused_vs_fallback("cpu", {"TRITON_INTERPRET": "1"})


@pytest.mark.gpu
def test_fused_merge_semantics_equal_pytorch_path_on_gpu():
    pytest.importorskip("triton")
    _fused_vs_fallback("cuda", {})
