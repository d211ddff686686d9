"""Zigzag sharding of the sequence (identical to Megatron's ``get_batch_on_this_cp_rank``): the global
sequence is cut into ``2n`` blocks and rank ``r`` holds blocks ``r`` and ``2n-1-r``, in that order."""

from __future__ import annotations

import torch

__all__ = ["shard_sequence", "unshard_sequence"]


def _check(length: int, cp_size: int) -> None:
    if cp_size < 1:
        raise ValueError(f"cp_size must be >= 1, got {cp_size}")
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
