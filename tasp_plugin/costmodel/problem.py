"""What is computed (attention shape) and how fast a GPU computes it (measured or assumed kernel rates)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KERNEL_RATES", "ComputeRates", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One attention call of a context-parallel group: ``seq_len`` is the total (global) number of tokens.

    ``dtype_bytes`` is the K/V element size on the wire (2 for bf16); ``grad_bytes`` that of the dK/dV
    accumulators in the backward (4: the package's fp32 default; 2 halves backward traffic).
    """

    seq_len: int
    heads: int
    kv_heads: int
    head_dim: int
    batch: int = 1
    dtype_bytes: int = 2
    causal: bool = True
    grad_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("seq_len", "heads", "kv_heads", "head_dim", "batch", "dtype_bytes", "grad_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Problem: {name} must be a positive int, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"Problem: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if not isinstance(self.causal, bool):
            raise TypeError(f"Problem: causal must be a bool, got {self.causal!r}")

    def local_tokens(self, world_size: int) -> int:
        """Tokens per rank; zigzag sharding needs ``seq_len`` divisible by ``2 * world_size``."""
        if self.seq_len % (2 * world_size):
            raise ValueError(f"Problem: seq_len {self.seq_len} must be divisible by 2 * world_size = {2 * world_size}")
        return self.seq_len // world_size

    def kv_elements(self, world_size: int) -> int:
        """Elements of one rank's local K plus V."""
        return 2 * self.batch * self.local_tokens(world_size) * self.kv_heads * self.head_dim

    def block_flops(self, world_size: int) -> float:
        """Forward FLOPs of local Q against a local-sized K/V block without mask (QK^T and PV, 2 per MAC)."""
        tokens = self.local_tokens(world_size)
        return 4.0 * self.batch * self.heads * self.head_dim * tokens * tokens


@dataclass(frozen=True)
class ComputeRates:
    """Per-GPU attention kernel rates and what running a transfer beside a kernel costs: the inputs that
    decide when a step is compute-bound.

    ``fwd_tflops`` 609 and ``bwd_tflops`` 545: cuDNN bf16 (through SDPA), causal, measured on one H200 by
    ``benchmarks/peers.py``'s ideal over 64K tokens (forward 609; forward+backward 562 overall, which with
    ``bwd_flop_ratio`` 2.5 leaves 545 for the backward). ``bwd_flop_ratio``: a flash-style backward runs 5
    matmuls (recompute QK^T, dV, dP, dQ, dK) against the forward's 2. ``call_overhead_us``: fixed cost of one
    block-attention call plus its out/LSE merge (launches, small tails); 5 us is an assumption.
    ``contention_gbps``: a transfer running beside a step's kernels slows them (NCCL's copies run on SMs,
    and every copy takes memory bandwidth) by the time it takes to move the step's bytes at this rate, the
    same per byte whichever link carries them. Measured on 2 H200s (docs/BENCHMARKS.md): a cuDNN forward
    beside an NCCL send/recv of one rank's K/V lost 0.35 ms per 128 MiB at 8K tokens per GPU (383 GB/s)
    and 2.6 ms per 512 MiB at 32K (206 GB/s); 280 is the middle (``math.inf``: no contention).
    ``a2a_efficiency``: the share of the links' modelled rate that the Ulysses all-to-all stage reaches
    (its exchanges are posted one tensor at a time, with copies to cut heads and reassemble the sequence);
    measured on 2 H200s (docs/BENCHMARKS.md, "Head x sequence layouts"): 62-74 GB/s against the 180 GB/s
    the H200 preset gives one peer, so 0.4. ``KERNEL_RATES`` has the FlashAttention-4 numbers.
    """

    fwd_tflops: float = 609.0
    bwd_tflops: float = 545.0
    bwd_flop_ratio: float = 2.5
    call_overhead_us: float = 5.0
    contention_gbps: float = 280.0
    a2a_efficiency: float = 0.4

    def __post_init__(self) -> None:
        for name in ("fwd_tflops", "bwd_tflops", "bwd_flop_ratio", "contention_gbps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ComputeRates: {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.a2a_efficiency <= 1:
            raise ValueError(f"ComputeRates: a2a_efficiency must be in (0, 1], got {self.a2a_efficiency!r}")
        if not self.call_overhead_us >= 0:
            raise ValueError(f"ComputeRates: call_overhead_us must be >= 0, got {self.call_overhead_us!r}")


# measured rates per kernel backend (bf16, causal; H200): cuDNN as above, FlashAttention-4 at 8K tokens
# (forward 675 TFLOP/s, forward+backward 600 overall, so 574 for the backward; docs/BENCHMARKS.md)
KERNEL_RATES = {"cudnn": ComputeRates(), "flash_attn": ComputeRates(fwd_tflops=675.0, bwd_tflops=574.0)}
