"""The reference system's attention API (same names and signatures) as thin adapters over the engine.

Each function returns ``(out, lse)``: ``out`` in the input layout, ``lse`` float32 ``[batch, heads, seq]``;
the ``_profile`` variants return ``(out, lse, {'total_time', 'comm_total_time', 'comp_total_time'})`` in
milliseconds. Unlike the reference they work for any world size, honour ``softmax_scale`` and are
differentiable; features the engine does not implement (dropout, sliding windows, ALiBi) raise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..comm import ProcessGroupCommunicator
from ..engine import EngineConfig, RingAttentionFunction, StepTimer
from ..kernels import get_kernel, update_out_and_lse
from ..planning import Algorithm, Sharding, Topology, resolve
from ..schedules import RingSchedule
from ..topology import detect_topology
from .seed_helpers import (
    calculate_in_mapping_circle,
    calculate_inter_node_mapping,
    calculate_intra_node_in_mapping_two_nodes,
    calculate_intra_node_out_mapping_two_nodes,
    calculate_out_mapping_circle,
    calculate_source_rank_per_iter,
    gen_hamilton_path_local,
)

__all__ = [
    "RingComm",
    "A2AComm",
    "update_out_and_lse",
    "_update_out_and_lse",
    "ring_attention_forward_flash_attn",
    "ring_attention_forward_flash_attn_profile",
    "zigzag_ring_attention_forward_flash_attn",
    "zigzag_ring_attention_forward_flash_attn_profile",
    "hamilton_attention_forward_full_flash_attn",
    "hamilton_attention_forward_full_flash_attn_profile",
    "hamilton_attention_forward_causal_flash_attn",
    "hamilton_attention_forward_causal_flash_attn_profile",
    "hamilton_attention_forward_full_flash_attn_two_nodes",
    "hamilton_attention_forward_full_flash_attn_two_nodes_profile",
]


class RingComm:
    """Send to the next rank and receive from the previous one (group order), batched and asynchronous:
    queue with ``send_recv``, launch with ``commit``, then ``wait``."""

    def __init__(self, process_group: dist.ProcessGroup | None) -> None:
        self._group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        to_global = (lambda r: dist.get_global_rank(process_group, r)) if process_group is not None else (lambda r: r)
        self.send_rank = to_global((self.rank + 1) % self.world_size)
        self.recv_rank = to_global((self.rank - 1) % self.world_size)
        self._ops: list[dist.P2POp] = []
        self._reqs: list = []

    def send_recv(self, to_send: torch.Tensor, recv_tensor: torch.Tensor | None = None) -> torch.Tensor:
        """Queue sending ``to_send`` and receiving a tensor of the same shape; returns the receive buffer."""
        recv = torch.empty_like(to_send) if recv_tensor is None else recv_tensor
        self._ops.append(dist.P2POp(dist.isend, to_send.contiguous(), self.send_rank, self._group))
        self._ops.append(dist.P2POp(dist.irecv, recv, self.recv_rank, self._group))
        return recv

    def commit(self) -> None:
        """Launch the queued transfers."""
        if self._reqs:
            raise RuntimeError("commit called twice without wait")
        self._reqs = dist.batch_isend_irecv(self._ops)

    def wait(self) -> None:
        """Block until the launched transfers finished."""
        if not self._reqs and self._ops:
            raise RuntimeError("wait called before commit")
        for req in self._reqs:
            req.wait()
        self._reqs, self._ops = [], []

    def send_recv_kv(self, k: torch.Tensor, v: torch.Tensor, k_buffer: torch.Tensor | None = None,
                     v_buffer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue and launch the exchange of K and V; ``wait`` before reading the results."""
        next_k, next_v = self.send_recv(k, k_buffer), self.send_recv(v, v_buffer)
        self.commit()
        return next_k, next_v


class A2AComm:
    """All-to-all of one tensor per peer (``send_tensors[i]`` goes to group rank ``i``), asynchronous, by
    batched point-to-point so that it runs on gloo as well as NCCL; ``wait`` completes it."""

    def __init__(self, process_group: dist.ProcessGroup | None) -> None:
        self._group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.handles: list = []

    def all_to_all(self, send_tensors: list[torch.Tensor], recv_tensors: list[torch.Tensor],
                   async_op: bool = True) -> None:
        """Post the exchange (the own slot is copied locally)."""
        if len(send_tensors) != self.world_size or len(recv_tensors) != self.world_size:
            raise ValueError(f"all_to_all needs {self.world_size} send and receive tensors")
        ops = []
        for peer in range(self.world_size):
            if peer == self.rank:
                recv_tensors[peer].copy_(send_tensors[peer])
                continue
            g = dist.get_global_rank(self._group, peer) if self._group is not None else peer
            ops.append(dist.P2POp(dist.isend, send_tensors[peer].contiguous(), g, self._group))
            ops.append(dist.P2POp(dist.irecv, recv_tensors[peer], g, self._group))
        self.handles.extend(dist.batch_isend_irecv(ops) if ops else [])
        if not async_op:
            self.wait()

    def wait(self) -> None:
        """Block until every posted exchange finished."""
        for h in self.handles:
            h.wait()
        self.handles = []


def _update_out_and_lse(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
                        block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's (private) merge under its name: the merged fp32 ``(out, lse)`` of two partial results
    over disjoint keys (``[B, H, L, D]`` and ``[B, H, L]``), as ``update_out_and_lse``."""
    return update_out_and_lse(out, lse, block_out, block_lse)


_Group = dist.ProcessGroup | None
_Mapping2D = Sequence[Sequence[int]]
_Timings = dict[str, float]


def _unsupported(dropout_p: float, window_size: Sequence[int] = (-1, -1),
                 alibi_slopes: torch.Tensor | None = None) -> None:
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p} is not supported (attention dropout is not implemented)")
    if tuple(window_size) != (-1, -1):
        raise ValueError(f"window_size={window_size} is not supported (sliding windows are not implemented)")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes is not supported")


def _run(process_group: _Group, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, schedule: RingSchedule,
         causal: bool, sharding: Sharding, softmax_scale: float | None, seq_dim: int,
         timer: StepTimer | None) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k/v in ``[B, S, H, D]`` (seq_dim 1) or ``[B, H, S, D]`` (seq_dim 2) -> (out, lse)."""

    def to_bhsd(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2) if seq_dim == 1 else t

    qh, kh, vh = to_bhsd(q).contiguous(), to_bhsd(k), to_bhsd(v)
    if kh.shape != vh.shape or qh.shape[2] != kh.shape[2] or qh.shape[2] % 2:
        raise ValueError(f"q, k and v must have the same even local sequence length (and k, v one shape), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    cfg = EngineConfig.create(schedule=schedule, comm=ProcessGroupCommunicator(process_group),
                              kernel=get_kernel("auto", qh.device, qh.dtype, qh.shape[-1]), head_dim=qh.shape[-1],
                              causal=causal, sharding=sharding, softmax_scale=softmax_scale, hook=timer)
    out, lse = RingAttentionFunction.apply(qh, kh, vh, cfg)
    return to_bhsd(out), lse


def _ring(process_group: _Group, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float | None,
          dropout_p: float, causal: bool, window_size: Sequence[int], alibi_slopes: torch.Tensor | None,
          sharding: Sharding, timer: StepTimer | None) -> tuple[torch.Tensor, torch.Tensor]:
    _unsupported(dropout_p, window_size, alibi_slopes)
    n = dist.get_world_size(process_group)
    schedule = resolve(Algorithm.RING, Topology.uniform(1, n)).schedule
    return _run(process_group, q, k, v, schedule, causal, sharding, softmax_scale, 1, timer)


def ring_attention_forward_flash_attn(process_group: _Group, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                      softmax_scale: float | None, dropout_p: float = 0, causal: bool = False,
                                      window_size: Sequence[int] = (-1, -1),
                                      alibi_slopes: torch.Tensor | None = None,
                                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention on contiguous shards ``[B, S_local, H, D]`` (rank r holds block r)."""
    return _ring(process_group, q, k, v, softmax_scale, dropout_p, causal, window_size, alibi_slopes,
                 Sharding.CONTIGUOUS, None)


def ring_attention_forward_flash_attn_profile(process_group: _Group, q: torch.Tensor, k: torch.Tensor,
                                              v: torch.Tensor, softmax_scale: float | None, dropout_p: float = 0,
                                              world_size: int = 8, causal: bool = False,
                                              window_size: Sequence[int] = (-1, -1),
                                              alibi_slopes: torch.Tensor | None = None,
                                              deterministic: bool = False
                                              ) -> tuple[torch.Tensor, torch.Tensor, _Timings]:
    """:func:`ring_attention_forward_flash_attn` plus per-call timings."""
    timer = StepTimer(q.device)
    out, lse = _ring(process_group, q, k, v, softmax_scale, dropout_p, causal, window_size, alibi_slopes,
                     Sharding.CONTIGUOUS, timer)
    return out, lse, timer.summary()


def zigzag_ring_attention_forward_flash_attn(process_group: _Group, q: torch.Tensor, k: torch.Tensor,
                                             v: torch.Tensor, softmax_scale: float | None, dropout_p: float = 0,
                                             causal: bool = True, window_size: Sequence[int] = (-1, -1),
                                             alibi_slopes: torch.Tensor | None = None,
                                             deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Zigzag ring attention on zigzag shards ``[B, S_local, H, D]`` (blocks r and 2n-1-r)."""
    return _ring(process_group, q, k, v, softmax_scale, dropout_p, causal, window_size, alibi_slopes,
                 Sharding.ZIGZAG, None)


def zigzag_ring_attention_forward_flash_attn_profile(process_group: _Group, q: torch.Tensor, k: torch.Tensor,
                                                     v: torch.Tensor, softmax_scale: float | None,
                                                     dropout_p: float = 0, causal: bool = True,
                                                     window_size: Sequence[int] = (-1, -1),
                                                     alibi_slopes: torch.Tensor | None = None,
                                                     deterministic: bool = False
                                                     ) -> tuple[torch.Tensor, torch.Tensor, _Timings]:
    """:func:`zigzag_ring_attention_forward_flash_attn` plus per-call timings."""
    timer = StepTimer(q.device)
    out, lse = _ring(process_group, q, k, v, softmax_scale, dropout_p, causal, window_size, alibi_slopes,
                     Sharding.ZIGZAG, timer)
    return out, lse, timer.summary()


def _flat_or_ring(n: int) -> RingSchedule:
    """The flat K_n schedule (zigzag ring for n = 4, 6, where none exists), whatever the topology."""
    return resolve("hamilton", Topology.uniform(1, n)).schedule


def _hamilton_schedule(process_group: _Group, world_size: int, looping: _Mapping2D | None,
                       out_mapping: _Mapping2D | None, in_mapping: _Mapping2D | None,
                       source_rank_per_iter: Sequence[Sequence[Sequence[bool]]] | None = None) -> RingSchedule:
    n = dist.get_world_size(process_group)
    if world_size != n:
        raise ValueError(f"world_size={world_size} but the process group has {n} ranks")
    schedule = RingSchedule.from_cycles(looping, "hamilton_flat") if looping is not None else _flat_or_ring(n)
    if out_mapping is not None and [list(r) for r in out_mapping] != calculate_out_mapping_circle(schedule.cycles):
        raise ValueError("out_mapping does not match looping (it must be calculate_out_mapping_circle(looping))")
    if in_mapping is not None and [list(r) for r in in_mapping] != calculate_in_mapping_circle(schedule.cycles):
        raise ValueError("in_mapping does not match looping (it must be calculate_in_mapping_circle(looping))")
    if source_rank_per_iter is not None and [[list(x) for x in r] for r in source_rank_per_iter] != \
            calculate_source_rank_per_iter(schedule.cycles):
        raise ValueError("source_rank_per_iter does not match looping "
                         "(it must be calculate_source_rank_per_iter(looping))")
    return schedule


def _seq_dim(layout: str) -> int:
    if layout not in ("BSND", "BNSD"):
        raise ValueError(f"layout must be 'BSND' or 'BNSD', got {layout!r}")
    return 1 if layout == "BSND" else 2


def _join_chunks(chunks: Sequence[torch.Tensor], seq_dim: int, causal: bool) -> torch.Tensor:
    """The reference passes K/V as a list of chunks; causal chunk j is (front part j, back part j)."""
    if not causal:
        return torch.cat(list(chunks), dim=seq_dim)
    halves = [c.chunk(2, dim=seq_dim) for c in chunks]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=seq_dim)


def _hamilton(process_group: _Group, q: torch.Tensor, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
              softmax_scale0: float | None, dropout_p: float, world_size: int, looping: _Mapping2D | None,
              out_mapping: _Mapping2D | None, in_mapping: _Mapping2D | None, layout: str, causal: bool,
              timer: StepTimer | None, source_rank_per_iter: Sequence[Sequence[Sequence[bool]]] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    _unsupported(dropout_p)
    seq_dim = _seq_dim(layout)
    schedule = _hamilton_schedule(process_group, world_size, looping, out_mapping, in_mapping, source_rank_per_iter)
    kk, vv = _join_chunks(k, seq_dim, causal), _join_chunks(v, seq_dim, causal)
    return _run(process_group, q, kk, vv, schedule, causal, Sharding.ZIGZAG, softmax_scale0, seq_dim, timer)


def hamilton_attention_forward_full_flash_attn(process_group: _Group, q: torch.Tensor, k: Sequence[torch.Tensor],
                                               v: Sequence[torch.Tensor], softmax_scale0: float | None,
                                               dropout_p: float = 0, world_size: int = 8,
                                               looping: _Mapping2D | None = None, out_mapping: _Mapping2D | None = None,
                                               in_mapping: _Mapping2D | None = None,
                                               layout: str = "BSND") -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal Hamilton attention; ``k``/``v`` are lists of the local K/V chunks (any number)."""
    return _hamilton(process_group, q, k, v, softmax_scale0, dropout_p, world_size, looping, out_mapping,
                     in_mapping, layout, False, None)


def hamilton_attention_forward_full_flash_attn_profile(process_group: _Group, q: torch.Tensor,
                                                       k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                                                       softmax_scale0: float | None, dropout_p: float = 0,
                                                       world_size: int = 8, looping: _Mapping2D | None = None,
                                                       out_mapping: _Mapping2D | None = None,
                                                       in_mapping: _Mapping2D | None = None, layout: str = "BSND"
                                                       ) -> tuple[torch.Tensor, torch.Tensor, _Timings]:
    """:func:`hamilton_attention_forward_full_flash_attn` plus per-call timings."""
    timer = StepTimer(q.device)
    out, lse = _hamilton(process_group, q, k, v, softmax_scale0, dropout_p, world_size, looping, out_mapping,
                         in_mapping, layout, False, timer)
    return out, lse, timer.summary()


def hamilton_attention_forward_causal_flash_attn(process_group: _Group, q: torch.Tensor, k: Sequence[torch.Tensor],
                                                 v: Sequence[torch.Tensor], softmax_scale0: float | None,
                                                 dropout_p: float = 0, world_size: int = 8,
                                                 looping: _Mapping2D | None = None,
                                                 out_mapping: _Mapping2D | None = None,
                                                 in_mapping: _Mapping2D | None = None,
                                                 source_rank_per_iter: Sequence[Sequence[Sequence[bool]]] | None = None,
                                                 layout: str = "BSND") -> tuple[torch.Tensor, torch.Tensor]:
    """Causal Hamilton attention on zigzag shards; ``k[j]``/``v[j]`` = (front part j, back part j)."""
    return _hamilton(process_group, q, k, v, softmax_scale0, dropout_p, world_size, looping, out_mapping,
                     in_mapping, layout, True, None, source_rank_per_iter)


def hamilton_attention_forward_causal_flash_attn_profile(process_group: _Group, q: torch.Tensor,
                                                         k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                                                         softmax_scale0: float | None, dropout_p: float = 0,
                                                         world_size: int = 8, looping: _Mapping2D | None = None,
                                                         out_mapping: _Mapping2D | None = None,
                                                         in_mapping: _Mapping2D | None = None,
                                                         source_rank_per_iter: Sequence[Sequence[Sequence[bool]]]
                                                         | None = None,
                                                         layout: str = "BSND"
                                                         ) -> tuple[torch.Tensor, torch.Tensor, _Timings]:
    """:func:`hamilton_attention_forward_causal_flash_attn` plus per-call timings."""
    timer = StepTimer(q.device)
    out, lse = _hamilton(process_group, q, k, v, softmax_scale0, dropout_p, world_size, looping, out_mapping,
                         in_mapping, layout, True, timer, source_rank_per_iter)
    return out, lse, timer.summary()


def _two_nodes(process_group: _Group, q: torch.Tensor, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
               softmax_scale0: float | None, dropout_p: float, inter_in_mapping: _Mapping2D | None,
               inter_out_mapping: _Mapping2D | None, out_mapping: _Mapping2D | None, in_mapping: _Mapping2D | None,
               layout: str, timer: StepTimer | None) -> tuple[torch.Tensor, torch.Tensor]:
    _unsupported(dropout_p)
    seq_dim = _seq_dim(layout)
    topology = detect_topology(process_group)
    schedule = resolve("hamilton_multinode", topology).schedule
    gpus_per_node = topology.gpus_per_node
    assert gpus_per_node is not None  # resolve() rejects nodes of unequal size for hamilton_multinode
    path0 = gen_hamilton_path_local(gpus_per_node)
    if schedule.node_ids and (inter_in_mapping is not None or inter_out_mapping is not None):
        raise ValueError("inter_in_mapping / inter_out_mapping describe nodes of consecutive ranks; this group's "
                         f"nodes {topology.nodes} are not, so leave them None")
    checks: list[tuple[str, _Mapping2D | None, _Mapping2D]] = []
    if not schedule.node_ids:  # otherwise the inter-node mappings are None (checked above)
        inter_in, inter_out = calculate_inter_node_mapping(schedule.cycles)
        checks += [("inter_in_mapping", inter_in_mapping, inter_in),
                   ("inter_out_mapping", inter_out_mapping, inter_out)]
    checks += [("out_mapping", out_mapping, calculate_intra_node_out_mapping_two_nodes(path0)),
               ("in_mapping", in_mapping, calculate_intra_node_in_mapping_two_nodes(path0))]
    for name, given, expected in checks:
        if given is not None and [tuple(x) if isinstance(x, (list, tuple)) else x for x in given] != \
                [tuple(x) if isinstance(x, (list, tuple)) else x for x in expected]:
            raise ValueError(f"{name} does not match the multi-node schedule of this {topology} group "
                             f"(leave it None, or pass the value the seed helpers compute)")
    kk, vv = _join_chunks(k, seq_dim, False), _join_chunks(v, seq_dim, False)
    return _run(process_group, q, kk, vv, schedule, False, Sharding.ZIGZAG, softmax_scale0, seq_dim, timer)


def hamilton_attention_forward_full_flash_attn_two_nodes(process_group: _Group, q: torch.Tensor,
                                                         k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                                                         softmax_scale0: float | None, dropout_p: float = 0,
                                                         inter_in_mapping: _Mapping2D | None = None,
                                                         inter_out_mapping: _Mapping2D | None = None,
                                                         out_mapping: _Mapping2D | None = None,
                                                         in_mapping: _Mapping2D | None = None,
                                                         layout: str = "BSND") -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal multi-node Hamilton attention ((m-K_m-m)^u cycles, any node count >= 2); the node
    topology comes from ``$TASP_TOPOLOGY`` or the launcher. ``k``/``v`` are lists of the local chunks."""
    return _two_nodes(process_group, q, k, v, softmax_scale0, dropout_p, inter_in_mapping, inter_out_mapping,
                      out_mapping, in_mapping, layout, None)


def hamilton_attention_forward_full_flash_attn_two_nodes_profile(process_group: _Group, q: torch.Tensor,
                                                                 k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                                                                 softmax_scale0: float | None, dropout_p: float = 0,
                                                                 inter_in_mapping: _Mapping2D | None = None,
                                                                 inter_out_mapping: _Mapping2D | None = None,
                                                                 out_mapping: _Mapping2D | None = None,
                                                                 in_mapping: _Mapping2D | None = None,
                                                                 layout: str = "BSND"
                                                                 ) -> tuple[torch.Tensor, torch.Tensor, _Timings]:
    """:func:`hamilton_attention_forward_full_flash_attn_two_nodes` plus per-call timings."""
    timer = StepTimer(q.device)
    out, lse = _two_nodes(process_group, q, k, v, softmax_scale0, dropout_p, inter_in_mapping, inter_out_mapping,
                          out_mapping, in_mapping, layout, timer)
    return out, lse, timer.summary()
