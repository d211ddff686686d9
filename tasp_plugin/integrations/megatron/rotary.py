"""Rotary embeddings under context parallelism on CPU-only machines.

Megatron-core 0.16's ``RotaryEmbedding`` moves its frequencies to ``torch.cuda.current_device()`` on first
use and selects the CP rank's positions with a pinned ``.cuda()`` index, so a GPTModel with RoPE cannot run
forward without a GPU. ``make_rotary_cpu_safe`` swaps those modules for a subclass that builds the same
table on the frequencies' own device and takes the zigzag shard with ``tasp_plugin.sharding``.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from ...sharding import shard_sequence

__all__ = ["CPUSafeRotaryEmbedding", "make_rotary_cpu_safe"]


class CPUSafeRotaryEmbedding(RotaryEmbedding):
    """``RotaryEmbedding`` that stays on the device of its frequencies (CPU here) and never calls CUDA."""

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        """RoPE angles ``[seq, 1, 1, dim]`` for positions ``offset .. offset + max_seq_len - 1``."""
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        emb = freqs.repeat_interleave(2, dim=-1) if self.rotary_interleaved else torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False,
                cp_group: torch.distributed.ProcessGroup | None = None) -> torch.Tensor:
        """The angles of this CP rank's zigzag shard of the global sequence (all of it at CP size 1)."""
        emb = self.get_emb(max_seq_len, offset)
        group = cp_group if cp_group is not None else self.cp_group
        if group is not None and group.size() > 1 and not packed_seq:
            emb = shard_sequence(emb, group.rank(), group.size(), seq_dim=0)
        return emb


def make_rotary_cpu_safe(model: torch.nn.Module) -> int:
    """Turn every plain ``RotaryEmbedding`` in ``model`` into ``CPUSafeRotaryEmbedding`` when CUDA is not
    available (a no-op on GPU machines); returns how many modules were switched."""
    if torch.cuda.is_available():
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is RotaryEmbedding:
            module.__class__ = CPUSafeRotaryEmbedding
            switched += 1
    return switched
