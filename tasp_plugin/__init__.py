"""tasp_plugin: topology-aware sequence parallelism (Hamilton, ring and zigzag ring attention) for
long-context training in Megatron-core and DeepSpeed."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["context_parallel_attention", "__version__"]


def __getattr__(name: str):
    # lazy, so that the pure-Python schedule layer (and `tasp plan`) never imports torch
    if name == "context_parallel_attention":
        from .api import context_parallel_attention

        return context_parallel_attention
    raise AttributeError(f"module 'tasp_plugin' has no attribute {name!r}")
