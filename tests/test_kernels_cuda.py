"""CUDA kernel backends against float64 attention (skipped without a GPU; run on the H100/H200)."""

import pytest
import torch

from tasp_plugin.kernels import CudnnKernel, TorchEfficientKernel, TorchFlashKernel, get_kernel

from .reference import reference_attention

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kernel", [CudnnKernel(), TorchFlashKernel(), TorchEfficientKernel()], ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kv_heads", [8, 2])
@pytest.mark.parametrize("causal, lq, lk", [(True, 256, 256), (False, 256, 256), (False, 200, 328), (True, 100, 100)])
@pytest.mark.parametrize("rows_view", [False, True], ids=["contiguous", "row-major-view"])
def test_cuda_kernel(kernel, dtype, kv_heads, causal, lq, lk, rows_view):
    """``rows_view``: K/V are views into the engine's row-major [S, 2, B, H, D] buffer, and Q, grad_out and
    out are row slices of longer tensors, as the engine passes them for a "back" block."""
    if dtype == torch.float32 and kernel.name != "torch_efficient":
        pytest.skip("cuDNN and flash kernels take only fp16/bf16")
    torch.manual_seed(0)
    q = torch.randn(2, lq, 8, 128, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, lk, kv_heads, 128, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, lq, 8, 128, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, 0.1)
    (ref_out * dout).sum().backward()
    bhsd = [x.detach().transpose(1, 2).to("cuda", dtype).contiguous() for x in (q, k, v)]
    if rows_view:
        buf = torch.stack(bhsd[1:]).permute(3, 0, 1, 2, 4).contiguous()
        bhsd[1:] = [buf[:, 0].permute(1, 2, 0, 3), buf[:, 1].permute(1, 2, 0, 3)]
    g = dout.transpose(1, 2).to("cuda", dtype)
    if rows_view:
        bhsd[0], g = (torch.cat([torch.zeros_like(x), x], dim=2)[:, :, lq:] for x in (bhsd[0], g))
    out, lse = kernel.forward(*bhsd, causal, 0.1)
    if rows_view:
        out = torch.cat([torch.zeros_like(out), out], dim=2)[:, :, lq:]
    dq, dk, dv = kernel.backward(g, *bhsd, out, lse, causal, 0.1)
    for name, got, want in [("out", out, ref_out.transpose(1, 2)), ("lse", lse, ref_lse),
                            ("dq", dq, q.grad.transpose(1, 2)), ("dk", dk, k.grad.transpose(1, 2)),
                            ("dv", dv, v.grad.transpose(1, 2))]:
        assert got.shape == want.shape, name
        err = ((got.double().cpu() - want).abs().max() / want.abs().max()).item()
        assert err < 3e-2, (name, err)


def test_auto_picks_cudnn_for_bf16():
    assert get_kernel("auto", torch.device("cuda"), torch.bfloat16).name == "cudnn"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_api_on_one_gpu(dtype, single_rank_group):
    from tasp_plugin.api import context_parallel_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 512, h, 64, dtype=torch.float64, requires_grad=True) for h in (8, 2, 2))
    ref, _ = reference_attention(q, k, v, True, 0.125)
    ref.sum().backward()
    lq, lk, lv = (x.detach().to("cuda", dtype).requires_grad_(True) for x in (q, k, v))
    out = context_parallel_attention(lq, lk, lv, causal=True)
    out.float().sum().backward()
    for got, want in [(out, ref), (lq.grad, q.grad), (lk.grad, k.grad), (lv.grad, v.grad)]:
        assert ((got.double().cpu() - want).abs().max() / want.abs().max()).item() < 3e-2


def test_fused_merge_equals_the_pytorch_merge_including_empty_rows(monkeypatch):
    from tasp_plugin.kernels import merge_into
    from tasp_plugin.kernels.fused_merge import fused_merge_available

    torch.manual_seed(0)
    out = torch.randn(2, 3, 50, 128, device="cuda")
    assert fused_merge_available(out)
    lse = torch.randn(2, 3, 50, device="cuda")
    lse[:, :, :5] = float("-inf")                  # rows that have seen nothing yet
    block_out = torch.randn(2, 50, 3, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # strided
    block_lse = torch.randn(2, 3, 64, device="cuda")[..., :50]  # padded LSE, sliced
    block_lse[:, :, 3:8] = float("-inf")           # both empty on rows 3, 4
    views = (out[..., 10:, :], lse[..., 10:], block_out[..., 10:, :], block_lse[..., 10:])
    expected = [x.clone() for x in (out, lse)]
    monkeypatch.setenv("TASP_FUSED_MERGE", "0")
    merge_into(expected[0][..., 10:, :], expected[1][..., 10:], views[2], views[3])
    merge_into(expected[0], expected[1], block_out, block_lse)
    monkeypatch.setenv("TASP_FUSED_MERGE", "1")
    merge_into(*views)
    merge_into(out, lse, block_out, block_lse)
    assert not out.isnan().any() and torch.equal(lse.isneginf(), expected[1].isneginf())
    assert torch.allclose(out, expected[0], atol=1e-5) and torch.allclose(lse, expected[1], atol=1e-5)
