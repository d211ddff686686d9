"""CUDA kernel backends against float64 attention (skipped without a GPU; run on the H100/H200)."""

import pytest
import torch

from tasp_plugin.kernels import CudnnKernel, TorchEfficientKernel, TorchFlashKernel, get_kernel

from .reference import reference_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kernel", [CudnnKernel(), TorchFlashKernel(), TorchEfficientKernel()], ids=lambda k: k.name)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kv_heads", [8, 2])
@pytest.mark.parametrize("causal, lq, lk", [(True, 256, 256), (False, 256, 256), (False, 200, 328), (True, 100, 100)])
def test_cuda_kernel(kernel, dtype, kv_heads, causal, lq, lk):
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
