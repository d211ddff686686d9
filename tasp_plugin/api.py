"""The user-facing call, ``context_parallel_attention``: validates, resolves the group to a communicator
and the algorithm to a schedule, then hands both to the engine."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.distributed as dist

from .checks import (
    TRANSPORT_ENV,
    agree_across_ranks,
    check_call,
    check_hybrid,
    check_options,
    check_packed,
    fingerprint,
    gpu_name,
)
from .comm import Communicator, PeerMemory, SubCommunicator, as_communicator
from .engine import EngineConfig, RingAttentionFunction, heads_to_seq, seq_to_heads
from .kernels import get_kernel
from .planning import Algorithm, HybridLayout, Layout, PackedLayout, Resolution, Topology, resolve
from .sharding import grouped_local_order
from .topology import CPGroups, resolve_topology

__all__ = ["auto_algorithm", "check_options", "context_parallel_attention"]

_warned: set[Hashable] = set()


def _resolution(comm: Communicator, algorithm: Algorithm, topology: Topology) -> Resolution:
    """``planning.resolve``, warning once per process group where ``hamilton`` has no schedule."""
    res = resolve(algorithm, topology)
    if res.fell_back and res.requested is Algorithm.HAMILTON and comm.key not in _warned:
        _warned.add(comm.key)
        n = topology.world_size
        warnings.warn(f"algorithm 'hamilton' is falling back to zigzag ring attention on this group of {n} "
                      f"ranks, since K_{n} has no Hamiltonian decomposition", stacklevel=3)
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


def _peer_memory(comm: Communicator, transport: str, override: Topology | str | None,
                 q: torch.Tensor) -> PeerMemory | None:
    """The group's symmetric memory when K/V travel by copy-engine pulls (``peer_copy``: opt-in, measured no
    faster than NCCL on 2 H200s, docs/BENCHMARKS.md). Raises, on every rank alike, if the group cannot have
    it: not an NCCL group of CUDA devices on one node (the topology is detected here, whatever the
    algorithm), or no symmetric memory in this torch."""
    if transport != "peer_copy" or comm.size == 1:
        return None
    peer = comm.peer_memory(q.device) if comm.topology(override).num_nodes == 1 else None
    if peer is None:
        raise ValueError(f"${TRANSPORT_ENV}=peer_copy needs an NCCL group on CUDA devices of one node with torch's "
                         "symmetric memory; use auto, p2p or all_to_all")
    return peer


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: Literal[False] = False,
                               topology: Topology | str | None = None,
                               cu_seqlens: Sequence[int] | torch.Tensor | None = None,
                               ulysses_size: int = 1) -> torch.Tensor: ...


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: Literal[True],
                               topology: Topology | str | None = None,
                               cu_seqlens: Sequence[int] | torch.Tensor | None = None, ulysses_size: int = 1
                               ) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: bool = False, topology: Topology | str | None = None,
                               cu_seqlens: Sequence[int] | torch.Tensor | None = None, ulysses_size: int = 1
                               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               group: dist.ProcessGroup | CPGroups | Communicator | None = None,
                               algorithm: Algorithm | str = Algorithm.HAMILTON, causal: bool = True,
                               softmax_scale: float | None = None, layout: Layout | str = Layout.BSHD,
                               backend: str = "auto", return_lse: bool = False,
                               topology: Topology | str | None = None,
                               cu_seqlens: Sequence[int] | torch.Tensor | None = None, ulysses_size: int = 1
                               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's local query shard over the whole (sharded) sequence of the CP group.

    Inputs are local zigzag shards (``tasp_plugin.sharding.shard_sequence``) in ``layout`` (dimension
    order, see ``planning.Layout``); returns the local output in the same layout (and the fp32 LSE
    ``[batch, heads, local_seq]`` if ``return_lse``). ``group`` is the CP process group, or the ``CPGroups``
    of ``build_cp_groups`` (whose intra-node and rail groups then carry those transfers); ``topology``
    overrides the detected topology of the group (e.g. ``"2x4"``). Arguments are checked before anything is
    sent, and the ranks check once per group and call shape that they all make the same call
    (``tasp_plugin.checks``; ``TASP_CHECK_SHAPES=1``: on every call).

    Packed documents: ``layout="thd"`` (``[tokens, heads, head_dim]``, this rank's rows in the order of
    ``sharding.shard_packed``) and ``cu_seqlens``, the global cumulative document lengths (padded: every
    document a multiple of 2 x CP size; the same on every rank). Attention stays inside each document; the
    LSE is ``[heads, tokens]``.

    Head x sequence hybrid: ``ulysses_size=u > 1`` splits the CP group into all-to-all groups of ``u``
    consecutive ranks and ring groups of ``n / u`` (``planning.HybridLayout``): an all-to-all swaps the
    sequence shards of ``u`` ranks for ``1 / u`` of the heads, ``algorithm`` runs over the ring group, and a
    second all-to-all brings the output back. ``u`` must divide the CP size and the query heads; the K/V heads
    must divide ``u`` (they are then repeated) or be divisible by it. The inputs stay zigzag shards over the
    whole CP group.
    """
    error: Exception | None = None
    mine = None
    try:
        options = check_call(q, k, v, algorithm=algorithm, causal=causal, softmax_scale=softmax_scale,
                             layout=layout, backend=backend, return_lse=return_lse, ulysses_size=ulysses_size)
    except (TypeError, ValueError) as exc:
        error = exc
    try:
        comm = as_communicator(group)
    except (TypeError, ValueError):
        if error is not None:
            raise error from None
        raise
    if error is None:
        try:
            resolve_topology(topology, comm.size)
            kernel = get_kernel(options.backend, q.device, q.dtype, q.shape[-1])
            packed = check_packed(options.layout, cu_seqlens, q, comm.size)
            hybrid = check_hybrid(options, q, k, comm.size)
            mine = fingerprint(options, q, k, v, topology, packed)
        except (TypeError, ValueError) as exc:
            error = exc
    # nothing has been sent yet: the ranks fail together here or agree on the call
    agree_across_ranks(comm, mine, error)
    perm = options.layout.to_bhsd
    if packed is not None:  # [1, heads, tokens, dim] in sharding.shard_packed's row order
        qh, kh, vh = (x.unsqueeze(0).permute(*perm) for x in (q, k, v))
    else:
        qh = q.permute(*perm).contiguous()
        kh, vh = k.permute(*perm), v.permute(*perm)
    chosen = options.algorithm
    stage: _UlyssesStage | None = None
    if hybrid is not None:
        stage = _UlyssesStage.of(comm, hybrid, packed, qh)
        # every rank resolves every ring group's schedule before the first all-to-all, so that a group
        # without a schedule fails on all ranks alike instead of stranding the others in the exchange
        chosen, topo = _hybrid_schedule(stage, chosen, topology, qh, kh, options.causal)
        comm = stage.ring
        qh, kh, vh = stage.to_heads(qh, kh, vh)
    else:
        topo = _topology(comm, chosen, topology)
    if packed is not None:  # rows grouped [front pieces | back pieces] for the engine
        order, back = _grouped_order(packed, comm.size, q.device)
        qh, kh, vh = (x.index_select(2, order) for x in (qh, kh, vh))
    if chosen is Algorithm.AUTO and qh.is_cuda and comm.size > 1:
        # on GPUs "auto" asks the cost model (interconnect: $TASP_INTERCONNECT or the GPU's name)
        chosen = auto_algorithm(topo, (qh.shape[0], qh.shape[1], kh.shape[1], qh.shape[2], qh.shape[3]),
                                qh.element_size(), options.causal, gpu_name(qh.device.index),
                                os.environ.get("TASP_INTERCONNECT") or None)
    cfg = EngineConfig.create(schedule=_resolution(comm, chosen, topo).schedule, comm=comm, kernel=kernel,
                              head_dim=qh.shape[-1], causal=options.causal, softmax_scale=options.softmax_scale,
                              transport=options.transport, peer=_peer_memory(comm, options.transport, topology, qh),
                              packed=None if packed is None else PackedLayout.from_cu_seqlens(packed, comm.size))
    out, lse = RingAttentionFunction.apply(qh, kh, vh, cfg)
    if packed is not None:
        out, lse = out.index_select(2, back), lse.index_select(2, back)
    if stage is not None:
        out = stage.to_seq(out)
        lse = stage.to_seq(lse.unsqueeze(-1)).squeeze(-1) if options.return_lse else lse
    out = out.permute(*[perm.index(i) for i in range(4)])
    if packed is not None:
        out, lse = out[0], lse[0]
    return (out, lse) if options.return_lse else out


@dataclass(frozen=True)
class _UlyssesStage:
    """The all-to-all around the engine of a hybrid call: its group, the ring group, and the row order that
    makes the gathered rows the ring group's zigzag shard (per document when packed)."""

    a2a: Communicator
    ring: Communicator
    hybrid: HybridLayout
    order: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def of(cls, comm: Communicator, hybrid: HybridLayout, packed: tuple[int, ...] | None,
           q: torch.Tensor) -> _UlyssesStage:
        order, inverse = _gather_order(hybrid, _local_lengths(packed, comm.size, q.shape[2]), q.device)
        return cls(SubCommunicator(comm, hybrid.a2a_members(comm.rank)),
                   SubCommunicator(comm, hybrid.ring_members(comm.rank)), hybrid, order, inverse)

    def to_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q/k/v ``[b, h / u, u * s, d]`` after the all-to-all (K/V heads repeated first where fewer than u)."""
        repeats = self.hybrid.kv_repeats(q.shape[1], k.shape[1])
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        q, k, v = (seq_to_heads(x, self.a2a, self.order, self.inverse) for x in (q, k, v))
        return q, k, v

    def to_seq(self, y: torch.Tensor) -> torch.Tensor:
        return heads_to_seq(y, self.a2a, self.order, self.inverse)


def _hybrid_schedule(stage: _UlyssesStage, chosen: Algorithm, override: Topology | str | None, q: torch.Tensor,
                     k: torch.Tensor, causal: bool) -> tuple[Algorithm, Topology]:
    """The algorithm and this rank's ring-group topology of a hybrid call, after resolving the schedule of
    every ring group from the CP group's topology (detected on every rank alike: all take this path), and
    a one-time warning where an all-to-all group spans nodes."""
    assert isinstance(stage.ring, SubCommunicator)
    parent, hybrid = stage.ring.parent, stage.hybrid
    whole = parent.topology(override)
    rings, span = _ring_topologies(hybrid, whole)
    if span > 1 and (parent.key, "a2a") not in _warned:
        _warned.add((parent.key, "a2a"))
        warnings.warn(f"ulysses_size {hybrid.ulysses}: all-to-all groups of consecutive CP ranks span up to "
                      f"{span} nodes; use a ulysses_size that divides the GPUs per node (node-contiguous "
                      "CP ranks)", stacklevel=3)
    mine = rings[parent.rank % hybrid.ulysses]
    if chosen is Algorithm.AUTO and q.is_cuda and hybrid.ring > 1:
        u, kv = hybrid.ulysses, k.shape[1] * hybrid.kv_repeats(q.shape[1], k.shape[1])
        chosen = auto_algorithm(mine, (q.shape[0], q.shape[1] // u, kv // u, q.shape[2] * u, q.shape[3]),
                                q.element_size(), causal, gpu_name(q.device.index),
                                os.environ.get("TASP_INTERCONNECT") or None)
    for ring in rings:
        _resolution(stage.ring, chosen, ring)
    return chosen, mine


@functools.lru_cache(maxsize=64)
def _ring_topologies(hybrid: HybridLayout, whole: Topology) -> tuple[tuple[Topology, ...], int]:
    """Every ring group's topology and the all-to-all groups' node span (cached: pure, asked every call)."""
    return hybrid.ring_topologies(whole), hybrid.a2a_node_span(whole)


def _local_lengths(packed: tuple[int, ...] | None, cp_size: int, rows: int) -> tuple[int, ...]:
    """One rank's rows per document (the whole local sequence when nothing is packed)."""
    if packed is None:
        return (rows,)
    return tuple((b - a) // cp_size for a, b in zip(packed[:-1], packed[1:], strict=False))


@functools.lru_cache(maxsize=64)
def _gather_order(hybrid: HybridLayout, lengths: tuple[int, ...], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``HybridLayout.gather_order`` as an index tensor on ``device``, and its inverse (cached)."""
    order = torch.tensor(hybrid.gather_order(lengths), dtype=torch.long, device=device)
    return order, torch.argsort(order)


@functools.lru_cache(maxsize=64)
def _grouped_order(cu: tuple[int, ...], cp_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's row order of this rank's packed rows and its inverse (cached per documents and device)."""
    order = grouped_local_order(cu, cp_size, device)
    return order, torch.argsort(order)
