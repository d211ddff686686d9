"""CUDA kernel backends against float64 attention (skipped without a GPU; run on the H100/H200)."""

import pytest
import torch

from tasp_plugin.kernels import CudnnKernel, TorchEfficientKernel, TorchFlashKernel, get_kernel

from .reference import block_kernel_errors, reference_attention

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
    errors = block_kernel_errors(kernel, dtype, kv_heads, causal, lq, lk, rows_view)
    assert max(errors.values()) < 3e-2, errors


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
