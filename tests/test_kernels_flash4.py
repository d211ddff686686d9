"""The FlashAttention-4 backend against float64 attention, alone and inside the engine (GPU with FA4 only;
run on an H200 through the device tool)."""

import itertools

import pytest
import torch

from tasp_plugin.kernels import get_kernel
from tasp_plugin.kernels.flash4 import FLASH_INSTALL_HINT, flash_attn4_available

from .emulated import emulated_errors
from .reference import block_kernel_errors, reference_attention

needs_fa4 = pytest.mark.skipif(not flash_attn4_available(), reason="needs flash-attn-4 and a Hopper (sm90+) GPU")


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kv_heads", [8, 2])
@pytest.mark.parametrize("causal, lq, lk", [(True, 256, 256), (False, 256, 256), (False, 192, 320),
                                            (True, 128, 128), (False, 128, 512)])
@pytest.mark.parametrize("rows_view", [False, True], ids=["contiguous", "row-major-view"])
def test_flash4_kernel(dtype, kv_heads, causal, lq, lk, rows_view):
    """``rows_view``: K/V are views into the engine's row-major [S, 2, B, H, D] buffer and Q, grad_out, out
    are row slices of longer tensors, as the engine passes them for a "back" block."""
    kernel = get_kernel("flash_attn", torch.device("cuda"), dtype, 128)
    errors = block_kernel_errors(kernel, dtype, kv_heads, causal, lq, lk, rows_view)
    assert max(errors.values()) < 3e-2, errors


MATRIX = list(itertools.product([2, 3, 4, 5, 8], ["zigzag", "hamilton"], [True, False], [4, 1]))


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("n, algorithm, causal, kv_heads", MATRIX)
def test_engine_with_flash4_matches_reference(n, algorithm, causal, kv_heads):
    errors = emulated_errors(n, algorithm, causal, kv_heads, torch.bfloat16, 128 * n, device="cuda",
                             backend="flash_attn", heads=4, head_dim=128)
    assert max(errors.values()) < 3e-2, errors


def test_missing_package_names_the_extra(monkeypatch):
    """On any machine: without FA4 the backend's error says what to install and which FA generations work."""
    import sys

    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    with pytest.raises(ImportError, match=r"tasp_plugin\[flash\]"):
        get_kernel("flash_attn", torch.device("cuda"), torch.bfloat16, 128)
    assert "FlashAttention 2 and 3" in FLASH_INSTALL_HINT


def test_measured_choice_runs_each_candidate_once_per_shape_and_returns_the_winner():
    """On CPU with two exact kernels: the result is right, and a second call of the same shape only runs
    the winner (no new timing)."""
    from tasp_plugin.kernels import CpuFlashKernel, MathKernel
    from tasp_plugin.kernels.measured import MeasuredKernel

    calls = []

    class Counting(MathKernel):
        name = "counting_math"

        def forward(self, *args):
            calls.append(self.name)
            return super().forward(*args)

    kernel = MeasuredKernel([Counting(), CpuFlashKernel()], reps=2)
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.float64) for _ in range(3))
    out, lse = kernel.forward(q, k, v, True, 0.3)
    want, want_lse = reference_attention(*(x.transpose(1, 2) for x in (q, k, v)), True, 0.3)
    torch.testing.assert_close(out, want.transpose(1, 2))
    torch.testing.assert_close(lse, want_lse)
    assert len(calls) == 3  # warm-up + 2 timed
    winner = kernel.choices()[("forward", torch.float64, (1, 2, 16, 8), (1, 2, 16, 8), True)]
    kernel.forward(q, k, v, True, 0.3)
    assert len(calls) == (4 if winner == "counting_math" else 3)
