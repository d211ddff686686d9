"""Layer 7: adapters that plug the attention engine into training frameworks (Megatron-core, DeepSpeed,
Hugging Face transformers). Each submodule imports its framework lazily, so the core needs none of them."""
