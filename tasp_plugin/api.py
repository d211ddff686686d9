"""Layer 6: the user-facing call, ``context_parallel_attention``."""

from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.distributed as dist

from .comm import EmulatedGroup, group_size_rank
from .engine import EngineConfig, RingAttentionFunction
from .kernels import BACKENDS, get_kernel
from .plan import schedule_for
from .schedules import RingSchedule
from .topology import CPGroups, Topology, detect_topology, resolve_topology

__all__ = ["ALGORITHMS", "TENSOR_LAYOUTS", "check_options", "context_parallel_attention"]

ALGORITHMS = ("ring", "zigzag", "hamilton", "hamilton_flat", "hamilton_multinode", "auto")
TENSOR_LAYOUTS = {"bshd": (0, 2, 1, 3), "sbhd": (1, 2, 0, 3), "bhsd": (0, 1, 2, 3)}
_warned: set[int] = set()


def _schedule(algorithm: str, topology: Topology) -> RingSchedule:
    """The schedule for ``algorithm`` (see ``plan.schedule_for``); warns once where ``hamilton`` has none."""
    plan = schedule_for(algorithm, topology)
    n = topology.world_size
    if algorithm == "hamilton" and plan.algorithm == "zigzag" and n not in _warned:
        _warned.add(n)
        warnings.warn(f"{plan.reason}; falling back to zigzag ring attention", stacklevel=3)
    return plan.schedule


@functools.lru_cache(maxsize=64)
def _auto_choice(topology: Topology, shape: tuple[int, int, int, int, int], nbytes: int, causal: bool,
                 device_name: str, interconnect: str | None) -> str:
    """The cost model's fastest schedule name for this CP group and call shape (cached per shape)."""
    from .costmodel import Problem, choose_algorithm, interconnect_for

    batch, heads, kv_heads, seq, head_dim = shape
    m = topology.gpus_per_node
    machine = (interconnect_for(topology.num_nodes, m, interconnect, device_name) if m is not None
               else interconnect_for(1, topology.world_size, interconnect, device_name))
    problem = Problem(seq * topology.world_size, heads, kv_heads, head_dim, batch, nbytes, causal)
    choice = choose_algorithm(machine, problem)
    return "zigzag" if choice.schedule == "ring" else choice.schedule


def _topology(group, n: int, algorithm: str, topology: Topology | str | None) -> Topology:
    """The CP group's topology: given, from a ``CPGroups``, or detected (one node for emulated groups, and
    where the algorithm does not depend on it)."""
    if algorithm not in ("hamilton", "hamilton_multinode", "auto") or n == 1:
        return resolve_topology(topology, n) or Topology.uniform(1, n)
    if isinstance(group, CPGroups):
        return group.topology if topology is None else resolve_topology(topology, n)
    if isinstance(group, EmulatedGroup):
        return resolve_topology(topology, n) or Topology.uniform(1, n)
    return detect_topology(group, topology)


def check_options(layout: str | None = None, algorithm: str | None = None, backend: str | None = None) -> None:
    """Raise ``ValueError`` naming the option for an unknown layout, algorithm or backend (None: not given)."""
    if layout is not None and layout not in TENSOR_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(TENSOR_LAYOUTS)}")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, algorithm: str, backend: str) -> None:
    check_options(layout, algorithm, backend)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise TypeError(f"{name} must be a 4-D tensor in layout {layout!r}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")


def _check_across_ranks(group, n: int, rank: int, tensors: tuple[torch.Tensor, ...]) -> None:
    """With ``TASP_CHECK_SHAPES=1``: all-gather shapes and dtypes so that a mismatch raises on every rank
    (naming the ranks) instead of deadlocking or silently computing garbage."""
    signature = [x for t in tensors for x in (*t.shape, t.element_size(), t.is_floating_point())]
    mine = torch.tensor(signature, dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        mine = mine.cuda()
    gathered = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(gathered, mine, group=group)
    differ = [r for r in range(n) if not torch.equal(gathered[r], gathered[0])]
    if differ:
        raise ValueError(f"q/k/v shapes or dtypes differ across the CP group: ranks {differ} differ from rank 0 "
                         f"(this is rank {rank}); every rank must pass same-shaped local shards")


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | EmulatedGroup | None = None,
                               algorithm: str = "hamilton", causal: bool = True, softmax_scale: float | None = None,
                               layout: str = "bshd", backend: str = "auto", return_lse: bool = False,
                               topology: Topology | str | None = None):
    """Attention of this rank's local query shard over the whole (sharded) sequence of the CP group.

    Inputs are local zigzag shards (``tasp_plugin.layout.shard_sequence``); returns the local output in
    the same layout (and the fp32 LSE ``[batch, heads, local_seq]`` if ``return_lse``). ``group`` is the CP
    process group, or the ``CPGroups`` of ``build_cp_groups`` (whose intra-node and rail groups then carry
    those transfers); ``topology`` overrides the detected node layout of the group (e.g. ``"2x4"``). Set
    ``TASP_CHECK_SHAPES=1`` to verify that all ranks pass the same shapes (one small all-gather).
    """
    _validate(q, k, v, layout, algorithm, backend)
    if group is None and not dist.is_initialized():
        raise ValueError("group is None and torch.distributed is not initialised: call "
                         "torch.distributed.init_process_group first or pass the CP process group as group=")
    links = group if isinstance(group, CPGroups) else None
    cp_group = links.cp if links is not None else group
    n, rank = group_size_rank(cp_group)
    if os.environ.get("TASP_CHECK_SHAPES", "0") not in ("", "0") and n > 1 and not isinstance(group, EmulatedGroup):
        _check_across_ranks(cp_group, n, rank, (q, k, v))
    perm = TENSOR_LAYOUTS[layout]
    qh, kh, vh = (t.permute(*perm).contiguous() for t in (q, k, v))
    if qh.shape[1] % kh.shape[1]:
        raise ValueError(f"Q heads ({qh.shape[1]}) must be a multiple of K/V heads ({kh.shape[1]})")
    if qh.shape[2] != kh.shape[2] or qh.shape[2] % 2:
        raise ValueError(f"local q and k/v must have the same even sequence length (global length divisible "
                         f"by 2 * cp_size), got {qh.shape[2]} and {kh.shape[2]}")
    topo = _topology(group, n, algorithm, topology)
    if algorithm == "auto" and qh.is_cuda and n > 1:
        # on GPUs "auto" asks the cost model (interconnect: $TASP_INTERCONNECT or the GPU's name)
        algorithm = _auto_choice(topo, (qh.shape[0], qh.shape[1], kh.shape[1], qh.shape[2], qh.shape[3]),
                                 qh.element_size(), causal, torch.cuda.get_device_name(qh.device),
                                 os.environ.get("TASP_INTERCONNECT") or None)
    cfg = EngineConfig(_schedule(algorithm, topo), cp_group, rank, causal,
                       "zigzag", softmax_scale if softmax_scale is not None else qh.shape[-1] ** -0.5,
                       get_kernel(backend, qh.device, qh.dtype, qh.shape[-1]), links=links)
    out, lse = RingAttentionFunction.apply(qh, kh, vh, cfg)
    inverse = [perm.index(i) for i in range(4)]
    out = out.permute(*inverse)
    return (out, lse) if return_lse else out
