"""``TASPCoreAttention``: context-parallel attention in Megatron-core's ``core_attention`` slot.

Megatron's own ``DotProductAttention`` refuses context parallelism (only Transformer Engine has it); this
module takes the same constructor and forward arguments and runs Hamilton, ring or zigzag ring attention
over Megatron's CP group through ``tasp_plugin.context_parallel_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention

from ...api import context_parallel_attention
from ...comm import LoopbackGroup
from ...planning import Algorithm, HybridLayout
from .groups import tasp_groups_for

__all__ = ["CP_COMM_TYPES", "HYBRID_CP_COMM_TYPES", "TASPCoreAttention", "layer_split", "resolve_cp_comm_type"]

# cp_comm_type value -> algorithm: every algorithm under its own name, and "p2p", Transformer Engine's name
# for the ring on zigzag shards (what "zigzag" computes), so TE users' default keeps working.
CP_COMM_TYPES: dict[str, Algorithm] = {**{a.value: a for a in Algorithm}, "p2p": Algorithm.ZIGZAG}
# head x sequence hybrids (Transformer Engine's meaning): "a2a" is Ulysses over the whole CP group; "a2a+X" is
# Ulysses inside the first level of hierarchical_context_parallel_sizes and the ring schedule X across the second
HYBRID_CP_COMM_TYPES: dict[str, Algorithm] = {"a2a": Algorithm.ZIGZAG, "a2a+p2p": Algorithm.ZIGZAG,
                                              "a2a+hamilton": Algorithm.HAMILTON}
_CAUSAL = (AttnMaskType.causal, AttnMaskType.causal_bottom_right)


def _layer_value(cp_comm_type: str | list[str] | None, layer_number: int) -> str | None:
    """One layer's (1-based ``layer_number``) entry of a ``cp_comm_type`` string or per-layer list."""
    if isinstance(cp_comm_type, (list, tuple)):
        if not 1 <= layer_number <= len(cp_comm_type):
            raise ValueError(f"cp_comm_type has {len(cp_comm_type)} entries but layer_number is {layer_number}; "
                             "give one entry per transformer layer")
        cp_comm_type = cp_comm_type[layer_number - 1]
    if cp_comm_type is not None and not isinstance(cp_comm_type, str):
        raise ValueError(f"cp_comm_type entries must be strings, got {cp_comm_type!r}")
    return cp_comm_type


def resolve_cp_comm_type(cp_comm_type: str | list[str] | None, layer_number: int) -> Algorithm:
    """The engine algorithm for one layer (1-based ``layer_number``) from a ``cp_comm_type`` value:
    a string, a per-layer list, or None (``"auto"``); hybrids give the algorithm of their ring part."""
    value = _layer_value(cp_comm_type, layer_number)
    if value is None:
        return Algorithm.AUTO
    if value.lower() in HYBRID_CP_COMM_TYPES:
        return HYBRID_CP_COMM_TYPES[value.lower()]
    if value.lower() not in CP_COMM_TYPES:
        raise ValueError(f"cp_comm_type {value!r} is not supported by TASPCoreAttention; use one of "
                         f"{sorted(CP_COMM_TYPES) + sorted(HYBRID_CP_COMM_TYPES)} ('all_gather' needs Transformer "
                         "Engine)")
    return CP_COMM_TYPES[value.lower()]


def layer_split(cp_comm_type: str | list[str] | None, layer_number: int, context_parallel_size: int,
                hierarchical_sizes: list[int] | None) -> tuple[Algorithm, int]:
    """``(algorithm, ulysses_size)`` of one layer: ``ulysses_size`` is 1 for a plain ring schedule, the CP
    size for ``"a2a"``, and the first of Megatron's ``hierarchical_context_parallel_sizes`` for ``"a2a+X"``."""
    algorithm = resolve_cp_comm_type(cp_comm_type, layer_number)
    value = (_layer_value(cp_comm_type, layer_number) or "").lower()
    if value == "a2a":
        return algorithm, context_parallel_size
    if value not in HYBRID_CP_COMM_TYPES:
        return algorithm, 1
    sizes = list(hierarchical_sizes or [])
    if len(sizes) != 2 or sizes[0] * sizes[1] != context_parallel_size:
        raise ValueError(f"cp_comm_type {value!r} needs hierarchical_context_parallel_sizes [all-to-all size, ring "
                         f"size] whose product is the CP size {context_parallel_size}, got {hierarchical_sizes} "
                         "(Megatron-LM: --hierarchical-context-parallel-sizes 2 4)")
    return algorithm, sizes[0]


def _cp_group(config: TransformerConfig, pg_collection: ProcessGroupCollection | None):
    """Megatron's CP group: ``pg_collection.cp`` when given, else ``parallel_state``'s (None if neither)."""
    group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
    if group is None:
        group = parallel_state.get_context_parallel_group(check_initialized=False)
    if group is None and config.context_parallel_size > 1:
        raise ValueError(f"config.context_parallel_size is {config.context_parallel_size} but no CP group exists: "
                         "call megatron.core.parallel_state.initialize_model_parallel(context_parallel_size=...) "
                         "or pass pg_collection with a cp group")
    return group


class TASPCoreAttention(MegatronModule):
    """Drop-in for ``DotProductAttention``: ``[s, b, heads, d]`` local zigzag shards in (K/V may have fewer
    heads), ``[s, b, heads * d]`` out; context-parallel over Megatron's CP group, plain attention at CP 1."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | list[str] | None = None,
                 pg_collection: ProcessGroupCollection | None = None) -> None:
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = self._check_mask_type(attn_mask_type)
        self.attention_type = attention_type
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout > 0:
            where = ("config.attention_dropout = 0.0 (Megatron-LM: --attention-dropout 0)" if attention_dropout is None
                     else "the attention_dropout argument to 0.0")
            raise ValueError(f"attention dropout {dropout} is not supported by TASPCoreAttention; set {where}")
        if config.softmax_type != "vanilla":
            raise ValueError(f"softmax_type {config.softmax_type!r} is not supported by TASPCoreAttention; "
                             "use the default 'vanilla'")
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
            raise ValueError(f"sliding-window attention (window_size={config.window_size}) is not supported "
                             "by TASPCoreAttention; unset config.window_size")
        self.algorithm, self.ulysses_size = layer_split(
            config.cp_comm_type if cp_comm_type is None else cp_comm_type, self.layer_number,
            config.context_parallel_size, config.hierarchical_context_parallel_sizes)
        # Megatron's query-key layer scaling divides the logits by layer_number and multiplies them back
        # inside the fp32 softmax, so the net scale is the unscaled one.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        if self.ulysses_size > 1:  # the heads this rank holds (after tensor parallelism) must split
            tp = config.tensor_model_parallel_size
            heads, groups = config.num_attention_heads // tp, (config.num_query_groups or config.num_attention_heads)
            HybridLayout.of(config.context_parallel_size, self.ulysses_size).kv_repeats(heads, max(groups // tp, 1))
        self.cp_group = _cp_group(config, pg_collection)

    @staticmethod
    def _check_mask_type(mask_type: AttnMaskType) -> AttnMaskType:
        if mask_type not in (*_CAUSAL, AttnMaskType.no_mask):
            raise ValueError(f"attn_mask_type {mask_type} is not supported by TASPCoreAttention; it honours "
                             "AttnMaskType.causal and AttnMaskType.no_mask (no padding or arbitrary masks)")
        return mask_type

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: torch.Tensor | None = None,
                packed_seq_params: PackedSeqParams | None = None) -> torch.Tensor:
        """Attention of the local query shard over the CP group's whole sequence; ``attention_mask`` is
        not read (the causal or no-mask type defines the mask, as in Transformer Engine)."""
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by TASPCoreAttention")
        mask_type = self.attn_mask_type if attn_mask_type is None else self._check_mask_type(attn_mask_type)
        causal = mask_type in _CAUSAL
        if packed_seq_params is not None:
            return self._packed(query, key, value, causal, packed_seq_params)
        if self.cp_group is None:
            out = F.scaled_dot_product_attention(
                query.permute(1, 2, 0, 3), key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3),
                is_causal=causal, scale=self.softmax_scale, enable_gqa=key.shape[2] != query.shape[2])
            out = out.permute(2, 0, 1, 3)
        else:
            group = tasp_groups_for(self.cp_group) or self.cp_group
            out = context_parallel_attention(query, key, value, group=group, algorithm=self.algorithm,
                                             causal=causal, softmax_scale=self.softmax_scale, layout="sbhd",
                                             ulysses_size=self.ulysses_size)
        return out.reshape(out.shape[0], out.shape[1], -1)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool,
                params: PackedSeqParams) -> torch.Tensor:
        """Packed documents (``qkv_format="thd"``: ``[t, heads, d]`` in, ``[t, heads * d]`` out): attention
        inside each document of the padded ``cu_seqlens`` (every document a multiple of 2 x CP size, this
        rank holding chunks r and 2 x CP - 1 - r of each, as Megatron's THD batches are split)."""
        if params.qkv_format != "thd":
            raise ValueError(f"packed_seq_params.qkv_format {params.qkv_format!r} is not supported by "
                             "TASPCoreAttention; use 'thd'")
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_kv = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if cu_q is None or cu_kv is None:
            raise ValueError("packed_seq_params needs cu_seqlens_q(_padded) and cu_seqlens_kv(_padded)")
        cu = cu_q.cpu()  # the one host copy of the boundaries (a device sync on GPUs)
        if cu_kv is not cu_q and not torch.equal(cu, cu_kv.cpu()):
            raise ValueError("packed_seq_params needs cu_seqlens_q(_padded) equal to cu_seqlens_kv(_padded) "
                             "(self-attention over the same documents)")
        unpadded = params.cu_seqlens_q
        if not causal and unpadded is not None and unpadded is not cu_q and not torch.equal(unpadded.cpu(), cu):
            # the padding sits at the end of each document: causal queries never see it, others would
            raise ValueError("non-causal attention over padded packed documents would attend to the padding; "
                             "pad nothing (cu_seqlens_q_padded equal to cu_seqlens_q) or use a causal mask")
        group = LoopbackGroup(1, 0) if self.cp_group is None else tasp_groups_for(self.cp_group) or self.cp_group
        out = context_parallel_attention(query, key, value, group=group, algorithm=self.algorithm, causal=causal,
                                         softmax_scale=self.softmax_scale, layout="thd", cu_seqlens=cu,
                                         ulysses_size=self.ulysses_size)
        return out.reshape(out.shape[0], -1)
