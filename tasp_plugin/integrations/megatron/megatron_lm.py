"""Checks of Megatron-LM's parsed command line for the TASP backend.

They run on every rank right after ``parse_and_validate_args`` and before ``pretrain`` starts any
communication, so a bad combination is the same one-line error everywhere instead of a failure (or a
silently different attention) deep inside model construction.
"""

from __future__ import annotations

import importlib.util
from argparse import Namespace

from .core_attention import CP_COMM_TYPES, HYBRID_CP_COMM_TYPES, layer_split

__all__ = ["TASP_SPEC", "check_megatron_lm_args", "uses_tasp_spec"]

# what `--spec` names: the package (or the module that defines it) and the layer spec
TASP_SPEC = ("tasp_plugin.integrations.megatron", "tasp_gpt_layer_spec")
_SPEC_MODULES = (TASP_SPEC[0], f"{TASP_SPEC[0]}.layer_spec")
# cp_comm_type values that only TASPCoreAttention understands ("p2p" is also Transformer Engine's)
_TASP_ONLY = sorted(set(CP_COMM_TYPES) - {"p2p"})


def _cp_comm_types(args: Namespace) -> list[str]:
    value = args.cp_comm_type
    return [value] if isinstance(value, str) else list(value or ["p2p"])


def uses_tasp_spec(args: Namespace) -> bool:
    """Whether ``--spec`` selects the TASP GPT layer spec."""
    spec = args.spec or []
    return len(spec) == 2 and spec[0] in _SPEC_MODULES and spec[1] == TASP_SPEC[1]


def check_megatron_lm_args(args: Namespace) -> None:
    """Raise ``ValueError`` (one line) when Megatron-LM's arguments cannot run TASP attention as asked."""
    flag = f"--spec {' '.join(TASP_SPEC)}"
    values = _cp_comm_types(args)
    if not uses_tasp_spec(args):
        tasp_only = [v for v in values if v.lower() in _TASP_ONLY]
        if tasp_only:
            raise ValueError(f"--cp-comm-type {' '.join(tasp_only)} needs {flag} (TASP attention); "
                             f"without it Megatron builds its own attention, which does not know {tasp_only[0]!r}")
        return
    known = sorted(CP_COMM_TYPES) + sorted(HYBRID_CP_COMM_TYPES)
    unknown = [v for v in values if v.lower() not in known]
    if unknown:
        raise ValueError(f"--cp-comm-type {' '.join(unknown)} is not supported with {flag}; use one of "
                         f"{known} (one value, or one per layer)")
    hierarchical = getattr(args, "hierarchical_context_parallel_sizes", None)
    for value in values:  # the split each layer's TASPCoreAttention will make, named by the flags
        try:
            layer_split(value, 1, args.context_parallel_size, hierarchical)
        except ValueError:
            raise ValueError(f"--cp-comm-type {value} needs --hierarchical-context-parallel-sizes A R with A x R = "
                             f"--context-parallel-size {args.context_parallel_size} (all-to-all size, ring size), "
                             f"got {hierarchical}") from None
    if len(values) not in (1, args.num_layers):
        raise ValueError(f"--cp-comm-type has {len(values)} values for {args.num_layers} layers; give one value "
                         "or one per layer")
    if args.attention_dropout:
        raise ValueError(f"--attention-dropout {args.attention_dropout} is not supported by TASP attention; "
                         "pass --attention-dropout 0 (Megatron's default is 0.1)")
    if getattr(args, "num_experts", None) or getattr(args, "multi_latent_attention", False):
        raise ValueError(f"{flag} is a dense GPT layer with standard attention; --num-experts (MoE) and "
                         "--multi-latent-attention need a layer spec of their own")
    if args.reset_attention_mask or getattr(args, "dataloader_inter_document_masking", False):
        raise ValueError("TASP attention in this loop builds the causal mask itself and reads no attention mask; "
                         "--reset-attention-mask and --dataloader-inter-document-masking (documents inside a "
                         "sequence) would be ignored; leave them out (the project's examples take packed documents)")
    if args.create_attention_mask_in_dataloader:
        raise ValueError("pass --no-create-attention-mask-in-dataloader: TASP attention builds the causal mask "
                         "itself, and Megatron's dense sequence x sequence mask would only cost memory")
    if args.transformer_impl != "local":
        raise ValueError(f"--transformer-impl {args.transformer_impl} does not go with {flag}, which is "
                         "Megatron's local layer spec; pass --transformer-impl local")
    # the local spec's LayerNorm and linear layers need Apex for two of Megatron-LM's default fusions
    if not args.no_persist_layer_norm and importlib.util.find_spec("apex") is None:
        raise ValueError("Megatron-LM's persistent LayerNorm needs Apex, which is not installed; pass "
                         "--no-persist-layer-norm (the TASP spec then uses torch's LayerNorm)")
    if args.gradient_accumulation_fusion and importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is None:
        raise ValueError("Megatron-LM's gradient accumulation fusion needs Apex's fused_weight_gradient_mlp_cuda, "
                         "which is not installed; pass --no-gradient-accumulation-fusion")
