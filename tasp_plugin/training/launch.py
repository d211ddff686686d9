"""Start a job's processes on this machine when no launcher (torchrun, deepspeed) did, and give each process
its device: the examples and ``tasp bench`` run the same code under a launcher or on their own."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["free_port", "gpus_for_local_ranks", "init_process_group", "launched", "local_device", "local_rank",
           "run_local", "start_method"]

DEVICES = ("auto", "cpu", "cuda")


def launched() -> bool:
    """True inside a process started by a launcher (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpus_for_local_ranks(device: str, processes_per_node: int) -> str:
    """The device kind (``"cuda"`` or ``"cpu"``) that ``processes_per_node`` processes on this machine will use
    for ``device`` (``auto``, ``cpu`` or ``cuda``); ``ValueError`` when they need more GPUs than are visible.
    ``auto`` means one GPU per process when CUDA is available, else the CPU. For a launching process to check
    before it starts any worker."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {list(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    count = torch.cuda.device_count()
    if processes_per_node > count:
        raise ValueError(f"{processes_per_node} processes on this machine need one GPU each, but {count} "
                         f"{'is' if count == 1 else 'are'} visible; start at most {count} (or pass --device cpu "
                         "for gloo on the CPU)")
    return "cuda"


def local_device(device: str = "auto") -> torch.device:
    """This process's device, made current before any collective runs.

    ``auto``: GPU ``LOCAL_RANK`` when CUDA is available, else the CPU; ``cuda``: GPU ``LOCAL_RANK`` (an error
    without it); ``cpu``: the CPU. On a GPU it calls ``torch.cuda.set_device`` (NCCL binds a process to the
    current device; a collective that runs before this, e.g. an object gather, would use ``cuda:0`` on every
    rank). On the CPU it gives each of the ``LOCAL_WORLD_SIZE`` processes an equal share of the cores.
    Pass the result to ``init_process_group`` (or call ``deepspeed.init_distributed()``, which binds the same
    GPU from ``LOCAL_RANK``).
    """
    import torch

    rank = local_rank()
    kind = gpus_for_local_ranks(device, rank + 1)
    if kind == "cuda":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return torch.device("cpu")


def init_process_group(device: torch.device) -> None:
    """``torch.distributed.init_process_group`` from the launcher's environment: NCCL bound to ``device``
    (``device_id``) on a GPU, gloo on the CPU."""
    import torch.distributed as dist

    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def start_method() -> str:
    """How ``run_local`` starts workers: ``"spawn"`` where CUDA is available (a forked child cannot use CUDA
    once the parent has initialised it, and importing megatron-core may), else ``"fork"`` where the OS has
    it. Forking lets the workers inherit modules the parent imported: on 2 CPU cores the Megatron example's
    8 workers start in 28 s instead of 53 s."""
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.is_available() or "fork" not in mp.get_all_start_methods():
        return "spawn"
    return "fork"


def _child(rank: int, fn: Callable, nprocs: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs), NCCL_NVLS_ENABLE="0")
    fn(*args)


def run_local(fn: Callable, nprocs: int, *args, start_method: str = "spawn") -> None:
    """Run ``fn(*args)`` in ``nprocs`` local processes with the environment a launcher would set (one node,
    a free port on 127.0.0.1, NVLink multicast off); each process reads its rank from ``RANK``/``LOCAL_RANK``.
    ``start_method`` ``"fork"`` is safe only where CUDA is not initialised: see ``start_method()``."""
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    mp.start_processes(_child, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=True,
                       start_method=start_method)
