"""The user-facing call, ``context_parallel_attention``: validates, resolves the group to a communicator
and the algorithm to a schedule, then hands both to the engine."""

from __future__ import annotations

import functools
import os
import warnings
from typing import Literal, overload

import torch
import torch.distributed as dist

from .comm import Communicator, ProcessGroupCommunicator, as_communicator
from .engine import EngineConfig, RingAttentionFunction
from .kernels import BACKENDS, get_kernel
from .planning import Algorithm, Layout, Resolution, Topology, parse_choice, resolve
from .topology import CPGroups, resolve_topology

__all__ = ["auto_algorithm", "check_options", "context_parallel_attention"]

_warned: set[int] = set()


def _resolution(algorithm: Algorithm, topology: Topology) -> Resolution:
    """``planning.resolve``, warning once per group size where ``hamilton`` has no schedule."""
    res = resolve(algorithm, topology)
    n = topology.world_size
    if res.fell_back and res.requested is Algorithm.HAMILTON and n not in _warned:
        _warned.add(n)
        warnings.warn(f"{res.reason}; falling back to zigzag ring attention", stacklevel=3)
    return res


@functools.lru_cache(maxsize=64)
def auto_algorithm(topology: Topology, shape: tuple[int, int, int, int, int], nbytes: int, causal: bool,
                   device_name: str, interconnect: str | None) -> Algorithm:
    """What ``algorithm="auto"`` runs on GPUs: the cost model's fastest concrete algorithm for this CP group
    and call shape ``(batch, heads, kv_heads, local_seq, head_dim)`` (cached per shape)."""
    from .costmodel import Problem, choose_algorithm, interconnect_for

    batch, heads, kv_heads, seq, head_dim = shape
    m = topology.gpus_per_node
    machine = (interconnect_for(topology.num_nodes, m, interconnect, device_name) if m is not None
               else interconnect_for(1, topology.world_size, interconnect, device_name))
    problem = Problem(seq * topology.world_size, heads, kv_heads, head_dim, batch, nbytes, causal)
    return choose_algorithm(machine, problem).schedule


_NEEDS_TOPOLOGY = (Algorithm.HAMILTON, Algorithm.HAMILTON_MULTINODE, Algorithm.AUTO)


def _topology(comm: Communicator, algorithm: Algorithm, override: Topology | str | None) -> Topology:
    """The CP group's topology, detected only where the algorithm depends on it."""
    if algorithm not in _NEEDS_TOPOLOGY or comm.size == 1:
        return resolve_topology(override, comm.size) or Topology.uniform(1, comm.size)
    return comm.topology(override)


def check_options(layout: str | None = None, algorithm: str | None = None, backend: str | None = None) -> None:
    """Raise ``ValueError`` naming the option for an unknown layout, algorithm or backend (None: not given)."""
    if layout is not None:
        parse_choice(Layout, layout, "layout")
    if algorithm is not None:
        parse_choice(Algorithm, algorithm, "algorithm")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise TypeError(f"{name} must be a 4-D tensor in layout {layout!r}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")


def _check_across_ranks(comm: Communicator, tensors: tuple[torch.Tensor, ...]) -> None:
    """With ``TASP_CHECK_SHAPES=1``: all-gather shapes and dtypes so that a mismatch raises on every rank
    (naming the ranks) instead of deadlocking or silently computing garbage."""
    if not isinstance(comm, ProcessGroupCommunicator):
        return
    signature = [x for t in tensors for x in (*t.shape, t.element_size(), t.is_floating_point())]
    mine = torch.tensor(signature, dtype=torch.int64)
    if comm.backend == "nccl":
        mine = mine.cuda()
    gathered = [torch.empty_like(mine) for _ in range(comm.size)]
    dist.all_gather(gathered, mine, group=comm.group)
    differ = [r for r in range(comm.size) if not torch.equal(gathered[r], gathered[0])]
    if differ:
        raise ValueError(f"q/k/v shapes or dtypes differ across the CP group: ranks {differ} differ from rank 0 "
                         f"(this is rank {comm.rank}); every rank must pass same-shaped local shards")


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: Literal[False] = False,
                               topology: Topology | str | None = None) -> torch.Tensor: ...


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: Literal[True],
                               topology: Topology | str | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: bool = False, topology: Topology | str | None = None
                               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: bool = False,
                               topology: Topology | str | None = None
                               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's local query shard over the whole (sharded) sequence of the CP group.

    Inputs are local zigzag shards (``tasp_plugin.sharding.shard_sequence``) in ``layout`` (dimension
    order, see ``planning.Layout``); returns the local output in the same layout (and the fp32 LSE
    ``[batch, heads, local_seq]`` if ``return_lse``). ``group`` is the CP process group, or the ``CPGroups``
    of ``build_cp_groups`` (whose intra-node and rail groups then carry those transfers); ``topology``
    overrides the detected topology of the group (e.g. ``"2x4"``). Set ``TASP_CHECK_SHAPES=1`` to verify
    that all ranks pass the same shapes (one small all-gather).
    """
    check_options(layout, algorithm, backend)
    chosen = parse_choice(Algorithm, algorithm, "algorithm")
    dims = parse_choice(Layout, layout, "layout")
    _validate(q, k, v, dims.value)
    comm = as_communicator(group)
    if os.environ.get("TASP_CHECK_SHAPES", "0") not in ("", "0") and comm.size > 1:
        _check_across_ranks(comm, (q, k, v))
    perm = dims.to_bhsd
    qh = q.permute(*perm).contiguous()
    kh, vh = k.permute(*perm), v.permute(*perm)
    if qh.shape[1] % kh.shape[1]:
        raise ValueError(f"Q heads ({qh.shape[1]}) must be a multiple of K/V heads ({kh.shape[1]})")
    if qh.shape[2] != kh.shape[2] or qh.shape[2] % 2:
        raise ValueError(f"local q and k/v must have the same even sequence length (global length divisible "
                         f"by 2 * cp_size), got {qh.shape[2]} and {kh.shape[2]}")
    topo = _topology(comm, chosen, topology)
    if chosen is Algorithm.AUTO and qh.is_cuda and comm.size > 1:
        # on GPUs "auto" asks the cost model (interconnect: $TASP_INTERCONNECT or the GPU's name)
        chosen = auto_algorithm(topo, (qh.shape[0], qh.shape[1], kh.shape[1], qh.shape[2], qh.shape[3]),
                                qh.element_size(), causal, torch.cuda.get_device_name(qh.device),
                                os.environ.get("TASP_INTERCONNECT") or None)
    cfg = EngineConfig.create(schedule=_resolution(chosen, topo).schedule, comm=comm,
                              kernel=get_kernel(backend, qh.device, qh.dtype, qh.shape[-1]), head_dim=qh.shape[-1],
                              causal=causal, softmax_scale=softmax_scale)
    out, lse = RingAttentionFunction.apply(qh, kh, vh, cfg)
    inverse = [perm.index(i) for i in range(4)]
    out = out.permute(*inverse)
    return (out, lse) if return_lse else out
