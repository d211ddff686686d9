"""Cut a batch of token windows into one context-parallel rank's zigzag shard, shifting labels first; or,
for packed documents, into its per-document shard of one packed row."""

from __future__ import annotations

import torch

from ..sharding import cu_seqlens_of, padded_document_lengths, shard_packed, shard_sequence

__all__ = ["packed_batch_for_cp", "shard_batch_for_cp"]


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


def packed_batch_for_cp(tokens: torch.Tensor, eod: int, cp_rank: int, cp_size: int) -> dict[str, torch.Tensor]:
    """``tokens [b, s + 1]`` as packed documents (Megatron-LM's ``--reset-attention-mask
    --reset-position-ids``): every row is cut after each ``eod`` token, the documents of all rows go into one
    packed row, each padded (token 0, masked) to a multiple of ``2 * cp_size``, and this rank gets its
    per-document shard (``sharding.shard_packed``): ``input_ids``, ``labels`` (next token, shifted before
    the cut), ``position_ids`` (restarting at every document), ``loss_mask`` (0 on padding and where an
    ``eod`` would predict the next document's first token), each ``[1, local tokens]``, and ``cu_seqlens``
    (int32, global and padded) for ``PackedSeqParams``."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] < 2:
        raise TypeError("tokens must be a 2-D tensor [batch, seq_len + 1] with seq_len >= 1")
    parts: dict[str, list[torch.Tensor]] = {"input_ids": [], "labels": [], "position_ids": [], "loss_mask": []}
    lengths: list[int] = []
    for row in tokens:
        inputs, labels = row[:-1], row[1:]
        ends = (inputs == eod).nonzero().flatten().add(1).tolist()
        bounds = [0] + [e for e in ends if e < inputs.numel()] + [inputs.numel()]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            length = padded_document_lengths([b - a], cp_size)[0]
            pad = length - (b - a)
            mask = torch.ones(b - a, dtype=torch.float32, device=tokens.device)
            if inputs[b - 1] == eod:
                mask[-1] = 0.0  # no prediction across documents
            parts["input_ids"].append(torch.nn.functional.pad(inputs[a:b], (0, pad)))
            parts["labels"].append(torch.nn.functional.pad(labels[a:b], (0, pad)))
            parts["position_ids"].append(torch.arange(length, device=tokens.device))
            parts["loss_mask"].append(torch.nn.functional.pad(mask, (0, pad)))
            lengths.append(length)
    cu = cu_seqlens_of(lengths)
    out = {name: shard_packed(torch.cat(ts), cu, cp_rank, cp_size, seq_dim=0).unsqueeze(0)
           for name, ts in parts.items()}
    out["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32, device=tokens.device)
    return out
