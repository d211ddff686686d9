"""Hugging Face transformers: ``attn_implementation="tasp"`` for Llama-family models, and a data adapter
that cuts a causal-LM batch into one CP rank's zigzag shard. transformers is imported only by
``register_tasp_attention``."""

from __future__ import annotations

import weakref

import torch

from ..api import context_parallel_attention
from ..comm import as_communicator
from ..sharding import cu_seqlens_of, padded_document_lengths, shard_packed, shard_sequence
from .attention import installed_context_parallel

__all__ = ["ATTN_IMPLEMENTATION", "register_tasp_attention", "shard_causal_lm_batch", "shard_packed_lm_batch",
           "tasp_attention_forward"]

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
    cu = _packed_documents(kwargs)
    if cu is None and _restarts(kwargs.get("position_ids")):
        cu = _documents_from_positions(kwargs["position_ids"], settings.group)
    if cu is not None:  # packed documents: [1, heads, tokens, d] -> [tokens, heads, d]
        if query.shape[0] != 1:
            raise ValueError(f"packed batches (cu_seq_lens_q) hold one row of documents, got batch {query.shape[0]}")
        out = context_parallel_attention(
            query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), group=settings.group,
            algorithm=settings.algorithm, causal=getattr(module, "is_causal", True) if causal is None else causal,
            softmax_scale=scaling, layout="thd", backend=settings.backend, cu_seqlens=cu,
            ulysses_size=settings.ulysses_size)
        return out.unsqueeze(0), None
    out = context_parallel_attention(
        query, key, value, group=settings.group, algorithm=settings.algorithm,
        causal=getattr(module, "is_causal", True) if causal is None else causal,
        softmax_scale=scaling, layout="bhsd", backend=settings.backend, ulysses_size=settings.ulysses_size)
    return out.transpose(1, 2).contiguous(), None


def _packed_documents(kwargs: dict) -> torch.Tensor | None:
    """The global (padded) cumulative document lengths of a packed batch, from transformers' flash-attention
    kwargs ``cu_seq_lens_q``/``cu_seq_lens_k`` (as ``shard_packed_lm_batch`` returns them), or None."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    if cu_q is None or cu_k is None or not torch.equal(torch.as_tensor(cu_q).cpu(), torch.as_tensor(cu_k).cpu()):
        raise ValueError("packed batches need equal cu_seq_lens_q and cu_seq_lens_k (self-attention)")
    return torch.as_tensor(cu_q).cpu()


# the last position_ids looked at (a weak reference: the same tensor object, not the same memory), its
# version, and the answer
_checked: list[tuple[weakref.ref, int, bool]] = []


def _restarts(position_ids: torch.Tensor | None) -> bool:
    """Whether positions decrease somewhere (packed documents whose positions restart; a zigzag shard of one
    sequence only ever increases). Looked at once per position tensor: every layer of a forward passes the
    same object, and the answer costs a host sync."""
    if position_ids is None:
        return False
    version = position_ids._version
    same = bool(_checked) and _checked[0][0]() is position_ids and _checked[0][1] == version
    if not same:
        answer = bool((position_ids[..., 1:] < position_ids[..., :-1]).any())
        _checked[:] = [(weakref.ref(position_ids), version, answer)]
    return _checked[0][2]


def _documents_from_positions(position_ids: torch.Tensor, group: object) -> torch.Tensor:
    """Documents of a packed batch at CP size 1, where positions restart at 0; under CP the local positions
    cannot tell the global documents, so there it is an error."""
    if as_communicator(group).size > 1 or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError("a packed batch (position_ids that restart) under context parallelism needs the "
                         "document boundaries: pass cu_seq_lens_q/cu_seq_lens_k (shard_packed_lm_batch builds "
                         "them)")
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("packed position_ids must start every document at 0")
    return torch.tensor([*starts, position_ids.shape[1]], dtype=torch.int32)


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


def shard_packed_lm_batch(documents: list[torch.Tensor], *, cp_rank: int, cp_size: int, pad_token_id: int = 0,
                          ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """This CP rank's part of a batch of packed documents (1-D token tensors), as ``model(**batch)`` keyword
    arguments: each document padded to a multiple of 2 x ``cp_size`` (pad tokens predict nothing), labels
    shifted inside each document (its last token predicts nothing: no prediction across documents),
    positions restarting at each document, then split per document as ``sharding.shard_packed`` does.
    ``cu_seq_lens_q``/``cu_seq_lens_k`` (the global padded cumulative lengths) tell tasp attention where the
    documents are; ``num_items_in_batch`` makes ``loss`` this rank's share, as in ``shard_causal_lm_batch``."""
    if not documents or any(d.dim() != 1 or d.numel() < 1 for d in documents):
        raise ValueError("documents must be a non-empty list of non-empty 1-D token tensors")
    lengths = padded_document_lengths([d.numel() for d in documents], cp_size)
    ids, labels, positions = [], [], []
    for doc, length in zip(documents, lengths, strict=True):
        pad = length - doc.numel()
        ids.append(torch.nn.functional.pad(doc, (0, pad), value=pad_token_id))
        labels.append(torch.nn.functional.pad(doc[1:], (0, pad + 1), value=ignore_index))
        positions.append(torch.arange(length, device=doc.device))
    cu = cu_seqlens_of(lengths)
    shard = {name: shard_packed(torch.cat(parts), cu, cp_rank, cp_size, seq_dim=0).unsqueeze(0)
             for name, parts in (("input_ids", ids), ("position_ids", positions), ("labels", labels))}
    shard["shift_labels"] = shard["labels"]
    shard["num_items_in_batch"] = (torch.cat(labels) != ignore_index).sum()
    cu_t = torch.tensor(cu, dtype=torch.int32)
    shard.update(cu_seq_lens_q=cu_t, cu_seq_lens_k=cu_t)
    return shard
