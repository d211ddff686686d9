"""tasp_plugin: topology-aware sequence parallelism (Hamilton, ring and zigzag ring attention) for
long-context training in Megatron-core and DeepSpeed."""

__version__ = "0.1.0"
