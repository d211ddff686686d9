"""Cut a batch of token windows into one context-parallel rank's zigzag shard, shifting labels first."""

from __future__ import annotations

import torch

from ..sharding import shard_sequence

__all__ = ["shard_batch_for_cp"]


def shard_batch_for_cp(tokens: torch.Tensor, cp_rank: int, cp_size: int) -> dict[str, torch.Tensor]:
    """``tokens [b, s + 1]`` -> this rank's ``input_ids``, ``labels`` (next token), ``position_ids``
    (global positions) and ``loss_mask`` (float ones), each ``[b, s / cp_size]`` in the zigzag layout.

    Labels are shifted on the full sequence before sharding, so every shard predicts the true next token.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise TypeError("tokens must be a 2-D tensor [batch, seq_len + 1]")
    seq = tokens.shape[1] - 1
    if seq < 1 or seq % (2 * cp_size):
        raise ValueError(f"tokens has seq_len + 1 = {seq + 1} columns; seq_len must be a positive multiple of "
                         f"2 * cp_size = {2 * cp_size}")
    full = {
        "input_ids": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "position_ids": torch.arange(seq, device=tokens.device).expand(tokens.shape[0], seq),
        "loss_mask": torch.ones(tokens.shape[0], seq, dtype=torch.float32, device=tokens.device),
    }
    return {name: shard_sequence(t, cp_rank, cp_size, seq_dim=1).contiguous() for name, t in full.items()}
