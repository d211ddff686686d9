"""Start a job's processes on this machine when no launcher (torchrun, deepspeed) did: the examples and
``tasp bench`` run the same code under a launcher or on their own."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

__all__ = ["free_port", "launched", "run_local"]


def launched() -> bool:
    """True inside a process started by a launcher (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, fn: Callable, nprocs: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs), NCCL_NVLS_ENABLE="0")
    fn(*args)


def run_local(fn: Callable, nprocs: int, *args, start_method: str = "spawn") -> None:
    """Run ``fn(*args)`` in ``nprocs`` local processes with the environment a launcher would set (one node,
    a free port on 127.0.0.1, NVLink multicast off); each process reads its rank from ``RANK``/``LOCAL_RANK``."""
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    mp.start_processes(_child, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=True,
                       start_method=start_method)
