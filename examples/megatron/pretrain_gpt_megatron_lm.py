"""Pretrain GPT with Megatron-LM's own training loop (``megatron.training.pretrain``) and TASP attention.

Everything is Megatron-LM's: its command line, argument checks, logging, checkpointing and data loaders.
The plugin enters through two of its flags, ``--spec tasp_plugin.integrations.megatron tasp_gpt_layer_spec``
(``TASPCoreAttention`` in the ``core_attention`` slot) and ``--cp-comm-type hamilton`` (or ``zigzag``,
``ring``, ``auto``, ``p2p``, or one value per layer). Needs megatron-core 0.19 (its wheel ships
``megatron.training``; Python >= 3.12) and CUDA GPUs (``initialize_megatron`` asserts CUDA):

    CUDA_DEVICE_MAX_CONNECTIONS=1 torchrun --nproc-per-node 2 examples/megatron/pretrain_gpt_megatron_lm.py \\
        --context-parallel-size 2 --cp-comm-type zigzag --attention-dropout 0 \\
        --spec tasp_plugin.integrations.megatron tasp_gpt_layer_spec --transformer-impl local \\
        --no-persist-layer-norm --no-gradient-accumulation-fusion \\
        --mock-data --no-create-attention-mask-in-dataloader --tokenizer-type NullTokenizer \\
        --vocab-size 4096 --num-layers 2 --hidden-size 256 --num-attention-heads 4 --seq-length 4096 \\
        --max-position-embeddings 4096 --micro-batch-size 1 --global-batch-size 2 --bf16 --lr 3e-4 \\
        --train-iters 20 --log-interval 5 --eval-iters 0 --eval-interval 1000

The batch path is Megatron-LM's ``pretrain_gpt.py`` one: TP rank 0 reads the loader, the batch is broadcast
over tensor parallelism, and ``get_batch_on_this_cp_rank`` cuts each sequence into the zigzag shards that
the engine expects. The loss is the token-sum with the token count, as Megatron-LM's own ``loss_func``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch

from tasp_plugin.integrations.megatron.versions import require_megatron_training

require_megatron_training()

from megatron.core import parallel_state  # noqa: E402  (after the version check above)
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset  # noqa: E402
from megatron.core.enums import ModelType  # noqa: E402
from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer  # noqa: E402
from megatron.core.utils import (  # noqa: E402
    get_attr_wrapped_model,
    get_batch_on_this_cp_rank,
    get_batch_on_this_tp_rank,
)
from megatron.training import get_args, get_timers, pretrain, print_rank_0  # noqa: E402
from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args  # noqa: E402
from megatron.training.arguments import parse_and_validate_args  # noqa: E402
from megatron.training.utils import get_blend_and_blend_per_split, is_first_or_last_pipeline_stage  # noqa: E402

from tasp_plugin.integrations.megatron import tasp_gpt_layer_spec  # noqa: E402
from tasp_plugin.integrations.megatron.megatron_lm import check_megatron_lm_args, uses_tasp_spec  # noqa: E402
from tasp_plugin.integrations.megatron.versions import use_shipped_dataset_helpers  # noqa: E402

BATCH_KEYS = ("tokens", "labels", "loss_mask", "attention_mask", "position_ids")


def get_batch(data_iterator: Iterator[dict[str, torch.Tensor]] | None, vp_stage: int | None = None
              ) -> dict[str, Any]:
    """This rank's micro-batch: read on TP rank 0, broadcast over TP, then this CP rank's zigzag shard.
    Middle pipeline stages read nothing (their input is the previous stage's output)."""
    if not is_first_or_last_pipeline_stage(vp_stage):
        return dict.fromkeys(BATCH_KEYS)
    args = get_args()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    batch: dict[str, Any] = {}
    if tp_rank == 0:
        assert data_iterator is not None, "TP rank 0 of a first or last pipeline stage needs a data iterator"
        raw = next(data_iterator)
        batch = {key: raw[key].cuda(non_blocking=True) if raw.get(key) is not None else None for key in BATCH_KEYS}
    batch = get_batch_on_this_tp_rank(
        batch,
        has_cu_seqlens=False,
        is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=parallel_state.get_tensor_model_parallel_src_rank(),
        broadcast_group=parallel_state.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size,
        tp_rank=tp_rank,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        mtp_on_this_rank=False,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=parallel_state.is_pipeline_first_stage(),
        is_pipeline_last_stage=parallel_state.is_pipeline_last_stage(),
    )
    return get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=parallel_state.get_context_parallel_group())


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Sum of this rank's masked token losses, its token count, and the pair for Megatron's 'lm loss' log."""
    losses = output_tensor.view(-1).float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    tokens = mask.sum().detach().to(torch.int)
    return loss, tokens, {"lm loss": torch.cat([loss.detach().view(1), tokens.view(1)])}


def forward_step(data_iterator: Iterator[dict[str, torch.Tensor]] | None, model: torch.nn.Module) -> tuple:
    """One micro-batch through the model; returns the per-token losses and the loss function for them."""
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    batch = get_batch(data_iterator, get_attr_wrapped_model(model, "vp_stage"))
    timers("batch-generator").stop()
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"],
                   loss_mask=batch["loss_mask"])
    return output, partial(loss_func, batch["loss_mask"])


def dataset_config(args: argparse.Namespace) -> GPTDatasetConfig:
    """Megatron's GPT dataset settings from its own arguments (``--mock-data`` or ``--data-path``)."""
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        path_to_cache=args.data_cache_path,
        tokenizer=build_tokenizer(args),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        mid_level_dataset_surplus=args.mid_level_dataset_surplus,
    )


def datasets_provider(train_val_test_num_samples: list[int], vp_stage: int | None = None) -> tuple:
    """Train, validation and test datasets, built on the ranks that read data (first or last stage, TP 0)."""
    args = get_args()
    dataset_type = MockGPTDataset if args.mock_data else GPTDataset

    def built_here() -> bool:
        return is_first_or_last_pipeline_stage(vp_stage) and parallel_state.get_tensor_model_parallel_rank() == 0

    print_rank_0("> building GPT datasets ...")
    return BlendedMegatronDatasetBuilder(dataset_type, train_val_test_num_samples, built_here,
                                         dataset_config(args)).build()


datasets_provider.is_distributed = True  # type: ignore[attr-defined]  (Megatron-LM reads this flag)


def main() -> None:
    """Parse Megatron-LM's command line, check the TASP settings, and run Megatron-LM's ``pretrain``."""
    args = parse_and_validate_args(args_defaults={"tokenizer_type": "NullTokenizer"})
    check_megatron_lm_args(args)
    use_shipped_dataset_helpers()  # the pip wheel has the compiled helper but not the Makefile Megatron runs
    model_config = gpt_config_from_args(args)
    if uses_tasp_spec(args):
        # Megatron's builder uses a ModuleSpec as is; build the spec for this config (--qk-layernorm, ...)
        model_config.transformer_layer_spec = tasp_gpt_layer_spec(model_config.transformer)
    pretrain(pretrain_cfg_container_from_args(args, model_config), datasets_provider, ModelType.encoder_or_decoder,
             forward_step)


if __name__ == "__main__":
    main()
