"""Zigzag sharding of the sequence (identical to Megatron's ``get_batch_on_this_cp_rank``): the global
sequence is cut into ``2n`` blocks and rank ``r`` holds blocks ``r`` and ``2n-1-r``, in that order.

Packed documents (THD, the convention of Megatron-core's ``get_thd_batch_on_this_cp_rank`` and Transformer
Engine's ``thd_get_partitioned_indices``): ``cu_seqlens`` are the global *padded* cumulative document lengths,
each document a multiple of ``2n`` long and none empty; every document is cut into ``2n`` chunks and rank
``r`` holds chunks ``r`` and ``2n-1-r`` of every document, documents in order."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

__all__ = [
    "check_cu_seqlens",
    "cu_seqlens_of",
    "grouped_local_order",
    "local_cu_seqlens",
    "packed_shard_indices",
    "padded_document_lengths",
    "shard_packed",
    "shard_sequence",
    "unshard_packed",
    "unshard_sequence",
]

IntSequence = Sequence[int] | torch.Tensor


def _check(length: int, cp_size: int) -> None:
    _check_cp_size(cp_size)
    if length % (2 * cp_size):
        raise ValueError(f"sequence length {length} must be divisible by 2 * cp_size = {2 * cp_size}")


def shard_sequence(x: torch.Tensor, cp_rank: int, cp_size: int, seq_dim: int) -> torch.Tensor:
    """This rank's zigzag shard of ``x`` along ``seq_dim``."""
    _check(x.shape[seq_dim], cp_size)
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} is outside 0..{cp_size - 1}")
    blocks = x.chunk(2 * cp_size, dim=seq_dim)
    return torch.cat([blocks[cp_rank], blocks[2 * cp_size - 1 - cp_rank]], dim=seq_dim)


def unshard_sequence(shards: list[torch.Tensor], seq_dim: int) -> torch.Tensor:
    """Reassemble the global sequence from all ranks' zigzag shards (in rank order); the shards must be
    equally long and of even length along ``seq_dim`` (two halves each)."""
    n = len(shards)
    if n < 1:
        raise ValueError("unshard_sequence needs at least one shard")
    lengths = [s.shape[seq_dim] for s in shards]
    if len(set(lengths)) > 1 or lengths[0] % 2:
        raise ValueError(f"zigzag shards must have one even length along dim {seq_dim}, got lengths {lengths}")
    halves = [s.chunk(2, dim=seq_dim) for s in shards]
    order = [halves[r][0] for r in range(n)] + [halves[r][1] for r in reversed(range(n))]
    return torch.cat(order, dim=seq_dim)


# ---- packed documents (THD) ----


def _int_list(values: IntSequence, name: str) -> list[int]:
    """``values`` (1-D int32/int64 tensor or sequence of ints) as a list of ints."""
    if isinstance(values, torch.Tensor):
        if values.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an int32 or int64 tensor, got dtype {values.dtype}")
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        return [int(v) for v in values.tolist()]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a 1-D integer tensor or a sequence of ints, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool):
            raise TypeError(f"{name}[{i}] must be an int, got bool {v}")
        try:
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(f"{name}[{i}] must be an int, got {type(v).__name__} {v!r}") from None
    return out


def _check_cp_size(cp_size: int) -> None:
    """Reject a context-parallel size below one."""
    if cp_size < 1:
        raise ValueError(f"cp_size must be >= 1, got {cp_size}")


def check_cu_seqlens(cu_seqlens: IntSequence, cp_size: int, total: int | None = None) -> list[int]:
    """Validate global padded cumulative document lengths for ``cp_size`` ranks and return them as ints."""
    _check_cp_size(cp_size)
    cu = _int_list(cu_seqlens, "cu_seqlens")
    if len(cu) < 2:
        raise ValueError(f"cu_seqlens needs at least two entries (one document), got {cu}")
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu[0]}")
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:], strict=True)):
        if b <= a:
            raise ValueError(
                f"cu_seqlens must be strictly increasing (empty documents are not allowed): "
                f"document {i} has length {b - a}"
            )
        if (b - a) % (2 * cp_size):
            raise ValueError(
                f"document {i} has length {b - a}, not a multiple of 2 * cp_size = {2 * cp_size} "
                f"(pad it, see padded_document_lengths)"
            )
    if total is not None and cu[-1] != total:
        raise ValueError(f"cu_seqlens ends at {cu[-1]} but the packed sequence has {total} tokens")
    return cu


def padded_document_lengths(lengths: IntSequence, cp_size: int) -> list[int]:
    """Each document length (>= 1) rounded up to a multiple of ``2 * cp_size``."""
    _check_cp_size(cp_size)
    m = 2 * cp_size
    out = []
    for i, n in enumerate(_int_list(lengths, "lengths")):
        if n < 1:
            raise ValueError(f"document {i} has length {n}; documents must have at least one token")
        out.append(-(-n // m) * m)
    return out


def cu_seqlens_of(lengths: IntSequence) -> list[int]:
    """Cumulative sequence lengths (starting at 0) of documents of ``lengths`` (each >= 1)."""
    cu = [0]
    for i, n in enumerate(_int_list(lengths, "lengths")):
        if n < 1:
            raise ValueError(f"document {i} has length {n}; documents must have at least one token")
        cu.append(cu[-1] + n)
    return cu


def local_cu_seqlens(cu_seqlens: IntSequence, cp_size: int) -> list[int]:
    """Cumulative document lengths of every rank's local shard: each document gives ``length / cp_size`` rows."""
    return [c // cp_size for c in check_cu_seqlens(cu_seqlens, cp_size)]


def _shard_indices(cu: list[int], cp_rank: int, cp_size: int, device: torch.device | None) -> torch.Tensor:
    """Global positions of the rows of rank ``cp_rank``'s shard, for validated ``cu``."""
    starts = torch.tensor(cu[:-1], dtype=torch.int64, device=device)
    lens = torch.tensor(cu, dtype=torch.int64, device=device).diff()
    local = lens // cp_size  # rows each document contributes to every rank
    half = local // 2  # one chunk of 2 * cp_size per document
    doc = torch.repeat_interleave(torch.arange(len(lens), device=device), local)
    local_starts = torch.cumsum(local, 0) - local
    j = torch.arange(cu[-1] // cp_size, dtype=torch.int64, device=device) - local_starts[doc]
    h = half[doc]
    front = cp_rank * h + j
    back = (2 * cp_size - 1 - cp_rank) * h + (j - h)
    return starts[doc] + torch.where(j < h, front, back)


def packed_shard_indices(
    cu_seqlens: IntSequence, cp_rank: int, cp_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Global positions (int64) of rank ``cp_rank``'s rows of a packed sequence, in local order."""
    cu = check_cu_seqlens(cu_seqlens, cp_size)
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} is outside 0..{cp_size - 1}")
    return _shard_indices(cu, cp_rank, cp_size, device)


def grouped_local_order(cu_seqlens: IntSequence, cp_size: int, device: torch.device | None = None) -> torch.Tensor:
    """The engine's row order for a rank's packed shard: ``[front piece of each document | back piece of each
    document]``; entry ``i`` is the local (Megatron THD order) row that goes to position ``i``."""
    cu = check_cu_seqlens(cu_seqlens, cp_size)
    starts, fronts, backs = 0, [], []
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        h = (b - a) // (2 * cp_size)
        fronts.append(torch.arange(starts, starts + h, dtype=torch.int64, device=device))
        backs.append(torch.arange(starts + h, starts + 2 * h, dtype=torch.int64, device=device))
        starts += 2 * h
    return torch.cat(fronts + backs)


def shard_packed(x: torch.Tensor, cu_seqlens: IntSequence, cp_rank: int, cp_size: int, seq_dim: int) -> torch.Tensor:
    """This rank's part of packed sequence ``x``: chunks ``r`` and ``2n-1-r`` of each document, in order."""
    check_cu_seqlens(cu_seqlens, cp_size, total=x.shape[seq_dim])
    return x.index_select(seq_dim, packed_shard_indices(cu_seqlens, cp_rank, cp_size, device=x.device))


def unshard_packed(shards: list[torch.Tensor], cu_seqlens: IntSequence, seq_dim: int) -> torch.Tensor:
    """Reassemble the packed sequence from all ranks' ``shard_packed`` shards (in rank order)."""
    n = len(shards)
    if n < 1:
        raise ValueError("unshard_packed needs at least one shard")
    cu = check_cu_seqlens(cu_seqlens, n)
    lengths = [s.shape[seq_dim] for s in shards]
    if any(length != cu[-1] // n for length in lengths):
        raise ValueError(
            f"each of the {n} shards must have {cu[-1] // n} rows along dim {seq_dim} "
            f"(cu_seqlens ends at {cu[-1]}), got lengths {lengths}"
        )
    device = shards[0].device
    positions = torch.cat([_shard_indices(cu, r, n, device) for r in range(n)])
    return torch.cat(shards, dim=seq_dim).index_select(seq_dim, torch.argsort(positions))
