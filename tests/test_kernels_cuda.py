"""CUDA kernel backends against float64 attention (skipped without a GPU; run on the H100/H200)."""

import pytest
import torch

from tasp_plugin.kernels import CudnnKernel, TorchEfficientKernel, TorchFlashKernel, get_kernel

from .reference import reference_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kernel", [CudnnKernel(), TorchFlashKernel(), TorchEfficientKernel()], ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kv_heads", [8, 2])
@pytest.mark.parametrize("causal, lq, lk", [(True, 256, 256), (False, 256, 256), (False, 200, 328), (True, 100, 100)])
def test_cuda_kernel(kernel, dtype, kv_heads, causal, lq, lk):
    if dtype == torch.float32 and kernel.name != "torch_efficient":
        pytest.skip("cuDNN and flash kernels take only fp16/bf16")
    torch.manual_seed(0)
    q = torch.randn(2, lq, 8, 128, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, lk, kv_heads, 128, dtype=torch.float64, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, lq, 8, 128, dtype=torch.float64)
    ref_out, ref_lse = reference_attention(q, k, v, causal, 0.1)
    (ref_out * dout).sum().backward()
    bhsd = [x.detach().transpose(1, 2).to("cuda", dtype).contiguous() for x in (q, k, v)]
    out, lse = kernel.forward(*bhsd, causal, 0.1)
    dq, dk, dv = kernel.backward(dout.transpose(1, 2).to("cuda", dtype), *bhsd, out, lse, causal, 0.1)
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
