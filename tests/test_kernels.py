"""Block kernels against autograd on the explicit formula, and the out/LSE merge."""

import pytest
import torch

from tasp_plugin.kernels import CpuFlashKernel, MathKernel, get_kernel, merge_into, update_out_and_lse

from .reference import reference_attention

KERNELS = [MathKernel(), CpuFlashKernel()]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal, lk", [(True, 7), (False, 7), (False, 12)])
def test_kernel_forward_backward(kernel, dtype, tol, kv_heads, causal, lk):
    torch.manual_seed(0)
    q = torch.randn(2, 7, 4, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, lk, kv_heads, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, 7, 4, 16, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, 0.3)
    (ref_out * dout).sum().backward()
    bhsd = [x.detach().transpose(1, 2).to(dtype).contiguous() for x in (q, k, v)]
    out, lse = kernel.forward(*bhsd, causal, 0.3)
    assert lse.dtype in (torch.float32, torch.float64)
    dq, dk, dv = kernel.backward(dout.transpose(1, 2).to(dtype), *bhsd, out, lse, causal, 0.3)
    for got, want in [(out, ref_out.transpose(1, 2)), (lse, ref_lse), (dq, q.grad.transpose(1, 2)),
                      (dk, k.grad.transpose(1, 2)), (dv, v.grad.transpose(1, 2))]:
        assert got.shape == want.shape
        assert ((got.double() - want).abs().max() / want.abs().max()).item() < tol


def test_causal_block_must_be_square():
    x = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="square"):
        MathKernel().forward(x, torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), True, 1.0)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="multiple of K/V heads"):
        MathKernel().forward(torch.randn(1, 4, 3, 8), torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8), False, 1.0)


def test_merge_equals_attention_over_the_union():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 5, 8, dtype=torch.float64), torch.randn(1, 2, 9, 8, dtype=torch.float64), None
    v = torch.randn(1, 2, 9, 8, dtype=torch.float64)
    m = MathKernel()
    full_out, full_lse = m.forward(q, k, v, False, 0.5)
    out = torch.zeros(1, 2, 5, 8, dtype=torch.float64)
    lse = torch.full((1, 2, 5), float("-inf"), dtype=torch.float64)
    for sl in (slice(0, 4), slice(4, 9)):
        merge_into(out, lse, *m.forward(q, k[:, :, sl], v[:, :, sl], False, 0.5))
    assert torch.allclose(out, full_out, atol=1e-12) and torch.allclose(lse, full_lse, atol=1e-12)


def test_merge_handles_rows_that_saw_nothing():
    out, lse = torch.zeros(1, 1, 2, 4), torch.full((1, 1, 2), float("-inf"))
    merge_into(out, lse, torch.ones(1, 1, 2, 4), torch.tensor([[[float("-inf"), 2.0]]]))
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.isneginf(lse[0, 0, 0]) and lse[0, 0, 1] == 2.0
    assert out[0, 0, 1].eq(1).all()
    big = torch.tensor([[[1e4, -1e4]]])
    merge_into(out, lse, torch.zeros(1, 1, 2, 4), big)
    assert torch.isfinite(lse).all() and torch.isfinite(out).all()


def test_update_out_and_lse_seed_api():
    o, lse = update_out_and_lse(None, None, torch.ones(1, 1, 2, 4), torch.zeros(1, 1, 2))
    o2, l2 = update_out_and_lse(o, lse, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2))
    assert (torch.allclose(o2, torch.full_like(o2, 0.5))
            and torch.allclose(l2, torch.full_like(l2, 0.6931471805599453)))
    from tasp_plugin.compat import seed_api

    # the reference exports its merge under a leading-underscore name; the compat API keeps it in __all__
    exported = {name: getattr(seed_api, name) for name in seed_api.__all__}
    o3, l3 = exported["_update_out_and_lse"](torch.ones(1, 1, 2, 4), torch.zeros(1, 1, 2),
                                             torch.full((1, 1, 2, 4), 3.0), torch.full((1, 1, 2), float("-inf")))
    assert torch.equal(o3, torch.ones(1, 1, 2, 4)) and torch.equal(l3, torch.zeros(1, 1, 2))


def test_get_kernel():
    assert get_kernel("auto", torch.device("cpu"), torch.float32).name == "cpu"
    assert get_kernel("math", torch.device("cpu"), torch.float32).name == "math"
    with pytest.raises(ValueError, match="unknown backend"):
        get_kernel("cudnn2", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("dtype, head_dim, backend", [
    (torch.bfloat16, 128, "cudnn"), (torch.float16, 64, "cudnn"), (torch.bfloat16, None, "cudnn"),
    (torch.bfloat16, 192, "torch_flash"), (torch.bfloat16, 256, "torch_flash"),
    (torch.bfloat16, 320, "torch_efficient"), (torch.bfloat16, 100, "torch_efficient"),
    (torch.float32, 64, "torch_efficient")])
def test_auto_cuda_backend_respects_head_dim_limits(dtype, head_dim, backend):
    from tasp_plugin.kernels import auto_cuda_backend

    assert auto_cuda_backend(dtype, head_dim) == backend


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_kernel_lse_of_empty_nan_and_inf_rows(kernel, dtype):
    """Issue 13: one key with an inf gives row 0 a +inf score, row 1 a -inf score (an empty row) and row 2
    (query 0 in that dim) a NaN score. PyTorch's CPU flash op returns LSE NaN, 0 and 0 for these; every
    kernel must return +inf (out NaN), -inf (out 0) and NaN (out NaN), so that merging the block into
    finite rows leaves the empty row untouched and the others non-finite."""
    q = torch.tensor([[1.0, 0.5], [-1.0, 0.5], [0.0, 0.5]], dtype=dtype).view(1, 1, 3, 2)
    k = torch.tensor([[float("inf"), 1.0]], dtype=dtype).view(1, 1, 1, 2)
    v = torch.full((1, 1, 1, 2), 3.0, dtype=dtype)
    out, lse = kernel.forward(q, k, v, False, 1.0)
    assert lse.dtype in (torch.float32, torch.float64)
    assert torch.isposinf(lse[0, 0, 0]) and out[0, 0, 0].isnan().all()
    assert torch.isneginf(lse[0, 0, 1]) and out[0, 0, 1].eq(0).all()
    assert lse[0, 0, 2].isnan() and out[0, 0, 2].isnan().all()
    acc_out, acc_lse = torch.ones(1, 1, 3, 2), torch.full((1, 1, 3), 0.25)
    merge_into(acc_out, acc_lse, out, lse)
    assert torch.isposinf(acc_lse[0, 0, 0]) and acc_out[0, 0, 0].isnan().all()
    assert acc_lse[0, 0, 1] == 0.25 and acc_out[0, 0, 1].eq(1).all()
    assert acc_lse[0, 0, 2].isnan() and acc_out[0, 0, 2].isnan().all()


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_kernel_nan_key_alone_in_its_block_is_not_masked(kernel):
    """The reproduction of issue 13 at block level: a NaN key alone in a one-key block made the CPU
    flash op return out 0 and LSE 0, so the merge dropped the NaN."""
    q = torch.randn(1, 2, 4, 8)
    k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    k[0, 1, 0, 5] = float("nan")
    out, lse = kernel.forward(q, k, v, False, 0.5)
    assert lse[0, 1].isnan().all() and out[0, 1].isnan().all()
    assert torch.isfinite(lse[0, 0]).all() and torch.isfinite(out[0, 0]).all()
