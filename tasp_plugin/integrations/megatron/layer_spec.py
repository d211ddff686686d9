"""Megatron GPT layer specs whose ``core_attention`` is ``TASPCoreAttention``.

Megatron-LM's ``--spec MODULE NAME`` hands ``getattr(MODULE, NAME)`` to ``GPTModel`` unchanged, so
``tasp_gpt_layer_spec`` must itself be a ``ModuleSpec``; it is also callable as
``tasp_gpt_layer_spec(config=None, vp_stage=None)`` for code that builds specs from a config.
"""

from __future__ import annotations

import copy
import dataclasses

from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)
from megatron.core.utils import get_pg_rank

from .core_attention import TASPCoreAttention
from .versions import CP_COMM_TYPE_LIST_OFF_BY_ONE

__all__ = ["TASPTransformerLayer", "build_tasp_gpt_layer_spec", "tasp_gpt_layer_spec"]


class TASPTransformerLayer(TransformerLayer):
    """``TransformerLayer`` that gives its core attention its own entry of a per-layer ``cp_comm_type`` list.

    megatron-core 0.16 indexes that list with the 1-based layer number (each layer gets the next layer's
    entry and the last layer raises IndexError), so this layer sees a shallow config copy holding its entry.
    The TASP spec uses it on 0.16 only (``versions.CP_COMM_TYPE_LIST_OFF_BY_ONE``); 0.17 fixed the index.
    """

    def __init__(self, config: TransformerConfig, submodules: TransformerLayerSubmodules, layer_number: int = 1,
                 hidden_dropout: float | None = None, pg_collection: ProcessGroupCollection | None = None,
                 vp_stage: int | None = None) -> None:
        if config.context_parallel_size > 1 and isinstance(config.cp_comm_type, (list, tuple)):
            pp = (pg_collection.pp if pg_collection is not None
                  else parallel_state.get_pipeline_model_parallel_group(check_initialized=False))
            index = layer_number - 1 + get_transformer_layer_offset(config, vp_stage, get_pg_rank(pp))
            config = copy.copy(config)
            config.cp_comm_type = config.cp_comm_type[index]
        super().__init__(config, submodules, layer_number, hidden_dropout, pg_collection, vp_stage)


def build_tasp_gpt_layer_spec(qk_layernorm: bool = False, normalization: str | None = None) -> ModuleSpec:
    """Megatron's local (no Transformer Engine) GPT layer spec with ``TASPCoreAttention`` as core attention
    (and, on megatron-core 0.16, ``TASPTransformerLayer`` so that per-layer ``cp_comm_type`` lists work)."""
    spec = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization=normalization)
    attention = spec.submodules.self_attention
    submodules = dataclasses.replace(attention.submodules, core_attention=TASPCoreAttention)
    self_attention = dataclasses.replace(attention, submodules=submodules)
    layer = dataclasses.replace(spec.submodules, self_attention=self_attention)
    layer_class = TASPTransformerLayer if CP_COMM_TYPE_LIST_OFF_BY_ONE else spec.module
    return dataclasses.replace(spec, module=layer_class, submodules=layer)


class _CallableLayerSpec(ModuleSpec):
    """A layer ``ModuleSpec`` (what ``--spec`` needs) that also builds a config-specific spec when called."""

    def __call__(self, config: TransformerConfig | None = None, vp_stage: int | None = None) -> ModuleSpec:
        """The TASP GPT layer spec for ``config`` (its ``qk_layernorm`` and ``normalization``); ``vp_stage``
        is accepted for Megatron's builder signature (the layer spec is the same on every stage)."""
        if config is None:
            return build_tasp_gpt_layer_spec()
        if config.multi_latent_attention:
            raise ValueError("multi-latent attention is not supported by the TASP layer spec; "
                             "set config.multi_latent_attention = False")
        return build_tasp_gpt_layer_spec(qk_layernorm=config.qk_layernorm, normalization=config.normalization)


tasp_gpt_layer_spec = _CallableLayerSpec(**{f.name: getattr(build_tasp_gpt_layer_spec(), f.name)
                                            for f in dataclasses.fields(ModuleSpec)})
