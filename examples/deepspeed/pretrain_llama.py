"""Pretrain a tiny Llama with DeepSpeed and context-parallel Hamilton attention (tasp_plugin).

Default: a randomly initialised Llama with GQA (Hugging Face transformers, ``attn_implementation="tasp"``),
ZeRO-1, 8 CPU processes (gloo) forming one CP = 8 Hamilton group, byte-level tokens of the Python standard
library's sources. Run it directly (it launches its own processes) or under a launcher:

    python examples/deepspeed/pretrain_llama.py
    python examples/deepspeed/pretrain_llama.py --cp-size 4 --world-size 8 --algorithm zigzag --zero-stage 3
    python examples/deepspeed/pretrain_llama.py --resume          # continue from tasp_deepspeed_run/checkpoints
    deepspeed --num_gpus 8 examples/deepspeed/pretrain_llama.py   # or torchrun --nproc-per-node 8 ...

The DeepSpeed JSON (``--deepspeed-config``) carries the ``"context_parallel"`` section that
``tasp_plugin.integrations.deepspeed.initialize`` reads. Each step every rank builds the same global batch,
takes its data-parallel rows and its zigzag shard (labels shifted before sharding); each rank's loss is its
share of the mean token loss, so the logged loss and the gradients equal a CP = 1 run on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from tasp_plugin.planning import Algorithm

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "deepspeed", "cp8_hamilton_zero1.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings; --cp-size/--algorithm/--zero-stage override the DeepSpeed JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deepspeed-config", default=DEFAULT_CONFIG, help="DeepSpeed JSON with a context_parallel section")
    p.add_argument("--world-size", type=int, default=None, help="processes to spawn (default: the CP size)")
    p.add_argument("--cp-size", type=int, default=None)
    p.add_argument("--algorithm", choices=Algorithm.values(), default=None)
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-path", default=None, help="text file to train on (default: stdlib sources)")
    p.add_argument("--max-corpus-bytes", type=int, default=4_000_000)
    p.add_argument("--save-interval", type=int, default=10)
    p.add_argument("--out-dir", default="tasp_deepspeed_run")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out-dir")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def load_ds_config(args: argparse.Namespace) -> dict:
    """The DeepSpeed config with the command-line overrides applied."""
    with open(args.deepspeed_config) as f:
        cfg = json.load(f)
    section = cfg.setdefault("context_parallel", {})
    if args.cp_size is not None:
        section["size"] = args.cp_size
    if args.algorithm is not None:
        section["algorithm"] = args.algorithm
    if args.zero_stage is not None:
        cfg.setdefault("zero_optimization", {})["stage"] = args.zero_stage
    return cfg


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """A random-init Llama (GQA) over byte tokens using the registered "tasp" attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasp_plugin.integrations.hf import ATTN_IMPLEMENTATION, register_tasp_attention
    from tasp_plugin.training.data import ByteTokenizer

    register_tasp_attention()
    config = LlamaConfig(vocab_size=ByteTokenizer().vocab_size, hidden_size=args.hidden,
                         intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=args.seq_len, attn_implementation=ATTN_IMPLEMENTATION)
    torch.manual_seed(args.seed)  # identical initial weights on every rank and for every CP size
    return LlamaForCausalLM(config)


def train_step(engine: DeepSpeedEngine, tokens: torch.Tensor, rows_per_rank: int) -> float:
    """One optimizer step on the global batch ``tokens [batch, seq + 1]``; returns its mean token loss."""
    from tasp_plugin.training.batch import shard_batch_for_cp

    mpu = engine.mpu
    rows = tokens[mpu.get_data_parallel_rank() * rows_per_rank:][:rows_per_rank]
    batch = {k: v.to(engine.device) for k, v in shard_batch_for_cp(
        rows, mpu.get_sequence_parallel_rank(), mpu.get_sequence_parallel_world_size()).items()}
    logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                  reduction="none")
    count = batch["loss_mask"].sum()
    dist.all_reduce(count, group=mpu.get_sequence_parallel_group())
    share = (per_token * batch["loss_mask"].flatten()).sum() / count  # the CP ranks' shares sum to the mean
    engine.backward(share)
    engine.step()
    return mpu.reduce_loss(share).item()


def train(args: argparse.Namespace) -> list[float]:
    """The training loop on an initialised process group: returns the loss of every step so far."""
    from tasp_plugin.integrations.deepspeed import initialize
    from tasp_plugin.training.curves import save_loss_curve
    from tasp_plugin.training.data import load_corpus, token_batches
    from tasp_plugin.training.progress import Progress

    ds_config = load_ds_config(args)
    model = build_model(args)
    engine, *_ = initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    rank0, ckpt_dir = dist.get_rank() == 0, os.path.join(args.out_dir, "checkpoints")
    start, losses = 0, []
    if args.resume:
        path, state = engine.load_checkpoint(ckpt_dir)
        if path is None:
            raise ValueError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume first")
        start, losses = state["step"], state["losses"]
    rows_per_rank = engine.train_micro_batch_size_per_gpu()
    dp, cp = engine.mpu.get_data_parallel_world_size(), engine.mpu.get_sequence_parallel_world_size()
    data = load_corpus(args.data_path, args.max_corpus_bytes)
    batches = token_batches(data, args.seq_len, rows_per_rank * dp, args.seed, start_step=start)
    if rank0:
        params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
        print(f"Llama {params / 1e6:.2f}M params, {args.layers} layers, {args.heads}/{args.kv_heads} heads | "
              f"{dist.get_world_size()} ranks ({dist.get_backend()}): CP={cp} "
              f"({ds_config['context_parallel'].get('algorithm', 'hamilton')}), DP={dp}, "
              f"ZeRO-{engine.zero_optimization_stage()} | corpus {len(data) / 1e6:.1f} MB, "
              f"{rows_per_rank * dp}x{args.seq_len} tokens per step" + (f" | resumed at step {start}" if start else ""),
              flush=True)
    with Progress(args.steps, start=start, enabled=rank0, desc="pretrain") as progress:
        for step in range(start + 1, args.steps + 1):
            losses.append(train_step(engine, next(batches), rows_per_rank))
            progress.update(losses[-1], rows_per_rank * dp * args.seq_len)
            if step % args.save_interval == 0 or step == args.steps:
                engine.save_checkpoint(ckpt_dir, tag=f"step{step:06d}",
                                       client_state={"step": step, "losses": losses})
    if rank0 and losses:
        curve = os.path.join(args.out_dir, "loss.png")
        save_loss_curve(losses, curve, f"Llama on DeepSpeed ZeRO-{engine.zero_optimization_stage()}, CP={cp} "
                                       f"{ds_config['context_parallel'].get('algorithm', 'hamilton')}")
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} | curve {curve} | checkpoints {ckpt_dir}", flush=True)
    return losses


def _run(args: argparse.Namespace) -> None:
    sys.path.insert(0, REPO)  # run from a checkout without installing
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(1)
    import deepspeed

    deepspeed.utils.logger.setLevel("WARNING")
    deepspeed.init_distributed()
    try:
        train(args)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Run under a launcher when started by one, else spawn ``--world-size`` local processes."""
    args = parse_args(argv)
    from tasp_plugin.training.launch import launched, run_local

    if launched():
        _run(args)
        return
    world = args.world_size or load_ds_config(args)["context_parallel"].get("size", 1)
    start = time.perf_counter()
    run_local(_run, world, args)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
