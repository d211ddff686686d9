"""tasp against PyTorch's own context parallelism on the GPUs of one machine, in one run: every tasp algorithm
and transport, ``torch.distributed.tensor.experimental.context_parallel`` (all-gather and all-to-all rotation,
cuDNN and flash SDPA), and the ideal (one cuDNN call over the whole sequence on one GPU, divided by the
number of GPUs); forward and forward+backward, MHA and GQA; peak memory; every method's output against the
ideal's. Each rank holds the same zigzag (head-tail) shards for every method.

    python -m torch.distributed.run --nproc-per-node 2 benchmarks/peers.py --out results/peers

Writes ``peers.json``, ``peers.md`` and ``peers.png`` to ``--out`` and prints the table. On CPUs (gloo) only
tasp and the ideal run, at whatever ``--tokens`` you give (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tasp_plugin.api import context_parallel_attention
from tasp_plugin.bench import attention_flops
from tasp_plugin.checks import TRANSPORT_ENV
from tasp_plugin.comm import PeerMemory
from tasp_plugin.sharding import shard_sequence
from tasp_plugin.training.launch import local_device


def _sdpa_backend(name: str) -> contextlib.AbstractContextManager:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name])


def _ideal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """One SDPA call over the whole sequence ([B, H, S, D]); cuDNN on GPUs."""
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda:
        with _sdpa_backend("cudnn"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)


@functools.cache
def _mesh(n: int, device_type: str):
    """One device mesh over the world for every PyTorch CP method (a mesh builds its own process group)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (n,), mesh_dim_names=("cp",))


@contextlib.contextmanager
def _torch_cp(rotate: str, n: int, device: torch.device) -> Iterator[None]:
    """PyTorch's context parallelism over the world, for SDPA calls on zigzag shards: its head-tail load
    balancer is our zigzag layout, so a dummy buffer of 2n positions switches it on and nothing is resharded."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    set_rotate_method(rotate)
    dummy = torch.zeros(1, 2 * n, device=device)
    with context_parallel(_mesh(n, device.type), buffers=[dummy], buffer_seq_dims=[1], no_restore_buffers={dummy}):
        yield


def _methods(args: argparse.Namespace, cuda: bool) -> list[tuple[str, str]]:
    """(name, family) of every method this run compares."""
    out = [(f"tasp {a} {t}", "tasp") for a in args.algorithms for t in args.transports]
    if cuda:
        out += [(f"torch-cp {r} {b}", "torch") for r in ("allgather", "alltoall") for b in ("cudnn", "flash")]
    return out


def _runner(name: str, causal: bool, n: int,
            device: torch.device) -> tuple[Callable, contextlib.AbstractContextManager]:
    """A function of local ``[B, H, L, D]`` q, k, v returning the local output, and the context it runs in."""
    words = name.split()
    if words[0] == "tasp":
        os.environ[TRANSPORT_ENV] = words[2]

        # "a2a": Ulysses over the whole group (the all-to-all stage, then one local call)
        algorithm, ulysses = ("zigzag", n) if words[1] == "a2a" else (words[1], 1)

        def tasp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return context_parallel_attention(q, k, v, algorithm=algorithm, causal=causal, layout="bhsd",
                                              ulysses_size=ulysses)

        return tasp, contextlib.nullcontext()

    def torch_cp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])

    stack = contextlib.ExitStack()
    stack.enter_context(_torch_cp(words[1], n, device))
    stack.enter_context(_sdpa_backend(words[2]))
    return torch_cp, stack


def _timed(fn: Callable[[], torch.Tensor], warmup: int, iters: int, calls: int,
           device: torch.device) -> tuple[list[float], torch.Tensor]:
    """Seconds per call, the slowest rank's, in ``iters`` samples of ``calls`` back-to-back calls after
    ``warmup`` calls (the ranks start each sample together; back to back, the host runs ahead of the GPU as
    in training, so launch overheads count only where they exceed the GPU's work), and the last result."""
    for _ in range(warmup):
        fn()
    times, result = [], torch.empty(0)
    for _ in range(iters):
        dist.barrier()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                result = fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3 / calls
        else:
            import time

            t0 = time.perf_counter()
            for _ in range(calls):
                result = fn()
            seconds = (time.perf_counter() - t0) / calls
        slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times.append(slowest.item())
    return times, result


def _cell(args: argparse.Namespace, local: int, kv_heads: int, backward: bool, device: torch.device) -> list[dict]:
    """Every method at one (tokens per GPU, KV heads, phase)."""
    n, rank = dist.get_world_size(), dist.get_rank()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    total = n * local
    g = torch.Generator(device="cpu").manual_seed(local + kv_heads)
    q, k, v = (torch.randn(1, h, total, args.head_dim, generator=g, dtype=dtype)
               for h in (args.heads, kv_heads, kv_heads))
    dout = torch.randn(1, args.heads, total, args.head_dim, generator=g, dtype=dtype)
    shards = [shard_sequence(x, rank, n, 2).to(device) for x in (q, k, v, dout)]
    flops = attention_flops(1, args.heads, total, total, args.head_dim, args.causal, backward)
    rows = []

    def measure(name: str, fn: Callable, inputs: list[torch.Tensor], context) -> dict:
        row = {"method": name, "tokens_per_gpu": local, "kv_heads": kv_heads, "phase": "fwd+bwd" if backward else "fwd"}
        grads = [x.detach().requires_grad_(backward) for x in inputs[:3]]

        def call() -> torch.Tensor:
            out = fn(*grads)
            if backward:
                out.backward(inputs[3])
                for x in grads:
                    x.grad = None
            return out.detach()

        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with context:
                times, row["out"] = _timed(call, args.warmup, args.iters, args.calls, device)
        except Exception as exc:  # a method that cannot run this shape: reported in its cell, the others go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            return row
        row["seconds"] = statistics.median(times)
        row["tflops_per_gpu"] = flops / n / row["seconds"] / 1e12
        if device.type == "cuda":
            symmetric = PeerMemory.allocated_bytes() if name.endswith("peer_copy") else 0
            peak = torch.tensor([(torch.cuda.max_memory_allocated(device) + symmetric) / 2**30], device=device)
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            row["peak_gib"] = peak.item()
        return row

    for name, _ in _methods(args, device.type == "cuda"):
        fn, context = _runner(name, args.causal, n, device)
        rows.append(measure(name, fn, shards, context))
        _progress(rows[-1])
    # the ideal last: it holds the whole sequence
    full = [x.to(device) for x in (q, k, v, dout)]
    ideal = measure("ideal (1 GPU, whole sequence) / n", lambda a, b, c: _ideal(a, b, c, args.causal), full,
                    contextlib.nullcontext())
    if "seconds" in ideal:
        ideal["seconds"] /= n
        ideal["tflops_per_gpu"] = flops / n / ideal["seconds"] / 1e12
        reference = shard_sequence(ideal.pop("out").float(), rank, n, 2)
        for row in rows:
            if "out" in row:
                err = (row.pop("out").float() - reference).abs().max().reshape(1)
                dist.all_reduce(err, op=dist.ReduceOp.MAX)
                row["max_abs_diff_vs_ideal"] = err.item()
                row["percent_of_ideal"] = 100 * ideal["seconds"] / row["seconds"]
    for row in rows + [ideal]:
        row.pop("out", None)
    _progress(ideal)
    return rows + [ideal]


def _progress(row: dict) -> None:
    """One line per measured method on rank 0, as it completes."""
    if dist.get_rank() == 0:
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items() if k != "out"}, flush=True)


def _markdown(rows: list[dict], n: int, device_name: str) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows if not r["method"].startswith("ideal")))
    cells = list(dict.fromkeys((r["tokens_per_gpu"], r["kv_heads"], r["phase"]) for r in rows))
    lines = [f"{n} x {device_name}; % of ideal (ms per call of the slowest rank; peak GiB per GPU, symmetric "
             "buffers included)", "",
             "| tokens/GPU | KV heads | phase | ideal ms | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for local, kv, phase in cells:
        here = {r["method"]: r for r in rows if (r["tokens_per_gpu"], r["kv_heads"], r["phase"]) == (local, kv, phase)}
        ideal = next((r for m, r in here.items() if m.startswith("ideal")), {})
        out = []
        for m in methods:
            r = here.get(m, {})
            if "seconds" in r and "percent_of_ideal" in r:
                out.append(f"**{r['percent_of_ideal']:.0f}%** ({1e3 * r['seconds']:.2f}"
                           + (f"; {r['peak_gib']:.2f}" if "peak_gib" in r else "") + ")")
            else:
                out.append(r.get("error", "-")[:40])
        ms = f"{1e3 * ideal['seconds']:.2f}" if "seconds" in ideal else ideal.get("error", "-")[:40]
        lines.append(f"| {local / 1024:g}K | {kv} | {phase} | {ms} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    methods = list(dict.fromkeys(r["method"] for r in rows if "percent_of_ideal" in r))
    cells = list(dict.fromkeys((r["tokens_per_gpu"], r["kv_heads"], r["phase"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cells)), 4.5))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = [next((r["percent_of_ideal"] for r in rows if r["method"] == m and
                    (r["tokens_per_gpu"], r["kv_heads"], r["phase"]) == c and "percent_of_ideal" in r), 0)
              for c in cells]
        ax.bar([j + i * width for j in range(len(cells))], ys, width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))])
    ax.set_xticklabels([f"{c[0] / 1024:g}K kv{c[1]}\n{c[2]}" for c in cells], fontsize=8)
    ax.set_ylabel("% of ideal")
    ax.axhline(100, color="grey", lw=0.5)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/peers"))
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 65536], help="tokens per GPU")
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--phases", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--algorithms", nargs="+", default=["zigzag", "hamilton"],
                   help="tasp algorithms; a2a = Ulysses all-to-all over the whole group")
    p.add_argument("--transports", nargs="+", default=["p2p", "peer_copy"])
    p.add_argument("--non-causal", dest="causal", action="store_false")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed samples (the median is reported)")
    p.add_argument("--calls", type=int, default=3, help="back-to-back calls per timed sample")
    args = p.parse_args()
    device = local_device()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            **({"device_id": device} if device.type == "cuda" else {}))
    if device.type != "cuda":
        args.transports = [t for t in args.transports if t != "peer_copy"] or ["p2p"]
    rows: list[dict] = []
    for local in args.tokens:
        for kv in args.kv_heads:
            for phase in args.phases:
                rows += _cell(args, local, kv, phase == "fwd+bwd", device)
                if dist.get_rank() == 0:
                    _write(rows, args, device)  # what is measured survives a run cut short
    if dist.get_rank() == 0:
        print(_write(rows, args, device), flush=True)
    dist.destroy_process_group()


def _write(rows: list[dict], args: argparse.Namespace, device: torch.device) -> str:
    """peers.json, peers.md and peers.png in ``args.out``; returns the markdown table."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU process"
    table = _markdown(rows, dist.get_world_size(), name)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"world_size": dist.get_world_size(), "device": name, "torch": torch.__version__,
            "heads": args.heads, "head_dim": args.head_dim, "causal": args.causal, "warmup": args.warmup,
            "iters": args.iters, "calls_per_sample": args.calls,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None}
    (args.out / "peers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / "peers.md").write_text(table)
    _plot(rows, args.out / "peers.png")
    return table


if __name__ == "__main__":
    main()
