"""Megatron-core integration: ``TASPCoreAttention`` for the ``core_attention`` slot, the GPT layer spec
``tasp_gpt_layer_spec`` (``--spec tasp_plugin.integrations.megatron tasp_gpt_layer_spec``) and a CPU-safe
rotary embedding. Needs megatron-core 0.16.x to 0.19.x (``versions`` holds the differences)."""

from .core_attention import CP_COMM_TYPES, HYBRID_CP_COMM_TYPES, TASPCoreAttention, layer_split, resolve_cp_comm_type
from .groups import initialize_tasp_groups, tasp_groups_for
from .layer_spec import TASPTransformerLayer, build_tasp_gpt_layer_spec, tasp_gpt_layer_spec
from .rotary import CPUSafeRotaryEmbedding, make_rotary_cpu_safe

__all__ = [
    "CP_COMM_TYPES",
    "HYBRID_CP_COMM_TYPES",
    "CPUSafeRotaryEmbedding",
    "TASPCoreAttention",
    "TASPTransformerLayer",
    "build_tasp_gpt_layer_spec",
    "initialize_tasp_groups",
    "layer_split",
    "make_rotary_cpu_safe",
    "resolve_cp_comm_type",
    "tasp_gpt_layer_spec",
    "tasp_groups_for",
]
