"""Hugging Face transformers: ``attn_implementation="tasp"`` for Llama-family models, and a data adapter
that cuts a causal-LM batch into one CP rank's zigzag shard. transformers is imported only by
``register_tasp_attention``."""

from __future__ import annotations

import torch

from ..api import context_parallel_attention
from ..sharding import shard_sequence
from .attention import installed_context_parallel

__all__ = ["ATTN_IMPLEMENTATION", "register_tasp_attention", "shard_causal_lm_batch", "tasp_attention_forward"]

ATTN_IMPLEMENTATION = "tasp"


def tasp_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``[b, heads, s_local, d]`` zigzag shards in (K/V may
    have fewer heads), ``([b, s_local, heads, d], None)`` out, over the installed CP group."""
    if dropout:
        raise ValueError(f"attention dropout {dropout} is not supported by tasp attention; set the model "
                         "config's attention_dropout to 0.0")
    for name in ("sliding_window", "softcap"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}={kwargs[name]} is not supported by tasp attention")
    if attention_mask is not None:
        raise ValueError("tasp attention takes no attention mask (it applies the causal rule itself); "
                         "remove padding by packing full-length sequences")
    causal = kwargs.get("is_causal")
    settings = installed_context_parallel()
    out = context_parallel_attention(
        query, key, value, group=settings.group, algorithm=settings.algorithm,
        causal=getattr(module, "is_causal", True) if causal is None else causal,
        softmax_scale=scaling, layout="bhsd", backend=settings.backend)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*, attention_mask: torch.Tensor | None = None, **_) -> None:
    """Mask builder for "tasp": none is needed; a padding mask would be silently ignored, so refuse it."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("padded batches (attention_mask with zeros) are not supported with tasp attention; "
                         "pack full-length sequences instead")


def register_tasp_attention() -> None:
    """Register "tasp" with transformers so that ``attn_implementation="tasp"`` selects CP attention;
    call it before building the model. The CP group comes from ``initialize`` (or
    ``install_context_parallel``) and may be set after the model is built."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as exc:
        raise ImportError("tasp attention for Hugging Face models needs transformers: "
                          "pip install 'tasp_plugin[hf]'") from exc
    AttentionInterface.register(ATTN_IMPLEMENTATION, tasp_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)


def shard_causal_lm_batch(input_ids: torch.Tensor, labels: torch.Tensor | None = None, *, cp_rank: int,
                          cp_size: int, position_ids: torch.Tensor | None = None,
                          ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """This CP rank's part of a causal-LM batch, as keyword arguments for ``model(**batch)``.

    ``labels`` follow the transformers convention (aligned with ``input_ids``; default: ``input_ids``).
    They are shifted on the full sequence *before* sharding and passed as ``shift_labels`` so the model
    does not shift the shard again; ``num_items_in_batch`` is the full batch's count of predicted tokens,
    so ``model(**batch).loss`` is this rank's share: the CP ranks' losses sum to the full-sequence mean.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    labels = input_ids if labels is None else labels
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    b, s = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(s, device=input_ids.device).expand(b, s)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
    shard = {name: shard_sequence(t, cp_rank, cp_size, seq_dim=1).contiguous()
             for name, t in (("input_ids", input_ids), ("position_ids", position_ids), ("labels", shifted))}
    shard["shift_labels"] = shard["labels"]
    shard["num_items_in_batch"] = (shifted != ignore_index).sum()
    return shard
